"""Synchronous vs asynchronous GRPO on the quickstart, side by side in one invocation.

For each workload, the same recipe runs with controller.max_staleness k = 0 (synchronous:
each step's generation starts after the previous weight sync) and k = 1, 2, 4 (generation,
rewards and training overlap), and we record:

- time to accuracy: training seconds (evaluation excluded) until the held-out accuracy
  (greedy, 256 prompts never trained on, every `--eval-every` steps) first reaches the
  synchronous run's final accuracy;
- per-stage seconds: generation and reward as the learner waited for them (what was not
  hidden behind training), train, sync, and their sum (the learner's idle time is gen + reward);
- the speedup over k = 0 in seconds per step, and as a fraction of the overlap bound.

Overlap bound: on this 2-core machine generation and training share the cores, so at best
everything but the reward *latency* stays serial: bound = (G + R + T + S) / max(G + T + S, R)
with the k = 0 run's stage times (R counts as hideable because the stalled verifier waits
without using CPU).

Workloads: `plain` is recipes/quickstart.yaml as `make demo` runs it; `stalled` adds a
verifier with a long-tailed per-sample latency (bench/stalls.py: lognormal, median 20 ms,
p99 ~ 200 ms, like sandboxed code tests) scored by 24 reward workers.

    .venv/bin/python bench/async_vs_sync.py            # both workloads, k = 0 1 2 4
    .venv/bin/python bench/async_vs_sync.py --steps 20 --workloads plain --ks 0 1   # a quick look

Writes bench/results/async_vs_sync.json and .md. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

WORKLOADS = {
    "plain": [],
    "stalled": ["reward.plugins=[bench.stalls]", "reward.verifier=arithmetic_stalled", "reward.num_workers=24",
                "reward.batch_size=4",
                'reward.verifier_options={"arithmetic_stalled": {"median_ms": 20, "sigma": 1.0, "cap_ms": 500}}'],
}
STAGES = ("gen_s", "reward_s", "train_s", "sync_s")


def run_one(workload: str, k: int, steps: int, eval_every: int, out: Path) -> dict:
    from cluster.config import load_config
    from cluster.controller import run

    cfg = load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"run.output_dir={out}", f"run.name={workload}-k{k}", f"controller.steps={steps}",
        f"controller.max_staleness={k}", f"controller.eval_every={eval_every}", "controller.progress=false",
        *WORKLOADS[workload]])
    summary = run(cfg, log=lambda *_: None)
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    clock, curve = 0.0, [(0.0, summary["eval"]["initial_accuracy"])]
    for row in rows:
        if row.get("final"):
            curve.append((clock, row["eval_accuracy"]))
            continue
        clock += row["step_s"]
        if "eval_accuracy" in row:
            curve.append((clock, row["eval_accuracy"]))
    stages = {key: summary["throughput"][key] for key in STAGES}
    return {"workload": workload, "k": k, "steps": steps, "train_s": clock, "curve": curve,
            "initial_accuracy": summary["eval"]["initial_accuracy"],
            "final_accuracy": summary["eval"]["final_accuracy"], "stages": stages,
            "idle_s": stages["gen_s"] + stages["reward_s"], "staleness": summary["staleness"],
            "samples_per_s": summary["samples"] / clock}


def time_to(curve: list, target: float):
    return next((t for t, acc in curve if acc >= target), None)


def analyse(runs: list[dict]) -> None:
    base = next(r for r in runs if r["k"] == 0)
    g, r_, t, s = (base["stages"][k] / base["steps"] for k in STAGES)
    bound = (g + r_ + t + s) / max(g + t + s, r_)
    target = base["final_accuracy"]
    base_step = base["train_s"] / base["steps"]
    base_tta = time_to(base["curve"], target)
    for run in runs:
        run["target_accuracy"] = target
        run["time_to_target_s"] = time_to(run["curve"], target)
        run["speedup"] = base_step / (run["train_s"] / run["steps"])
        run["tta_speedup"] = (base_tta / run["time_to_target_s"]) if run["time_to_target_s"] else None
        run["overlap_bound"] = bound
        run["fraction_of_bound"] = (run["speedup"] - 1) / (bound - 1) if bound > 1.0001 else None


def markdown(runs: list[dict]) -> str:
    lines = ["| workload | k | steps | train s | s/step | speedup | bound | % of bound | final acc | "
             "time to sync's final acc | gen s | reward s | train s | sync s | idle s | max staleness |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        tta = f"{r['time_to_target_s']:.0f} s" if r["time_to_target_s"] is not None else "not reached"
        frac = f"{100 * r['fraction_of_bound']:.0f}%" if r["fraction_of_bound"] is not None else "-"
        st = r["stages"]
        lines.append(
            f"| {r['workload']} | {r['k']} | {r['steps']} | {r['train_s']:.0f} | {r['train_s'] / r['steps']:.2f} | "
            f"{r['speedup']:.2f}x | {r['overlap_bound']:.2f}x | {frac} | {100 * r['final_accuracy']:.1f}% | {tta} | "
            f"{st['gen_s']:.0f} | {st['reward_s']:.0f} | {st['train_s']:.0f} | {st['sync_s']:.0f} | "
            f"{r['idle_s']:.0f} | {r['staleness']['max_seen']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--out", default=str(RESULTS / "async_vs_sync"))
    args = p.parse_args()
    if 0 not in args.ks:
        p.error("--ks must include 0: the synchronous run is the baseline")
    results = []
    with tempfile.TemporaryDirectory(prefix="tandem-async-bench-") as tmp:
        for workload in args.workloads:
            runs = [run_one(workload, k, args.steps, args.eval_every, Path(tmp)) for k in sorted(args.ks)]
            analyse(runs)
            results += runs
            print(markdown(runs), flush=True)
    Path(args.out + ".json").write_text(json.dumps(results, indent=1))
    Path(args.out + ".md").write_text("# Synchronous vs asynchronous GRPO (quickstart, 2 CPU cores)\n\n"
                                      + markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
