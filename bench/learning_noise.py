"""Run-to-run noise of the learning tests' harness (tests/e2e/test_learning.py): GRPO, GRPO with
the advantages flipped, PPO with a critic, and GRPO on a LoRA adapter (and its flipped twin), over
several run seeds on one bootstrap model, plus
the first seed twice (same seed, same gains?). The learning tests' margins come from this table.

    .venv/bin/python bench/learning_noise.py --seeds 0 1 2 3 --cases grpo flipped ppo

Writes bench/results/learning_noise.json and .md. Figures are for this machine: floating-point
results differ across CPUs (vector widths, thread counts), so another machine gives other numbers
for the same seed; the spread is what the margins must stay clear of.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cluster.run import run  # noqa: E402
from tests.e2e.test_learning import (GRPO, GRPO_LR, LR, PPO, PPO_EXTRA, STEPS, WINDOW, gains,  # noqa: E402
                                     learning_config,
                                     register_flipped, warm_spec)
from tests.e2e.test_multiturn import TOOL, tool_spec  # noqa: E402
from trainer.bootstrap import ensure_tiny_model  # noqa: E402

CASES = {"grpo": ((), GRPO), "flipped": (("algorithm.advantage=grpo_flipped",), GRPO), "ppo": (PPO_EXTRA, PPO),
         "ppo_flipped": (PPO_EXTRA + ("algorithm.advantage=gae_flipped",), PPO),
         # LoRA with its defaults (rank 8, alpha 16, every linear layer) at the GRPO learning rate
         "lora": (("model.lora.r=8",), GRPO),
         "lora_flipped": (("model.lora.r=8", "algorithm.advantage=grpo_flipped"), GRPO),
         # the tool quickstart (tests/e2e/test_multiturn.py) on its own bootstrap model
         "tool": ((), TOOL), "tool_flipped": (("algorithm.advantage=grpo_flipped",), TOOL)}
RESULTS = ROOT / "bench" / "results"


def one(model: Path, work: Path, case: str, seed: int, name: str) -> dict:
    t0 = time.perf_counter()
    extra, kw = CASES[case]
    kw = dict(kw)
    window = kw.pop("window", WINDOW)
    record = run(learning_config(model, work, seed, name, *extra, **kw), log=lambda *_: None).record
    reward, accuracy = gains(record, work / name, window)
    episodes = record["eval"].get("episodes")  # multi-turn: the held-out tool-call rate, before and after
    calls = {} if not episodes else {"tool_call_rate": [episodes["initial"]["tool_call_rate"],
                                                         episodes["latest"]["tool_call_rate"]]}
    return {"case": case, "seed": seed, "steps": record["steps"], "reward_gain": reward, "accuracy_gain": accuracy,
            "initial_accuracy": record["eval"]["initial_accuracy"], "final_accuracy": record["eval"]["final_accuracy"],
            "wall_s": time.perf_counter() - t0, "date": datetime.date.today().isoformat(), **calls}


def write(rows: list[dict]) -> None:
    """Rows of the cases run now replace those cases' rows in the results; other cases' rows stay
    (each row carries the command and date that measured it)."""
    path = RESULTS / "learning_noise.json"
    cases = {r["case"] for r in rows}
    kept = [r for r in json.loads(path.read_text())["runs"] if r["case"] not in cases] if path.is_file() else []
    rows = sorted(kept + rows, key=lambda r: list(CASES).index(r["case"]))
    meta = {"machine": f"{os.cpu_count()} CPU cores", "steps": STEPS, "window": WINDOW, "lr": {"grpo": GRPO_LR, "ppo": LR}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    lines = [f"Learning-test harness ({meta['machine']}; {STEPS} steps, policy lr {GRPO_LR} (GRPO) / {LR} (PPO), "
             f"reward gain = mean training "
             f"reward of the last {WINDOW} steps minus the first {WINDOW}; accuracy: greedy, 256 held-out prompts; "
             f"the tool cases: tests/e2e/test_multiturn.py's {TOOL['steps']} steps, windows of {TOOL['window']}, "
             f"lr {TOOL['lr']}, and the held-out tool-call rate before -> after)",
             "", "| case | seed | reward gain | held-out before | after | accuracy gain | run s | measured by |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        calls = " (tool calls {:.0%} -> {:.0%})".format(*r["tool_call_rate"]) if "tool_call_rate" in r else ""
        lines.append(f"| {r['case']} | {r['seed']} | {r['reward_gain']:+.3f} | {r['initial_accuracy']:.1%} | "
                     f"{r['final_accuracy']:.1%} | {100 * r['accuracy_gain']:+.1f}{calls} | {r['wall_s']:.0f} | "
                     f"`{r['command']}`, {r['date']} |")
    lines.append("")
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]
        rg, ag = [r["reward_gain"] for r in rs], [100 * r["accuracy_gain"] for r in rs]
        lines.append(f"- {case}: reward gain {min(rg):+.3f} .. {max(rg):+.3f}, accuracy gain {min(ag):+.1f} .. "
                     f"{max(ag):+.1f} points ({len(rs)} runs)")
    (RESULTS / "learning_noise.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    register_flipped()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    command = f".venv/bin/python bench/learning_noise.py --seeds {' '.join(map(str, args.seeds))} " \
              f"--cases {' '.join(args.cases)}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = {}
        rows = []
        for case in args.cases:
            kind = "tool" if case.startswith("tool") else "arith"
            if kind not in models:
                models[kind] = work / f"tiny-{kind}"
                ensure_tiny_model(models[kind], tool_spec() if kind == "tool" else warm_spec(), seed=0,
                                  log=lambda *_: None)
            model = models[kind]
            for i, seed in enumerate(args.seeds + args.seeds[:1]):  # the first seed twice
                rows.append(one(model, work, case, seed, f"{case}-s{seed}-{i}") | {"command": command})
                print(json.dumps(rows[-1]), flush=True)
                write(rows)


if __name__ == "__main__":
    main()
