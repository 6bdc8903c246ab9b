"""Reward pool benchmarks: verifier throughput (math, code) per worker and with pool size,
and the sandbox's start-up overhead per run. Writes bench/results/reward_bench.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reward_bench.py [--quick]

Run it on an idle machine: any other busy process halves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from reward.pool import RewardPool  # noqa: E402
from reward.sandbox import isolation_mode, run_python  # noqa: E402
from reward.config import RewardConfig  # noqa: E402
from reward.worker import RewardWorker  # noqa: E402
from rollout.types import Rollout  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MATH = [(r"We get \boxed{\frac{%d}{%d}}." % (i, i + 1), f"{i}/{i + 1}") for i in range(1, 40)] + \
       [(r"so \boxed{%d\sqrt{2}}" % i, r"\sqrt{%d}" % (2 * i * i)) for i in range(1, 40)] + \
       [(f"#### {i}.5", f"{2 * i + 1}/2") for i in range(1, 40)]
CODE = "```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```"
CODE_TESTS = json.dumps({"tests": [{"input": f"{i} {i + 1}\n", "output": f"{2 * i + 1}\n"} for i in range(3)]})
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_ASSERTS = json.dumps({"asserts": [f"assert add({i}, {i + 1}) == {2 * i + 1}" for i in range(3)]})


LEGACY_COMMIT = "91a3729"  # the code verifier before the 2026-12-07 rework: one sandbox per stdin/stdout test


def legacy_code(pairs) -> dict:
    """The code verifier as it was at LEGACY_COMMIT, for the ratio: its sandbox (reward/sandbox.py and
    reward/_sandbox_init.py taken from git) started once per stdin/stdout test, `python -I`."""
    import importlib.util
    import tempfile

    from reward.extract import code_block

    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="tandem-legacy-sandbox-"))
    for name in ("sandbox.py", "_sandbox_init.py"):
        text = subprocess.run(["git", "-C", str(root), "show", f"{LEGACY_COMMIT}:reward/{name}"], check=True,
                              capture_output=True, text=True).stdout
        (folder / name).write_text(text)
    spec = importlib.util.spec_from_file_location("legacy_sandbox", folder / "sandbox.py")
    old = sys.modules["legacy_sandbox"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)

    def score(response, answer):
        cases = json.loads(answer)["tests"]
        runs = [old.run_python(code_block(response), stdin=c["input"], limits=old.SandboxLimits()) for c in cases]
        return sum(r.status == "ok" and r.stdout.strip() == c["output"].strip() for r, c in zip(runs, cases))

    try:
        score(*pairs[0])
        t0 = time.perf_counter()
        assert all(score(r, a) == 3 for r, a in pairs)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(folder)  # its init ran from this folder
    return {"samples": len(pairs), "wall_s": wall, "samples_per_s": len(pairs) / wall, "commit": LEGACY_COMMIT}


def rollouts(pairs, salt: str) -> list[Rollout]:
    # The salt makes every sample distinct, so the cache never answers.
    return [Rollout(group_id=i, prompt_id=i, sample_index=0, prompt=f"q{i}-{salt}", answer=a, prompt_ids=(1,),
                    response_ids=(1,), response_text=r, logprobs=(0.0,), versions=(0,), finish_reason="stop")
            for i, (r, a) in enumerate(pairs)]


def per_worker(verifier: str, pairs, repeat: int = 1) -> dict:
    worker = RewardWorker(RewardConfig(verifier=verifier, format_weight=0.0, timeout_s=70))
    worker.score(rollouts(pairs[:2], "warm"))  # imports and lazy set-up out of the timing
    t0 = time.perf_counter()
    for k in range(repeat):
        reply = worker.score(rollouts(pairs, f"w{k}"))
    wall = time.perf_counter() - t0
    assert not any(c.failure for s in reply.scores for c in s), "benchmark samples must verify cleanly"
    return {"samples": len(pairs) * repeat, "wall_s": wall, "samples_per_s": len(pairs) * repeat / wall}


def pool_scaling(verifier: str, pairs, sizes) -> list[dict]:
    out = []
    for n in sizes:
        pool = RewardPool(num_workers=n, verifier=verifier, format_weight=0.0, timeout_s=70, cache_size=0,
                          batch_size=4)
        pool.score(rollouts(pairs[: 2 * n * 4], "warm"))  # every actor started and warm
        t0 = time.perf_counter()
        res = pool.score(rollouts(pairs, f"pool{n}"))
        wall = time.perf_counter() - t0
        assert not any(r.failure for r in res)
        m = pool.metrics()
        out.append({"workers": n, "samples": len(pairs), "wall_s": wall, "samples_per_s": len(pairs) / wall,
                    "latency_p50_s": m.latency_p50_s, "latency_p99_s": m.latency_p99_s})
        pool.shutdown()
    return out


def sandbox_overhead(runs: int) -> dict:
    python = os.path.realpath(sys._base_executable)
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    boxed = []
    for _ in range(runs):
        t0 = time.perf_counter()
        assert run_python("pass").status == "ok"
        boxed.append(time.perf_counter() - t0)
    p50 = statistics.median
    return {"runs": runs, "isolation": isolation_mode(), "bare_python_p50_s": p50(bare),
            "sandbox_p50_s": p50(boxed), "sandbox_p90_s": sorted(boxed)[int(0.9 * runs)]}


def markdown(r: dict) -> str:
    lines = [f"# Reward benchmarks ({r['host']['cpus']} CPUs, {r['host']['python']}, isolation "
             f"`{r['sandbox']['isolation']}`)", "",
             "| measure | value |", "|---|---|"]
    for kind in ("math", "code"):
        lines.append(f"| {kind} verifier, 1 worker in-process | {r[kind]['per_worker']['samples_per_s']:.1f} samples/s |")
        for row in r[kind]["pool"]:
            lines.append(f"| {kind} verifier, RewardPool of {row['workers']} | {row['samples_per_s']:.1f} samples/s "
                         f"(p50 latency {row['latency_p50_s'] * 1e3:.0f} ms) |")
    c = r["code"]
    lines += [f"| code verifier, 3 asserts (call-based), 1 worker in-process | "
              f"{c['asserts_per_worker']['samples_per_s']:.1f} samples/s |",
              f"| code verifier at {c['legacy_per_worker']['commit']} (one sandbox per test), 1 worker | "
              f"{c['legacy_per_worker']['samples_per_s']:.1f} samples/s |",
              f"| speed-up of the code verifier over the old one (stdin/stdout tests) | "
              f"{c['per_worker']['samples_per_s'] / c['legacy_per_worker']['samples_per_s']:.1f}x |"]
    s = r["sandbox"]
    lines += [f"| sandbox run of `pass` (p50 / p90) | {s['sandbox_p50_s'] * 1e3:.0f} / {s['sandbox_p90_s'] * 1e3:.0f} ms |",
              f"| bare `python -I -S -c pass` (p50), for scale | {s['bare_python_p50_s'] * 1e3:.0f} ms |", "",
              "A code sample runs 3 stdin/stdout tests (one process each, in the worker thread's long-lived "
              "sandbox) unless it says asserts (one process calls the function 3 times; the checker compares "
              f"outside). The old verifier is {LEGACY_COMMIT}'s sandbox, run from git in the same process.", ""]
    return "\n".join(lines)


def main() -> None:
    import ray

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    args = ap.parse_args()
    sizes = [1, 2] if (os.cpu_count() or 1) <= 2 else [1, 2, 4]
    code_pairs = [(CODE, CODE_TESTS)] * (8 if args.quick else 96)
    math_pairs = MATH[:24] if args.quick else MATH
    ray.init(address="local", num_cpus=max(sizes), include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False)
    try:
        result = {
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
            "math": {"per_worker": per_worker("math", math_pairs), "pool": pool_scaling("math", math_pairs, sizes)},
            "code": {"per_worker": per_worker("code", code_pairs), "pool": pool_scaling("code", code_pairs, sizes),
                     "asserts_per_worker": per_worker("code", [(ADD, ADD_ASSERTS)] * len(code_pairs)),
                     "legacy_per_worker": legacy_code(code_pairs)},
            "sandbox": sandbox_overhead(10 if args.quick else 40),
        }
    finally:
        ray.shutdown()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reward_bench.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "reward_bench.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
