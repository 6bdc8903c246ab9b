"""The learners alone: tokens/s and peak memory per rank, ZeRO 0 / 2 / 3 at 1 and 2 ranks.

Real DeepSpeed ranks as Ray actors (trainer/group.py, gloo on loopback), on
bench/compute_vs_trl.py's 19.0M-parameter Llama (fp32): each step is one policy-gradient
update (ppo_clip, token-mean) over 64 rows of 136 tokens (8 prompt + 128 response), the
compute-bound step's training work, in micro-batches of 16 rows per rank. The machine's
cores are split evenly: 1 rank x 2 threads, or 2 ranks x 1 thread. Median of steps 2 to
`--steps`. Memory is each rank's resident set: after setup (model, optimizer state, ZeRO
partitions) and its high-water mark by the end (activations at their peak on top), read from
the rank's own process (/proc/self/status).

    .venv/bin/python bench/learner.py

Writes bench/results/learner.json and .md. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
ROWS, PROMPT, RESPONSE, MICRO = 64, 8, 128, 16


def memory_mb(_actor) -> dict[str, float]:
    """The calling process's resident set now and at its peak (runs inside a learner rank)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "peak_mb": int(fields["VmHWM"].split()[0]) / 1024}


def make_batch(model_path: Path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.logprobs import token_logprobs
    from trainer.losses import AGGREGATIONS
    from trainer.types import TrainBatch

    rng = np.random.default_rng(0)
    width = PROMPT + RESPONSE
    vocab = AutoModelForCausalLM.from_pretrained(model_path).config.vocab_size
    ids = rng.integers(4, vocab, size=(ROWS, width)).astype(np.int64)
    attn = np.ones_like(ids)
    mask = np.zeros((ROWS, width), dtype=np.float32)
    mask[:, PROMPT:] = 1.0
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    with torch.no_grad():  # behaviour logprobs of the policy itself: ratios start at 1, as on-policy
        logp, _ = token_logprobs(model, torch.tensor(ids), torch.tensor(attn), 1.0)
    adv = (rng.standard_normal((ROWS, 1)) * mask).astype(np.float32)
    return TrainBatch(ids, attn, mask, AGGREGATIONS.get("token-mean")(mask, RESPONSE), advantages=adv,
                      behaviour_logprobs=(logp.numpy() * mask).astype(np.float32))


def run_case(model_path: Path, batch, stage: int, ranks: int, steps: int) -> dict:
    import ray

    from trainer.group import LearnerGroup
    from trainer.learner import LearnerOptions
    from trainer.types import LossSpec

    per_rank = ROWS // ranks
    opts = LearnerOptions(zero_stage=stage, lr=1e-5, micro_batch_size=MICRO, grad_accum_steps=per_rank // MICRO)
    t0 = time.perf_counter()
    group = LearnerGroup(str(model_path), ranks, opts, threads=2 // ranks)
    setup_s = time.perf_counter() - t0
    try:
        after_setup = ray.get([a.__ray_call__.remote(memory_mb) for a in group.actors])
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            group.train_step(batch, LossSpec(clip_eps=0.2, temperature=1.0))
            times.append(time.perf_counter() - t0)
        after = ray.get([a.__ray_call__.remote(memory_mb) for a in group.actors])
    finally:
        group.shutdown()
    step = statistics.median(times[1:])
    return {"zero_stage": stage, "ranks": ranks, "threads_per_rank": 2 // ranks, "step_s": step, "steps_s": times,
            "tokens_per_s": ROWS * (PROMPT + RESPONSE) / step, "setup_s": setup_s,
            "rss_after_setup_mb": [m["rss_mb"] for m in after_setup], "peak_mb": [m["peak_mb"] for m in after]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default="/tmp/tandem-bench-compute")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    from bench.compute_vs_trl import build
    from cluster.runtime import ACTOR_ENV

    model_path, n_params = build(Path(args.workdir))
    batch = make_batch(model_path)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private loopback cluster, as cluster/runtime.py starts
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": ACTOR_ENV})
    try:
        rows = [run_case(model_path, batch, stage, ranks, args.steps) for stage in args.stages for ranks in args.ranks]
    finally:
        ray.shutdown()
    meta = {"params": n_params, "rows": ROWS, "tokens_per_row": PROMPT + RESPONSE, "micro_batch": MICRO,
            "steps": args.steps, "machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d"),
            "command": ".venv/bin/python bench/learner.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "learner.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = ["| ZeRO stage | ranks x threads | step s (median) | tokens/s | start-up s | resident after setup, per rank (MB) "
             "| peak resident, per rank (MB) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['zero_stage']} | {r['ranks']} x {r['threads_per_rank']} | {r['step_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['setup_s']:.1f} | "
                     f"{' / '.join(f'{m:.0f}' for m in r['rss_after_setup_mb'])} | "
                     f"{' / '.join(f'{m:.0f}' for m in r['peak_mb'])} |")
    head = (f"`{meta['command']}` ({meta['machine']}, {meta['date']}; one run each): {n_params / 1e6:.1f}M Llama, "
            f"fp32, one ppo_clip update over {ROWS} rows x {PROMPT + RESPONSE} tokens per step, micro-batches of "
            f"{MICRO} rows per rank, median of steps 2-{args.steps}; real DeepSpeed ranks (gloo, loopback), oneDNN "
            f"linears (model.cpu_linear auto)")
    (RESULTS / "learner.md").write_text(head + "\n\n" + "\n".join(lines) + "\n")
    print(head + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
