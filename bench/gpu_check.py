"""The GPU data path on one GPU, in a few minutes: a randomly initialised model of Qwen2.5-0.5B's
shape (494M parameters, vocabulary 151,936; built from its config, nothing fetched), then

  matmul     the bf16 matrix-product rate of this GPU (8192^3), the yardstick for MFU
  generate   the `hf` engine on the GPU (bf16): tokens/s, peak memory; then its colocated
             hand-over: memory held awake and asleep (sleep level 1), sleep and wake seconds
  train      a policy step as the learner computes it (fp32 master weights, bf16 autocast,
             chunked logprobs, the ppo_clip loss, AdamW): tokens/s, MFU, peak memory with
             chunked (trainer.logprob_chunk_tokens=1024) and whole-vocabulary logprobs
  transfer   one weight update in 32 MB buckets of bf16: pack + fingerprint on the GPU, the copy
             to host that the object store needs, the engine's check on the GPU, the swap into
             the engine; the collective (NCCL) carrier needs two GPUs and is not run on one

Needs torch and transformers only (a bare GPU image has them), run from the repository root:

    python3 bench/gpu_check.py            # writes bench/results/gpu_check.{json,md}

Figures are for this GPU and this script's shapes; one run each.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
GiB = 2**30


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup`, synchronised."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def peak_of(fn) -> tuple[float, int]:
    """(seconds, peak bytes allocated above the start) of one fn() call."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated() - base


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    s = timed(lambda: a @ b, repeats=10, warmup=3)
    return 2 * 8192**3 / s


def qwen_half_b():
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=4096,
                       tie_word_embeddings=True, rope_theta=1_000_000.0)


def check_generate(path: str) -> dict:
    from rollout.hf_engine import HFEngine
    from rollout.types import GenerationRequest, SamplingParams

    engine = HFEngine(path, "bfloat16", "cuda")
    g = torch.Generator().manual_seed(0)
    reqs = [GenerationRequest(group_id=i, prompt_id=i, prompt="", answer="", num_samples=8,
                              prompt_ids=tuple(int(t) for t in torch.randint(4, 151_936, (64,), generator=g)))
            for i in range(16)]
    params = SamplingParams(temperature=1.0, max_new_tokens=256, seed=0)
    engine.generate(reqs[:2], SamplingParams(temperature=1.0, max_new_tokens=8, seed=0), 0)  # warm-up
    box = {}
    seconds, peak = peak_of(lambda: box.setdefault("r", engine.generate(reqs, params, 0)))
    tokens = sum(len(r.response_ids) for r in box["r"])
    out = {"samples": len(box["r"]), "new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
           "peak_gib": peak / GiB, "held_awake_gib": torch.cuda.memory_allocated() / GiB}
    # Colocated placement: the engine's hand-over of the GPU (rollout.sleep_level 1: weights to host memory).
    t0 = time.perf_counter()
    engine.sleep(1)
    torch.cuda.synchronize()
    out.update(sleep_s=time.perf_counter() - t0, held_asleep_gib=torch.cuda.memory_allocated() / GiB)
    t0 = time.perf_counter()
    engine.wake_up()
    torch.cuda.synchronize()
    out["wake_s"] = time.perf_counter() - t0
    del engine
    torch.cuda.empty_cache()
    return out


