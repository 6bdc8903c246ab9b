"""Data efficiency on the CPU quickstart (recipes/quickstart.yaml) at an equal rollout budget:
each arm is the demo with one rule switched on (cluster/rl/budget.py, cluster/rl/rescue.py),
every arm spending the same prompts_per_step x group_size rollouts per step for the same steps,
except `hint`, whose retries come on top (the rollouts column counts them).

    .venv/bin/python bench/data_efficiency.py --arms uniform knapsack curriculum downsample hint --seeds 0 1 2

For each seed every arm starts from the same bootstrap model (built once, with that seed) and
the same run seed, so arms differ by their rule alone. Per run: the mean over steps of
`effective_group_frac` (groups with a non-zero advantage / the step's groups) and
`effective_sample_frac` (the same over rollouts), their mean over the second half of the run
(the budget rules need a prompt seen once before they can tell it apart: the quickstart's first
pass over its 8,000 prompts takes 125 steps), held-out accuracy before and after, and the run's
wall time.

bench/results/data_efficiency.json maps each arm's name to its means and per-seed values (ARM@N:
RL on the first N training prompts, --train-prompts); arms
run later are merged into it (one arm of 3 seeds takes about 8 minutes here). The markdown
table compares each arm with `uniform` as ratios. One machine; floating-point results differ
across CPUs, so another machine gives other numbers for the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_seeds import RESULTS, ROOT, build_model, run_seed  # noqa: E402

ARMS: dict[str, list[str]] = {
    "uniform": [],
    "knapsack": ["algorithm.rollout_budget=knapsack"],  # Knapsack RL's value
    "knapsack_groups": ["algorithm.rollout_budget=knapsack", "algorithm.budget_value=nonzero_groups"],
    "knapsack_samples": ["algorithm.rollout_budget=knapsack", "algorithm.budget_value=nonzero_samples"],
    "curriculum": ["algorithm.curriculum=intermediate"],
    # generates the same 8 samples per prompt, trains on the 4 whose rewards vary most (PODS)
    "downsample": ["algorithm.downsample_keep=4"],
    # a group whose every sample failed is generated again after its hint (the sum but its last
    # digit): it spends more rollouts than the others, the rollouts column says how many
    "hint": ["data.hint_key=hint", "algorithm.hint_rescue=true"],
}
SIGNALS = ("effective_group_frac", "effective_sample_frac")
GROUP_SIZE = 8  # recipes/quickstart.yaml


def measure(arm: str, seed: int, work: Path, models: Path, extra: list[str], prompts: int | None) -> dict:
    model = models / f"tiny-model-s{seed}"
    build_model(model, ROOT / "recipes" / "quickstart.yaml", seed)
    model_data = model / "data" / "train.jsonl"
    if arm == "hint" and '"hint"' not in model_data.read_text().split("\n", 1)[0]:
        raise SystemExit(f"{model_data} has no hints (built before they existed): remove {models} to rebuild")
    if prompts:  # RL on the first N training prompts: more passes, fresher per-prompt estimates
        subset = model / "data" / f"train_first{prompts}.jsonl"
        subset.write_text("".join(model_data.read_text().splitlines(keepends=True)[:prompts]))
        extra = [*extra, f"data.train_path={subset}"]
    row = run_seed(seed, work / arm, ARMS[arm] + extra, model_seed=seed, models=models)
    steps = [json.loads(line) for line in (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if not s.get("final")]
    late = steps[len(steps) // 2:]
    out = {"seed": seed, "initial_accuracy": row["initial_accuracy"], "heldout_accuracy": row["final_accuracy"],
           "run_wall_s": row["run_wall_s"], "steps": row["steps"], "groups_trained": row["groups"]["trained"],
           # every dispatch spends group_size rollouts per prompt on average (cluster/rl/budget.py)
           "rollouts": row["groups"]["issued"] * GROUP_SIZE}
    for key in SIGNALS:
        out[key] = statistics.mean(s[key] for s in steps)
        out[key + "_late"] = statistics.mean(s[key] for s in late)
    return out


def summarise(arm: str, runs: list[dict], extra: list[str], prompts: int | None) -> dict:
    keys = ["heldout_accuracy", "run_wall_s", "rollouts", *SIGNALS, *(k + "_late" for k in SIGNALS)]
    command = f".venv/bin/python bench/data_efficiency.py --arms {arm} --seeds {' '.join(str(r['seed']) for r in runs)}"
    command += "" if not extra else " --set " + " ".join(extra)
    command += f" --train-prompts {prompts}" if prompts else ""
    return {"overrides": ARMS[arm] + extra, "command": command, "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()} CPU cores", "steps": runs[0]["steps"],
            **{k: statistics.mean(r[k] for r in runs) for k in keys}, "seeds": runs}


def write(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data_efficiency.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["| arm | effective_group_frac (per seed) | vs uniform | second half | vs uniform | effective_sample_frac | "
             "held-out after (per seed) | rollouts | run s | command, date |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in results.items():
        base = results.get("uniform" + name[len(name.split("@")[0]):])  # the same prompts
        ratio = f"{arm['effective_group_frac'] / base['effective_group_frac']:.2f}x" if base else "-"
        late = f"{arm['effective_group_frac_late'] / base['effective_group_frac_late']:.2f}x" if base else "-"
        per_seed = " / ".join(f"{r['effective_group_frac']:.3f}" for r in arm["seeds"])
        acc = " / ".join(f"{r['heldout_accuracy']:.1%}" for r in arm["seeds"])
        lines.append(f"| {name} | {arm['effective_group_frac']:.3f} ({per_seed}) | {ratio} | "
                     f"{arm['effective_group_frac_late']:.3f} | {late} | {arm['effective_sample_frac']:.3f} | "
                     f"{arm['heldout_accuracy']:.1%} ({acc}) | {arm['rollouts']:,.0f} | {arm['run_wall_s']:.0f} | "
                     f"`{arm['command']}`, "
                     f"{arm['date']}, {arm['machine']} |")
    (RESULTS / "data_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="/tmp/tandem-data-efficiency")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    parser.add_argument("--train-prompts", type=int, default=None,
                        help="RL on the first N of the 8,000 training prompts (arms named ARM@N)")
    args = parser.parse_args()
    work = Path(args.workdir)
    path = RESULTS / "data_efficiency.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for arm in args.arms:
        stamp = work / time.strftime("%Y%m%d-%H%M%S")
        # every arm of a seed on the same bootstrap model (built once with that seed, kept for later arms)
        runs = [measure(arm, seed, stamp, work / "models", args.set, args.train_prompts) for seed in args.seeds]
        results[arm + (f"@{args.train_prompts}" if args.train_prompts else "")] = summarise(arm, runs, args.set,
                                                                                           args.train_prompts)
        order = list(ARMS)  # the table's: all prompts first, each arm in ARMS's order
        results = dict(sorted(results.items(), key=lambda kv: ("@" in kv[0], int(kv[0].partition("@")[2] or 0),
                                                               order.index(kv[0].partition("@")[0]))))
        write(results)


if __name__ == "__main__":
    sys.exit(main())
