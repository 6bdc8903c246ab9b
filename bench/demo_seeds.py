"""The demo (`make demo`: recipes/quickstart.yaml) over several seeds: held-out accuracy
before and after, and wall time, per seed, then mean and range.

Each seed is the whole demo: its own bootstrap model (the warm-up depends on the seed) and
its own RL run. Results are reproducible for a seed on one machine; floating-point results
differ across CPUs (vector widths, thread counts, library builds), so another machine gives
other numbers for the same seed.

    .venv/bin/python bench/demo_seeds.py --seeds 0 1 2

With --model-seed M every run trains the same bootstrap model (built once with seed M) and
only the run's seed varies (prompt order, sampling): the run-to-run noise of one model, what
a change to the loop must stay within:

    .venv/bin/python bench/demo_seeds.py --model-seed 0 --seeds 0 100 200 --name demo_noise_m0

Another recipe with a bootstrap model (--recipe; e.g. the tool quickstart) runs the same way;
its multi-turn figures on the held-out prompts (tool-call rate, turns per episode) join the table:

    .venv/bin/python bench/demo_seeds.py --recipe recipes/tool_quickstart.yaml --name tool_quickstart_seeds

Writes bench/results/demo_seeds.json and .md. Wall times need an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run_seed(seed: int, work: Path, overrides: list[str], model_seed: int | None = None,
             recipe: Path = ROOT / "recipes" / "quickstart.yaml", models: Path | None = None) -> dict:
    """One demo run; with model_seed, on that seed's bootstrap model (built once in `models`,
    default `work`, then reused)."""
    model = (models or work) / f"tiny-model-s{seed if model_seed is None else model_seed}"
    if model_seed is not None:
        build_model(model, recipe, model_seed)
    reuse = [] if model_seed is None else ["model.bootstrap=false"]
    cmd = [str(ROOT / ".venv" / "bin" / "tandem"), "run", str(recipe),
           f"run.seed={seed}", f"run.name=demo-s{seed}", f"run.output_dir={work / 'runs'}", f"model.path={model}",
           f"data.train_path={model}/data/train.jsonl", f"data.eval_path={model}/data/eval.jsonl",
           "controller.progress=false", *reuse, *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads(next((work / "runs").glob(f"demo-s{seed}*/summary.json")).read_text())
    return {"seed": seed, "run_dir": summary["run_dir"], "initial_accuracy": summary["eval"]["initial_accuracy"],
            "final_accuracy": summary["eval"]["final_accuracy"], "steps": summary["steps"],
            "run_wall_s": summary["wall_s"], "end_to_end_s": wall,
            "throughput": summary["throughput"], "weight_sync": summary["weight_sync"],
            "reward_failures": summary["rewards"]["failures"], "reward_timeouts": summary["rewards"]["timeouts"],
            "goodput": summary["goodput"], "groups": summary["groups"],
            "episodes": summary["eval"].get("episodes")}


def build_model(model: Path, recipe: Path, seed: int) -> None:
    """The recipe's bootstrap model at `seed`, built once in `model`."""
    if model.is_dir():
        return
    sys.path.insert(0, str(ROOT))
    from cluster.config import load_config
    from trainer.bootstrap import ensure_tiny_model
    spec = load_config(recipe, [f"model.path={model}"]).model.bootstrap_spec
    ensure_tiny_model(model, spec, seed=seed, log=lambda *_: None)


def write(rows: list[dict], overrides: list[str], name: str, model_seed: int | None = None,
          recipe: str = "recipes/quickstart.yaml") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    finals = [r["final_accuracy"] for r in rows]
    initials = [r["initial_accuracy"] for r in rows]
    gains = [f - i for f, i in zip(finals, initials)]
    command = ".venv/bin/python bench/demo_seeds.py" + ("" if recipe == "recipes/quickstart.yaml" else
                                                         f" --recipe {recipe}")
    command += "" if model_seed is None else f" --model-seed {model_seed}"
    command += " --seeds " + " ".join(str(r["seed"]) for r in rows)
    if overrides:
        command += " --set " + " ".join(overrides)
    if name != "demo_seeds":
        command += f" --name {name}"
    meta = {"command": command, "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores",
            "overrides": overrides, "model_seed": model_seed}
    agg = {"initial_mean": statistics.mean(initials), "initial_range": [min(initials), max(initials)],
           "final_mean": statistics.mean(finals), "final_range": [min(finals), max(finals)],
           "gain_mean": statistics.mean(gains), "gain_range": [min(gains), max(gains)]}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "seeds": rows, "aggregate": agg}, indent=2))
    lines = [f"`{meta['command']}` ({meta['machine']}, {meta['date']})", "",
             f"| {'seed' if model_seed is None else f'run seed (model seed {model_seed})'} | held-out before | "
             "after | gain | run s | samples/s | gen / reward / train / sync s | "
             "end to end s (bootstrap included) | trained tokens/s | useful tokens | groups stale, aborted |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, gain in zip(rows, gains):
        t, g, groups = r["throughput"], r["goodput"], r["groups"]
        lines.append(f"| {r['seed']} | {r['initial_accuracy']:.1%} | {r['final_accuracy']:.1%} | {100 * gain:+.1f} | "
                     f"{r['run_wall_s']:.0f} | {t['samples_per_s']:.0f} | {t['gen_s']:.0f} / {t['reward_s']:.0f} / "
                     f"{t['train_s']:.0f} / {t['sync_s']:.0f} | {r['end_to_end_s']:.0f} | "
                     f"{g['trained_tokens_per_s']:.0f} | {g['useful_fraction']:.1%} | "
                     f"{groups['dropped:stale']}, {groups['dropped:aborted']} |")
    lines.append(f"| mean (range) | {agg['initial_mean']:.1%} ({min(initials):.1%}-{max(initials):.1%}) | "
                 f"{agg['final_mean']:.1%} ({min(finals):.1%}-{max(finals):.1%}) | {100 * agg['gain_mean']:+.1f} "
                 f"({100 * min(gains):+.1f} to {100 * max(gains):+.1f}) | | | | | | | |")
    if any(r["episodes"] for r in rows):  # multi-turn: the held-out prompts' episodes, before -> after
        lines += ["", "| seed | tool-call rate before -> after | turns per episode before -> after | "
                  "failed tool calls (last eval) |", "|---|---|---|---|"]
        for r in rows:
            first, last = r["episodes"]["initial"], r["episodes"]["latest"]
            lines.append(f"| {r['seed']} | {first['tool_call_rate']:.1%} -> {last['tool_call_rate']:.1%} | "
                         f"{first['turns']:.2f} -> {last['turns']:.2f} | {last['tool_failures']} |")
    failures = sum(r["reward_failures"] for r in rows)
    lines += ["", f"Reward failures (fallback scores) over all runs: {failures}; weight-sync checksum failures: "
              f"{sum(r['weight_sync']['checksum_failures'] for r in rows)}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml", help="a recipe with model.bootstrap")
    parser.add_argument("--workdir", default="/tmp/tandem-demo-seeds")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides (tuning)")
    parser.add_argument("--name", default="demo_seeds", help="result file name in bench/results")
    parser.add_argument("--model-seed", type=int, default=None,
                        help="every run on this seed's bootstrap model; only the run seed varies")
    args = parser.parse_args()
    work = Path(args.workdir) / time.strftime("%Y%m%d-%H%M%S")
    rows = [run_seed(seed, work, args.set, args.model_seed, ROOT / args.recipe) for seed in args.seeds]
    write(rows, args.set, args.name, args.model_seed, args.recipe)


if __name__ == "__main__":
    sys.exit(main())
