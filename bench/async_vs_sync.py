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

Goodput: trained response tokens per second of training clock, and the useful fraction
(response tokens trained / generated: the rest went to groups dropped stale or aborted while
generating, and to work in flight when the run ended), with the groups dropped and aborted;
so a speedup is compared on the work that trained. With `--seeds`, each seed runs every k
(run.seed: the RL run's sampling; the bootstrap model is the same), each async run is compared
with its own seed's synchronous run, and a second table gives the mean and range over seeds.

Evaluation time is excluded from the training clock. An evaluation call waits behind the
generation call in flight (k > 0), so up to one step's generation per evaluation can
happen off the clock: with an evaluation every 15 steps that is under 1% of the time.

Workloads: `plain` is recipes/quickstart.yaml as `make demo` runs it; `stalled` adds a
verifier with a long-tailed per-sample latency (bench/stalls.py: lognormal, median 20 ms,
p99 ~ 200 ms, like sandboxed code tests) scored by 24 reward workers.

    .venv/bin/python bench/async_vs_sync.py            # both workloads, k = 0 1 2 4
    .venv/bin/python bench/async_vs_sync.py --workloads stalled --ks 0 2 --seeds 0 1 2
    .venv/bin/python bench/async_vs_sync.py --steps 20 --workloads plain --ks 0 1   # a quick look

Writes bench/results/async_vs_sync.json and .md. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
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


def run_one(workload: str, k: int, steps: int, eval_every: int, out: Path, seed: int = 0) -> dict:
    from cluster.config import load_config
    from cluster.run import run

    cfg = load_config(ROOT / "recipes" / "quickstart.yaml", [
        f"run.output_dir={out}", f"run.name={workload}-k{k}-s{seed}", f"controller.steps={steps}", f"run.seed={seed}",
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
    steps_rows = [row for row in rows if not row.get("final")]
    dropped = [row["dropped_response_len"] for row in steps_rows if "dropped_response_len" in row]
    goodput = {"trained_tokens_per_s": summary["goodput"]["trained_tokens"] / clock,
               "useful_fraction": summary["goodput"]["useful_fraction"],
               "stale_groups": summary["groups"]["dropped:stale"], "aborted_groups": summary["groups"]["dropped:aborted"],
               "response_len": sum(row["response_len"] for row in steps_rows) / len(steps_rows),
               "dropped_response_len": sum(dropped) / len(dropped) if dropped else None}
    return {"workload": workload, "k": k, "seed": seed, "steps": steps, "train_s": clock, "curve": curve,
            "goodput": goodput,
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
    lines = ["| workload | seed | k | steps | train s | s/step | speedup | pipeline bound (% reached) | "
             "CPU bound (% reached) | final acc | time to sync's final acc | gen s | reward s | train s | sync s | "
             "idle s | max staleness | trained tokens/s | useful tokens | groups stale, aborted | "
             "response len trained, dropped |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        g = r.get("goodput")
        good = ("| — | — | — | — |" if g is None else
                f"| {g['trained_tokens_per_s']:.0f} | {g['useful_fraction']:.1%} | {g['stale_groups']}, "
                f"{g['aborted_groups']} | {g['response_len']:.2f}, "
                + ("—" if g["dropped_response_len"] is None else f"{g['dropped_response_len']:.2f}") + " |")
        tta = f"{r['time_to_target_s']:.0f} s" if r["time_to_target_s"] is not None else "not reached"
        b = {name: f"{bound:.2f}x" + (f" ({100 * r['fraction_of_bound'][name]:.0f}%)" if r["k"] else "")
             for name, bound in r["bounds"].items()}
        st = r["stages"]
        lines.append(
            f"| {r['workload']} | {r.get('seed', 0)} | {r['k']} | {r['steps']} | {r['train_s']:.0f} | "
            f"{r['train_s'] / r['steps']:.2f} | "
            f"{r['speedup']:.2f}x | {b['pipeline']} | {b['cpu']} | {100 * r['final_accuracy']:.1f}% | {tta} | "
            f"{st['gen_s']:.0f} | {st['reward_s']:.0f} | {st['train_s']:.0f} | {st['sync_s']:.0f} | "
            f"{r['idle_s']:.0f} | {r['staleness']['max_seen']} " + good)
    return "\n".join(lines)


def over_seeds(runs: list[dict]) -> str:
    """Mean (range) over seeds, per workload and k."""
    lines = ["| workload | k | seeds | speedup | CPU bound reached | final acc | trained tokens/s | useful tokens |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(values: list[float], fmt: str) -> str:
        return f"{format(sum(values) / len(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"

    for workload, k in dict.fromkeys((r["workload"], r["k"]) for r in runs):
        group = [r for r in runs if (r["workload"], r["k"]) == (workload, k)]
        bound = [r["fraction_of_bound"]["cpu"] for r in group if k and r["fraction_of_bound"]["cpu"] is not None]
        lines.append(f"| {workload} | {k} | {len(group)} | {cell([r['speedup'] for r in group], '.2f')}x | "
                     + (cell([100 * b for b in bound], '.0f') + "%" if bound else "—") + " | "
                     f"{cell([100 * r['final_accuracy'] for r in group], '.1f')}% | "
                     f"{cell([r['goodput']['trained_tokens_per_s'] for r in group], '.0f')} | "
                     f"{cell([100 * r['goodput']['useful_fraction'] for r in group], '.1f')}% |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--eval-every", type=int, default=15)
    p.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="run.seed values (each runs every k)")
    p.add_argument("--out", default=str(RESULTS / "async_vs_sync"))
    p.add_argument("--reanalyse", action="store_true", help="recompute the tables from the existing JSON")
    args = p.parse_args()
    if args.reanalyse:
        results = json.loads(Path(args.out + ".json").read_text())
        for workload, seed in dict.fromkeys((r["workload"], r.get("seed", 0)) for r in results):
            analyse([r for r in results if (r["workload"], r.get("seed", 0)) == (workload, seed)])
        return write(results, args.out, " ".join(sys.argv[1:]))
    if 0 not in args.ks:
        p.error("--ks must include 0: the synchronous run is the baseline")
    results = []
    with tempfile.TemporaryDirectory(prefix="tandem-async-bench-") as tmp:
        for workload in args.workloads:
            for seed in args.seeds:
                runs = [run_one(workload, k, args.steps, args.eval_every, Path(tmp), seed) for k in sorted(args.ks)]
                analyse(runs)
                results += runs
                print(markdown(runs), flush=True)
    write(results, args.out, " ".join(sys.argv[1:]))


def write(results: list[dict], out: str, args: str) -> None:
    Path(out + ".json").write_text(json.dumps(results, indent=1))
    seeds = len({r.get("seed", 0) for r in results}) > 1
    Path(out + ".md").write_text(
        "# Synchronous vs asynchronous GRPO (quickstart, 2 CPU cores)\n\n"
        f"`.venv/bin/python bench/async_vs_sync.py {args}`".replace(" `", "`") + f" ({time.strftime('%Y-%m-%d')}; "
        "see its docstring for the bounds and goodput)\n\n" + markdown(results) + "\n"
        + ("\nOver seeds, mean (range):\n\n" + over_seeds(results) + "\n" if seeds else ""))
    print(markdown(results))


if __name__ == "__main__":
    main()
