"""The CPU benchmark suite (`make bench`): each benchmark in turn, then bench/results/SUMMARY.md.

Each entry runs as its own process (one after the other: they share this machine's cores),
writes its JSON and markdown table into bench/results/, and SUMMARY.md collects the tables
with each entry's wall time and exit status. An entry that fails is reported and the rest
still run; the suite exits non-zero if any failed.

    make bench                                   # the whole CPU set
    .venv/bin/python bench/suite.py --only generation compute_vs_trl
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PY = sys.executable

# name -> (command, its markdown table, what it shows, time limit in seconds)
SUITE: dict[str, tuple[list[str], str, str, int]] = {
    "generation": ([PY, "bench/generation.py"], "generation.md",
                   "the hf engine against transformers.generate on the same weights, batch 1 / 32 / 128", 600),
    "compute_vs_trl": ([PY, "bench/compute_vs_trl.py"], "compute_vs_trl.md",
                       "a compute-bound GRPO step against TRL, and each side's fraction of the machine's limit", 900),
    "quickstart_vs_trl": ([PY, "bench/quickstart_vs_trl.py", "--steps", "100", "--name", "quickstart_vs_trl_100"],
                          "quickstart_vs_trl_100.md",
                          "the quickstart against TRL, end to end (start-up included) and in the loop, 100 steps", 900),
    "learner": ([PY, "bench/learner.py"], "learner.md",
                "the learners alone: tokens/s and resident memory per rank, ZeRO 0 / 2 / 3 at 1 and 2 ranks", 600),
    "weight_sync": ([PY, "bench/weight_sync.py", "--sizes", "10", "100"], "weight_sync.md",
                    "one weight update per carrier (collective, object store) against memcpy and raw gloo, and "
                    "the time a sync adds to a quickstart step", 600),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(SUITE), help="these entries (default: all)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = []
    for name in args.only or list(SUITE):
        cmd, table, what, limit = SUITE[name]
        print(f"== {name}: {what}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {limit} s"
        done.append((name, what, table, rc, time.perf_counter() - t0))
    write_summary(done)
    if any(rc != 0 for _, _, _, rc, _ in done):
        sys.exit(1)


def write_summary(done: list[tuple]) -> None:
    lines = [f"# Benchmarks ({os.cpu_count()} CPU cores, {time.strftime('%Y-%m-%d %H:%M')})", "",
             "| benchmark | what it shows | wall s | status |", "|---|---|---|---|"]
    for name, what, _, rc, seconds in done:
        lines.append(f"| {name} | {what} | {seconds:.0f} | {'ok' if rc == 0 else f'failed ({rc})'} |")
    for name, _, table, rc, _ in done:
        path = RESULTS / table
        lines += ["", f"## {name}", ""]
        lines.append(path.read_text().strip() if rc == 0 and path.is_file() else f"(no results: {rc})")
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4 + len(done)]))


if __name__ == "__main__":
    main()
