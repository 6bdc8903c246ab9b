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

Overlap bounds, from the k = 0 run's stage times G, R, T, S (seconds per step) and the
reward *work* W per step (verifier seconds / reward workers; the synchronous R is longer
than W because the step waits for its slowest sample, a tail async can fill):
- pipeline bound = (G + R + T + S) / max(G, W, T + S): engine, reward workers and learners
  each busy all the time (what separate devices would allow);
- CPU bound = (G + R + T + S) / max(G + T + S, W): on this 2-core machine generation and
  training share the cores, so if each saturated them only the reward latency could be
  hidden (the stalled verifier waits without using CPU). The tiny model's generation does
  not saturate two cores, so a run can beat this one.
The speedup is reported as a fraction of each: (speedup - 1) / (bound - 1). W: `plain`'s
verifier takes microseconds (W = 0); `stalled`'s is its lognormal's mean (estimated over
20,000 draws of bench/stalls.py) x samples per step / reward workers.

Evaluation time is excluded from the training clock. An evaluation call waits behind the
generation call in flight (k > 0), so up to one step's generation per evaluation can
happen off the clock: with an evaluation every 15 steps that is under 1% of the time.

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

STALL = {"median_ms": 20.0, "sigma": 1.0, "cap_ms": 500.0}
REWARD_WORKERS = 24
SAMPLES_PER_STEP = 64 * 8  # the quickstart's prompts x group size
WORKLOADS = {
    "plain": [],
    "stalled": ["reward.plugins=[bench.stalls]", "reward.verifier=arithmetic_stalled",
                f"reward.num_workers={REWARD_WORKERS}", "reward.batch_size=4",
                "reward.verifier_options=" + json.dumps({"arithmetic_stalled": STALL})],
}
STAGES = ("gen_s", "reward_s", "train_s", "sync_s")


def run_one(workload: str, k: int, steps: int, eval_every: int, out: Path) -> dict:
    from cluster.config import load_config
    from cluster.run import run

    cfg = load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"run.output_dir={out}", f"run.name={workload}-k{k}", f"controller.steps={steps}",
        f"controller.max_staleness={k}", f"controller.eval_every={eval_every}", "controller.progress=false",
        *WORKLOADS[workload]])
    summary = run(cfg, log=lambda *_: None).record
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


def reward_work(workload: str) -> float:
    """Verifier seconds per step / reward workers (see the module docstring)."""
    if workload == "plain":
        return 0.0
    from bench.stalls import stall_seconds

    mean = sum(stall_seconds(str(i), "", **STALL) for i in range(20_000)) / 20_000
    return mean * SAMPLES_PER_STEP / REWARD_WORKERS


def time_to(curve: list, target: float):
    return next((t for t, acc in curve if acc >= target), None)


def analyse(runs: list[dict]) -> None:
    base = next(r for r in runs if r["k"] == 0)
    g, r_, t, s = (base["stages"][k] / base["steps"] for k in STAGES)
    w = reward_work(base["workload"])
    bounds = {"pipeline": (g + r_ + t + s) / max(g, w, t + s), "cpu": (g + r_ + t + s) / max(g + t + s, w)}
    target = base["final_accuracy"]
    base_step = base["train_s"] / base["steps"]
    base_tta = time_to(base["curve"], target)
    for run in runs:
        run["target_accuracy"] = target
        run["time_to_target_s"] = time_to(run["curve"], target)
        run["speedup"] = base_step / (run["train_s"] / run["steps"])
        run["tta_speedup"] = (base_tta / run["time_to_target_s"]) if run["time_to_target_s"] else None
        run.pop("overlap_bound", None)  # results written before the two bounds were reported
        run["bounds"] = bounds
        run["fraction_of_bound"] = {name: (run["speedup"] - 1) / (b - 1) if b > 1.0001 else None
                                    for name, b in bounds.items()}


def markdown(runs: list[dict]) -> str:
    lines = ["| workload | k | steps | train s | s/step | speedup | pipeline bound (% reached) | "
             "CPU bound (% reached) | final acc | time to sync's final acc | gen s | reward s | train s | sync s | "
             "idle s | max staleness |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        tta = f"{r['time_to_target_s']:.0f} s" if r["time_to_target_s"] is not None else "not reached"
        b = {name: f"{bound:.2f}x" + (f" ({100 * r['fraction_of_bound'][name]:.0f}%)" if r["k"] else "")
             for name, bound in r["bounds"].items()}
        st = r["stages"]
        lines.append(
            f"| {r['workload']} | {r['k']} | {r['steps']} | {r['train_s']:.0f} | {r['train_s'] / r['steps']:.2f} | "
            f"{r['speedup']:.2f}x | {b['pipeline']} | {b['cpu']} | {100 * r['final_accuracy']:.1f}% | {tta} | "
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
    p.add_argument("--reanalyse", action="store_true", help="recompute the tables from the existing JSON")
    args = p.parse_args()
    if args.reanalyse:
        results = json.loads(Path(args.out + ".json").read_text())
        for workload in dict.fromkeys(r["workload"] for r in results):
            analyse([r for r in results if r["workload"] == workload])
        return write(results, args.out)
    if 0 not in args.ks:
        p.error("--ks must include 0: the synchronous run is the baseline")
    results = []
    with tempfile.TemporaryDirectory(prefix="tandem-async-bench-") as tmp:
        for workload in args.workloads:
            runs = [run_one(workload, k, args.steps, args.eval_every, Path(tmp)) for k in sorted(args.ks)]
            analyse(runs)
            results += runs
            print(markdown(runs), flush=True)
    write(results, args.out)


def write(results: list[dict], out: str) -> None:
    Path(out + ".json").write_text(json.dumps(results, indent=1))
    Path(out + ".md").write_text("# Synchronous vs asynchronous GRPO (quickstart, 2 CPU cores)\n\n"
                                 "`.venv/bin/python bench/async_vs_sync.py` (see its docstring for the bounds)\n\n"
                                 + markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
