"""A compute-bound GRPO step, side by side with TRL, and each side's fraction of the machine's limit.

The quickstart's 0.53M-parameter model is all overhead; here the model is a 19.1M-parameter
Llama (hidden 512, MLP 1376, 6 layers, 8 heads, fp32, the character tokenizer) and every step
is 8 prompts x 8 samples x exactly 128 new tokens (`rollout.min_new_tokens` = max; TRL:
`generation_kwargs.min_new_tokens`), so both sides do the same work: one generation, one
policy-gradient update (no KL, one update per batch), the same reward function. Both run
one after the other in one invocation on this machine's cores; the median step over the
steps after the first is compared.

The limit: a matmul rate R measured in the same run (1024^3 fp32 on all cores, best of 5,
the faster of PyTorch's own matmul (MKL) and oneDNN's linear, which Tandem's layers use on
CPU: `model.cpu_linear`, rollout/cpu_linear.py), and the work of a step W = 2 N (prompt + generated tokens) + 6 N (prompt + response tokens
trained), N the parameter count. A side's fraction of the limit is (W / R) / its step time:
the share of the step the cores spent at matmul speed on work that had to be done.

    .venv/bin/pip install -c constraints/cpu.txt -e '.[bench]'   # TRL, the peer
    .venv/bin/python bench/compute_vs_trl.py

Writes bench/results/compute_vs_trl.json and .md. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

PROMPTS, GROUP, NEW_TOKENS = 8, 8, 128
SHAPE = {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 6, "num_attention_heads": 8}
# Tandem's layouts on the two cores: the recipe's two ZeRO-2 learners of one thread each; one
# engine of two threads, or two of one (torch ops on a thread other than a process's main one
# run 15-20% slower at two OpenMP threads here, not at one; an engine decodes on its own
# thread). The last row is the before figure of oneDNN's linears: PyTorch's F.linear (MKL).
TWO_ENGINES = ["rollout.num_workers=2", "rollout.threads_per_worker=1",
               "trainer.num_learners=2", "trainer.threads_per_learner=1"]
TANDEM = {
    "tandem: 2 engines x 1 thread, 2 learners x 1": TWO_ENGINES,
    "tandem: 1 engine x 2 threads, 2 learners x 1": ["rollout.num_workers=1", "rollout.threads_per_worker=2",
                                                     "trainer.num_learners=2", "trainer.threads_per_learner=1"],
    "tandem: 2 engines x 1 thread, 2 learners x 1, F.linear (MKL)": [*TWO_ENGINES, "model.cpu_linear=aten"],
}


def matmul_rates(threads: int, n: int = 1024) -> dict[str, float]:
    """FLOP/s of an n^3 fp32 product on `threads` threads, best of 5 (after a warm-up), with
    PyTorch's matmul (MKL) and with oneDNN's linear (where this torch has it)."""
    import torch

    from rollout.cpu_linear import onednn_available

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    kernels = {"mkl": lambda: a @ b}
    if onednn_available():
        kernels["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    rates = {}
    for name, product in kernels.items():
        product()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                product()
            best = min(best, (time.perf_counter() - t0) / 4)
        rates[name] = 2 * n**3 / best
    return rates


def build(work: Path) -> tuple[Path, int]:
    """The model (random weights, seed 0) and addition prompts, saved in HF layout; N."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.bootstrap import build_tokenizer

    path = work / "llama-19m"
    tok = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), num_key_value_heads=SHAPE["num_attention_heads"],
                         max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if not (path / "config.json").is_file():
        model.save_pretrained(path)
        tok.save_pretrained(path)
        rng = random.Random(0)
        rows = []
        for _ in range(512):
            a, b = rng.randrange(1000), rng.randrange(1000)
            rows.append(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}))
        (path / "train.jsonl").write_text("\n".join(rows) + "\n")
    return path, sum(p.numel() for p in model.parameters())


def run_tandem(model: Path, steps: int, out: Path, name: str, layout: list[str]) -> dict:
    cmd = [str(ROOT / ".venv" / "bin" / "tandem"), "run", str(ROOT / "recipes" / "quickstart.yaml"),
           f"model.path={model}", "model.bootstrap=false", f"data.train_path={model}/train.jsonl",
           f"data.eval_path={model}/train.jsonl", f"run.output_dir={out}", f"controller.steps={steps}",
           f"controller.prompts_per_step={PROMPTS}", f"algorithm.group_size={GROUP}",
           f"rollout.max_new_tokens={NEW_TOKENS}", f"rollout.min_new_tokens={NEW_TOKENS}",
           "controller.eval_every=0", "controller.progress=false", *layout]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in next(out.glob("*/metrics.jsonl")).read_text().splitlines() if line]
    steps_ = [r for r in rows if "step_s" in r][1:]  # the first step warms up
    stages = {k: statistics.median(r[k] for r in steps_) for k in ("gen_s", "reward_s", "train_s", "sync_s")}
    lengths = {round(r["response_len"]) for r in steps_}
    return {"system": name, "step_s": statistics.median(r["step_s"] for r in steps_), "stages": stages,
            "response_len": sorted(lengths)}