def check_train(path: str, rate: float) -> dict:
    from transformers import AutoModelForCausalLM

    from trainer.logprobs import token_logprobs
    from trainer.losses import LOSSES, LossInputs
    from trainer.types import LossSpec

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    rows, length = 8, 1024
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(4, 151_936, (rows, length), device="cuda", generator=g)
    mask = torch.zeros(rows, length, device="cuda")
    mask[:, 256:] = 1  # 256 prompt tokens, 768 response tokens
    adv = torch.randn(rows, 1, device="cuda", generator=g) * mask
    spec = LossSpec(temperature=1.0)

    def step(chunk: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logp, _ = token_logprobs(model, ids, torch.ones_like(ids), 1.0, chunk_tokens=chunk)
        x = LossInputs(mask=mask, logprobs=logp, behaviour_logprobs=logp.detach(), advantages=adv)
        per_token, _ = LOSSES.get("ppo_clip")(x, spec)
        (per_token * mask).sum().div(mask.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(1024)  # warm-up: optimizer state allocated
    seconds = timed(lambda: step(1024), repeats=5, warmup=0)
    tokens_per_s = rows * length / seconds
    _, peak_chunked = peak_of(lambda: step(1024))
    _, peak_whole = peak_of(lambda: step(0))
    out = {"params": n_params, "tokens_per_step": rows * length, "step_s": seconds, "tokens_per_s": tokens_per_s,
           "mfu": 6 * n_params * tokens_per_s / rate, "peak_gib_chunked": peak_chunked / GiB,
           "peak_gib_whole_vocab": peak_whole / GiB, "gradient_checkpointing": True}
    del model, opt
    torch.cuda.empty_cache()
    return out


def check_transfer(path: str) -> dict:
    from transformers import AutoModelForCausalLM

    from rollout.hf_engine import HFEngine
    from rollout.transfer.buckets import TensorSpec, pack, plan_layout, unpack

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    params = {k: p.detach() for k, p in model.named_parameters()}
    layout = plan_layout([TensorSpec(k, tuple(p.shape), "bfloat16") for k, p in params.items()], 32 * 2**20)
    nbytes = layout.total_bytes
    n = len(layout.buckets)
    packed = [pack(layout, i, params, 1) for i in range(n)]
    pack_s = timed(lambda: [pack(layout, i, params, 1) for i in range(n)], repeats=3)
    host = [b.cpu() for b in packed]
    to_host_s = timed(lambda: [b.to("cpu", non_blocking=False) for b in packed], repeats=3)
    to_device_s = timed(lambda: [h.to("cuda") for h in host], repeats=3)
    check_s = timed(lambda: [unpack(layout, i, packed[i], 1) for i in range(n)], repeats=3)
    got = {}
    for i in range(n):
        got.update(unpack(layout, i, packed[i], 1))
    engine = HFEngine(path, "bfloat16", "cuda")
    swap_s = timed(lambda: engine.load_weights(got), repeats=3)
    gb = nbytes / 1e9
    out = {"bytes": nbytes, "buckets": n, "pack_fingerprint_gbps": gb / pack_s, "device_to_host_gbps": gb / to_host_s,
           "host_to_device_gbps": gb / to_device_s, "check_gbps": gb / check_s, "swap_s": swap_s,
           "update_s_object_store_path": pack_s + to_host_s + to_device_s + check_s + swap_s,
           "collective_nccl": "not run: NCCL needs one GPU per rank, this host has one"}
    del engine, model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_check.py needs a CUDA GPU")
    torch.manual_seed(0)
    t_start = time.perf_counter()
    rate = matmul_rate()
    results = {"meta": {"command": "python3 bench/gpu_check.py", "date": time.strftime("%Y-%m-%d"),
                        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                        "model": "random Qwen2.5-0.5B shape (bf16 engine, fp32 master + bf16 autocast learner)"},
               "matmul_bf16_tflops": rate / 1e12}
    with tempfile.TemporaryDirectory() as work:
        from trainer.bootstrap import save_random_model

        path = str(save_random_model(Path(work) / "qwen-shape", qwen_half_b(), dtype=torch.bfloat16))
        for name, fn in (("generate", lambda: check_generate(path)), ("train", lambda: check_train(path, rate)),
                         ("transfer", lambda: check_transfer(path))):
            t0 = time.perf_counter()
            results[name] = fn()
            print(name, f"{time.perf_counter() - t0:.0f} s", json.dumps(results[name]), flush=True)
    results["meta"]["wall_s"] = time.perf_counter() - t_start
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(results, indent=2))
    m, gen, tr, tx = results["meta"], results["generate"], results["train"], results["transfer"]
    lines = [f"`{m['command']}` ({m['gpu']}, torch {m['torch']}, {m['date']}; {m['wall_s']:.0f} s). {m['model']}.", "",
             "| what | figure |", "|---|---|",
             f"| bf16 matmul (8192^3) | {results['matmul_bf16_tflops']:.0f} TFLOP/s |",
             f"| generation, `hf` engine, 128 samples x 256 new tokens | {gen['tokens_per_s']:,.0f} tokens/s; peak "
             f"{gen['peak_gib']:.1f} GiB |",
             f"| colocated hand-over, engine sleep level 1 | held {gen['held_awake_gib']:.2f} GiB awake, "
             f"{gen['held_asleep_gib']:.2f} GiB asleep; sleep {gen['sleep_s']:.2f} s, wake {gen['wake_s']:.2f} s |",
             f"| learner step, 8 x 1024 tokens, activation checkpointing | {tr['tokens_per_s']:,.0f} tokens/s, "
             f"MFU {tr['mfu']:.1%} |",
             f"| learner peak memory, chunked / whole-vocabulary logprobs | {tr['peak_gib_chunked']:.1f} / "
             f"{tr['peak_gib_whole_vocab']:.1f} GiB |",
             f"| one update, {tx['bytes'] / 1e9:.2f} GB bf16 in {tx['buckets']} buckets | pack + fingerprint "
             f"{tx['pack_fingerprint_gbps']:.0f} GB/s, to host {tx['device_to_host_gbps']:.1f} GB/s, to device "
             f"{tx['host_to_device_gbps']:.1f} GB/s, check {tx['check_gbps']:.0f} GB/s, swap {tx['swap_s']:.3f} s; "
             f"{tx['update_s_object_store_path']:.2f} s in all |",
             f"| collective (NCCL) | {tx['collective_nccl']} |"]
    (RESULTS / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
