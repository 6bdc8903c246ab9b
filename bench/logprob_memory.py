"""Peak memory and time of a policy's token logprobs at Qwen2.5's vocabulary (151,936), forward
and backward: Tandem's whole-vocabulary computation (trainer.logprob_chunk_tokens=0), its
chunked one (the default, 1024 positions per chunk, and 256), and TRL's (full logits, then its selective log-softmax and
chunked entropy without gradient, as its GRPO trainer does). A small-hidden Llama on CPU is
enough: the [B, T, V] tensors, not the model, set the peak.

    .venv/bin/python bench/logprob_memory.py [--rows 8 --length 512]

Each case runs in its own process; peak = the process's resident high-water mark minus its
resident memory just before the case. Writes bench/results/logprob_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
VOCAB = 151_936
CASES = ("tandem-whole", "tandem-chunked-1024", "tandem-chunked-256", "trl")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(case: str, rows: int, length: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.logprobs import token_logprobs

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=length,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, VOCAB, (rows, length))
    mask = torch.ones_like(ids)
    weights = torch.randn(rows, length)
    before = rss_mb()
    t0 = time.perf_counter()
    if case == "trl":
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        logp = selective_log_softmax(logits, ids[:, 1:])
        with torch.no_grad():
            entropy = entropy_from_logits(logits)
        loss = (logp * weights[:, 1:]).sum()
    else:
        chunk = 0 if case == "tandem-whole" else int(case.rsplit("-", 1)[1])
        logp, entropy = token_logprobs(model, ids, mask, 1.0, chunk_tokens=chunk)
        loss = (logp * weights).sum()
    loss.backward()
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grad = float(torch.cat([p.grad.ravel() for p in model.parameters()]).norm())
    return {"case": case, "peak_mb": round(peak - before, 1), "wall_s": round(wall, 2),
            "loss": float(loss), "entropy_mean": float(entropy.mean()), "grad_norm": grad}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.rows, args.length)))
        return
    results = []
    for case in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--rows", str(args.rows),
                              "--length", str(args.length)], check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    tensor_mb = args.rows * (args.length - 1) * VOCAB * 4 / 2**20
    meta = {"command": f".venv/bin/python bench/logprob_memory.py --rows {args.rows} --length {args.length}",
            "date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores",
            "vocab": VOCAB, "rows": args.rows, "length": args.length, "one_fp32_BTV_tensor_mb": round(tensor_mb, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "logprob_memory.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=2))
    whole = results[0]
    lines = [f"`{meta['command']}` ({meta['machine']}, {meta['date']}). Token logprobs, forward and backward, "
             f"vocab {VOCAB:,}, {args.rows} x {args.length} tokens, small-hidden Llama (fp32); one fp32 "
             f"[B, T, V] tensor is {tensor_mb:,.0f} MB.", "",
             "| case | peak memory MB | vs whole | time s | vs whole | loss |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['case']} | {r['peak_mb']:,.0f} | {r['peak_mb'] / whole['peak_mb']:.2f}x | {r['wall_s']} | "
                     f"{r['wall_s'] / whole['wall_s']:.2f}x | {r['loss']:.3f} |")
    (RESULTS / "logprob_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
