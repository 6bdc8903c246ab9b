"""The quickstart, side by side with a peer: Tandem's GRPO vs TRL's GRPOTrainer.

Same tiny model (the quickstart's bootstrap checkpoint), same prompts, same reward
(arithmetic correctness + 0.1 x format), same sample budget (steps x 64 prompts x 8),
same optimiser settings (AdamW at the recipe's `trainer.lr`, clip 0.2, token-level loss, group-normalised
advantages, no KL, temperature 1, 8 new tokens), both on this machine's 2 CPU cores.
Both are scored by the same greedy held-out evaluation (256 prompts never trained on).

Two times per system: end to end (the whole process, from launch to exit: imports, Ray and
actor start-up for Tandem, model load, both evaluations, training), each system in its own
process; and in the loop (TRL: `trainer.train()`; Tandem: the sum of its step times, i.e.
generation, reward, train and sync, without the evaluations).

    .venv/bin/pip install trl==1.16.0           # the peer (the `bench` extra)
    .venv/bin/python bench/quickstart_vs_trl.py --steps 400

Writes bench/results/quickstart_vs_trl.json and .md (`--name` for another name: `make bench`
runs 100 steps as quickstart_vs_trl_100). Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def run_tandem(model: Path, steps: int, out: Path) -> dict:
    cmd = [str(ROOT / ".venv" / "bin" / "tandem"), "run", str(ROOT / "recipes" / "quickstart.yaml"),
           f"model.path={model}", f"data.train_path={model}/data/train.jsonl",
           f"data.eval_path={model}/data/eval.jsonl", f"run.output_dir={out}", f"controller.steps={steps}",
           "controller.eval_every=0", "controller.progress=false"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    summary = json.loads(next(out.glob("quickstart*/summary.json")).read_text())
    loop = sum(summary["throughput"][k] for k in ("gen_s", "reward_s", "train_s", "sync_s"))
    return {"system": "tandem", "end_to_end_s": wall, "loop_s": loop,
            "samples": summary["samples"], "samples_per_s": summary["samples"] / loop,
            "initial_accuracy": summary["eval"]["initial_accuracy"],
            "final_accuracy": summary["eval"]["final_accuracy"]}


def run_trl(model: Path, steps: int, out: Path, lr: float) -> dict:
    """TRL's GRPOTrainer in this process (its documented single-process CPU path)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from reward.verifiers import arithmetic, format_reward
    from rollout.data import load_prompts
    from trainer.bootstrap import greedy_accuracy

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    train = load_prompts(model / "data" / "train.jsonl")
    evals = [{"prompt": p.text, "answer": p.answer} for p in load_prompts(model / "data" / "eval.jsonl")][:256]
    data = Dataset.from_list([{"prompt": p.text, "answer": p.answer} for p in train])

    def reward(completions, answer, **_):
        return [arithmetic(c, a) + 0.1 * format_reward(c, a) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=512, num_generations=8,
        max_completion_length=8, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, beta=0.0, epsilon=0.2, temperature=1.0, top_p=1.0,
        loss_type="dapo", scale_rewards="group", num_iterations=1, logging_steps=50, save_strategy="no",
        report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0, bf16=False,
    )
    initial = greedy_accuracy(policy.eval(), tok, evals)
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=data, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    final = greedy_accuracy(trainer.model.eval(), tok, evals)
    samples = steps * 512
    return {"system": "trl", "loop_s": wall, "samples": samples, "samples_per_s": samples / wall,
            "initial_accuracy": initial, "final_accuracy": final}


def run_trl_process(model: Path, steps: int, out: Path, lr: float) -> dict:
    """TRL in a process of its own, timed from launch to exit like Tandem's CLI."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "trl.json"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--only-trl", str(model), "--steps", str(steps),
                    "--workdir", str(out), "--result", str(result), "--lr", str(lr)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text()) | {"end_to_end_s": time.perf_counter() - t0}


def write(results: list[dict], steps: int, lr: float, name: str = "quickstart_vs_trl") -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"steps": steps, "samples_per_step": 512, "lr": lr, "machine": f"{os.cpu_count()} CPU cores",
            "date": time.strftime("%Y-%m-%d"),
            "command": f".venv/bin/python bench/quickstart_vs_trl.py --steps {steps}"
                       + (f" --name {name}" if name != "quickstart_vs_trl" else "")}
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["| system | samples | end to end s (launch to exit) | in-loop s | in-loop samples/s | "
             "held-out acc before | after |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['system']} | {r['samples']} | {r['end_to_end_s']:.0f} | {r['loop_s']:.0f} | "
                     f"{r['samples_per_s']:.0f} | {r['initial_accuracy']:.1%} | {r['final_accuracy']:.1%} |")
    head = f"`{meta['command']}` ({meta['machine']}, {meta['date']}, one run each, seed 0, lr {lr})"
    (RESULTS / f"{name}.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--name", default="quickstart_vs_trl", help="the results files' name")
    parser.add_argument("--workdir", default="/tmp/tandem-bench")
    parser.add_argument("--only-trl", help=argparse.SUPPRESS)  # the TRL child process: model path
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)  # the TRL child: the recipe's lr
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.only_trl:
        Path(args.result).write_text(json.dumps(run_trl(Path(args.only_trl), args.steps, Path(args.workdir), args.lr)))
        return
    from cluster.config import load_config
    from trainer.bootstrap import ensure_tiny_model

    cfg = load_config(ROOT / "recipes" / "quickstart.yaml")
    work = Path(args.workdir)
    model = work / "tiny-arith"
    ensure_tiny_model(model, cfg.model.bootstrap_spec, seed=cfg.run.seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = [run_tandem(model, args.steps, work / f"tandem-{stamp}"),
               run_trl_process(model, args.steps, work / f"trl-{stamp}", cfg.trainer.lr)]
    write(results, args.steps, cfg.trainer.lr, args.name)


if __name__ == "__main__":
    main()