def run_trl(model: Path, steps: int, out: Path) -> dict:
    """TRL's GRPOTrainer in this process; each stage timed by wrapping the trainer's own methods."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reward.verifiers import arithmetic

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    rows = [json.loads(line) for line in (model / "train.jsonl").read_text().splitlines() if line]

    def reward(completions, answer, **_):
        return [arithmetic(c, a) for c, a in zip(completions, answer)]

    args = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, generation_kwargs={"min_new_tokens": NEW_TOKENS},
        learning_rate=5e-4, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, epsilon=0.2, temperature=1.0, top_p=1.0, loss_type="dapo", scale_rewards="group",
        num_iterations=1, logging_steps=1000, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        dataloader_num_workers=0, bf16=False,
        gradient_checkpointing=False,  # TRL's default recomputes the forward in backward: more work than Tandem's
    )
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
    stage: dict[str, float] = {}
    per_step: list[dict] = []
    lengths: set[int] = set()

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            result = fn(*a, **k)
            stage[name] = stage.get(name, 0.0) + time.perf_counter() - t0
            return result
        return wrapper

    generate = trainer._generate_and_score_completions

    def generate_and_measure(*a, **k):
        out_ = generate(*a, **k)
        lengths.update(out_["completion_mask"].sum(1).tolist())
        return out_

    trainer._generate_and_score_completions = timed("gen_s", generate_and_measure)
    trainer.compute_loss = timed("forward_s", trainer.compute_loss)
    trainer.accelerator.backward = timed("backward_s", trainer.accelerator.backward)

    class Steps(TrainerCallback):
        def on_step_begin(self, *_, **__):
            stage.clear()
            stage["t0"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            per_step.append({"step_s": time.perf_counter() - stage.pop("t0"), **stage})

    trainer.add_callback(Steps())
    trainer.train()
    rest = per_step[1:]
    stages = {k: statistics.median(r.get(k, 0.0) for r in rest) for k in ("gen_s", "forward_s", "backward_s")}
    return {"system": "trl", "step_s": statistics.median(r["step_s"] for r in rest), "stages": stages,
            "response_len": sorted(int(n) for n in lengths)}


def run_trl_process(model: Path, steps: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    result = out / "trl.json"
    subprocess.run([sys.executable, __file__, "--only-trl", str(model), "--steps", str(steps), "--workdir", str(out),
                    "--result", str(result)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def step_work(n_params: int, prompt_tokens: float) -> float:
    """FLOPs one step must do: 2N per prompt or generated token, 6N per token trained."""
    samples = PROMPTS * GROUP
    sequence = prompt_tokens + NEW_TOKENS
    return samples * (2 * n_params * sequence + 6 * n_params * sequence)


def write(results: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compute_vs_trl.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    trl = next(r for r in results if r["system"] == "trl")
    lines = ["| system | step s (median) | samples/s | tokens/s | vs TRL | fraction of the limit | per stage (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        split = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in r["stages"].items())
        lines.append(f"| {r['system']} | {r['step_s']:.2f} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
                     f"{trl['step_s'] / r['step_s']:.2f}x | {r['limit_fraction']:.0%} | {split} |")
    head = (f"`{meta['command']}` ({meta['machine']}, {meta['date']}; one run each). Model: {meta['params'] / 1e6:.1f}M "
            f"parameters; {PROMPTS} prompts x {GROUP} samples x {NEW_TOKENS} new tokens per step, median of steps "
            f"2-{meta['steps']}. Limit: matmul {meta['matmul_gflops']:.0f} GFLOP/s measured in this run ("
            + ", ".join(f"{k} {v:.0f}" for k, v in meta.get("kernel_gflops", {}).items()) + "), "
            f"{meta['work_gflop']:.0f} GFLOP of work per step, so no step can take less than "
            f"{meta['limit_s']:.2f} s.")
    (RESULTS / "compute_vs_trl.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print(head + "\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workdir", default="/tmp/tandem-bench-compute")
    parser.add_argument("--only", choices=["tandem", "trl"],
                        help="run one side; the other's figures come from the last results (a quick look, not a "
                             "side-by-side figure)")
    parser.add_argument("--only-trl", help=argparse.SUPPRESS)  # the TRL child process: model path
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.only_trl:
        Path(args.result).write_text(json.dumps(run_trl(Path(args.only_trl), args.steps, Path(args.workdir))))
        return
    work = Path(args.workdir)
    model, n_params = build(work)
    rates = matmul_rates(2)
    rate = max(rates.values())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    last = RESULTS / "compute_vs_trl.json"
    kept = [] if not args.only or not last.is_file() else [  # a quick look at one side: the other's last figures
        r for r in json.loads(last.read_text())["results"] if (r["system"] == "trl") != (args.only == "trl")]
    results = [] if args.only == "trl" else [run_tandem(model, args.steps, work / f"{stamp}-{i}", name, layout)
                                             for i, (name, layout) in enumerate(TANDEM.items())]
    if args.only != "tandem":
        results.append(run_trl_process(model, args.steps, work / f"trl-{stamp}"))
    results = sorted(results + kept, key=lambda r: r["system"] == "trl")
    prompt_tokens = statistics.mean(len(json.loads(line)["prompt"]) + 1 for line in
                                    (model / "train.jsonl").read_text().splitlines() if line)  # + <s>
    work_flop = step_work(n_params, prompt_tokens)
    for r in results:
        r["samples_per_s"] = PROMPTS * GROUP / r["step_s"]
        r["tokens_per_s"] = PROMPTS * GROUP * NEW_TOKENS / r["step_s"]
        r["limit_fraction"] = work_flop / rate / r["step_s"]
    meta = {"params": n_params, "steps": args.steps, "matmul_gflops": rate / 1e9,
            "kernel_gflops": {k: v / 1e9 for k, v in rates.items()}, "work_gflop": work_flop / 1e9,
            "limit_s": work_flop / rate, "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
            "command": ".venv/bin/python bench/compute_vs_trl.py" + (f" --only {args.only}" if args.only else "")}
    write(results, meta)


if __name__ == "__main__":
    main()
