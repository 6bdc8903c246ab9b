"""GPU-only checks (marked `gpu`; skipped, saying why, where torch sees no CUDA device).

They need torch and transformers only, so they run on a bare GPU image:
`python3 -m pytest -m gpu tests/gpu` (bench/gpu_check.py is the matching benchmark). Tests
that also need Ray and DeepSpeed skip where those are not installed.
"""

import pytest
import torch

from rollout.transfer.buckets import HEADER_BYTES, TensorSpec, WeightSyncError, fingerprint, pack, plan_layout, unpack
from trainer.logprobs import token_logprobs

pytestmark = pytest.mark.gpu
VOCAB = 151_936  # Qwen2.5's


def llama(vocab=1000, hidden=64, layers=2):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024)


@pytest.fixture(autouse=True)
def exact_matmuls():
    """fp32 comparisons: no TF32 in the matrix products."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def test_hf_engine_on_cuda_samples_with_the_learners_logprobs(tmp_path):
    """The `hf` engine on the GPU: its sampled tokens' logprobs equal the learner's chunked
    logprobs of the same tokens on the same weights (fp32, T = 0.9)."""
    from rollout.hf_engine import HFEngine
    from rollout.types import GenerationRequest, SamplingParams
    from trainer.bootstrap import save_random_model

    path = save_random_model(tmp_path / "m", llama())
    engine = HFEngine(str(path), "float32", "cuda")
    assert engine.model.device.type == "cuda"
    reqs = [GenerationRequest(group_id=g, prompt_id=g, prompt="", prompt_ids=(1, 5 + g, 9, 11), answer="", num_samples=4)
            for g in range(4)]
    rollouts = engine.generate(reqs, SamplingParams(temperature=0.9, max_new_tokens=16, seed=0), version=0)
    assert len(rollouts) == 16
    worst = 0.0
    for r in rollouts:
        ids = torch.tensor([list(r.prompt_ids) + list(r.response_ids)], device="cuda")
        with torch.no_grad():
            logp = token_logprobs(engine.model, ids, torch.ones_like(ids), 0.9, chunk_tokens=7)[0][0]
        learner = logp[len(r.prompt_ids):].cpu()
        worst = max(worst, float((learner - torch.tensor(r.logprobs)).abs().max()))
    assert worst < 1e-4, worst


def test_chunked_logprobs_on_cuda_equal_and_use_a_fraction_of_the_memory():
    """At Qwen2.5's vocabulary, 4 x 1024 tokens: values and gradients equal, peak memory of
    forward + backward well under the whole computation's (one fp32 [B, T, V] is 2.5 GB)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama(vocab=VOCAB, hidden=256)).cuda()
    ids = torch.randint(0, VOCAB, (4, 1024), device="cuda")
    mask = torch.ones_like(ids)
    out = {}
    for chunk in (0, 1024):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logp, _ = token_logprobs(model, ids, mask, 1.0, chunk_tokens=chunk)
        logp.sum().backward()
        torch.cuda.synchronize()
        out[chunk] = (logp.detach(), model.lm_head.weight.grad.clone(), torch.cuda.max_memory_allocated() - base)
    (lp0, g0, peak0), (lp1, g1, peak1) = out[0], out[1024]
    torch.testing.assert_close(lp1, lp0, atol=1e-4, rtol=1e-4)
    assert float((g1 - g0).norm() / g0.norm()) < 1e-4
    assert peak1 < peak0 / 3, (peak0 / 2**30, peak1 / 2**30)


def test_buckets_pack_and_check_on_the_gpu_bf16():
    """Packed and fingerprinted on the GPU in bf16: the same fingerprint as on the CPU for the
    same bytes, bit-exact round trip, a flipped bit refused."""
    g = torch.Generator().manual_seed(0)
    cpu = {f"w{i}": torch.randn(1000 + i, 333, generator=g).to(torch.bfloat16) for i in range(6)}
    gpu = {k: v.cuda() for k, v in cpu.items()}
    layout = plan_layout([TensorSpec(k, tuple(v.shape), "bfloat16") for k, v in cpu.items()], 2 * 2**20)
    assert len(layout.buckets) > 1
    for i in range(len(layout.buckets)):
        buf = pack(layout, i, gpu, version=5)
        assert buf.is_cuda
        assert fingerprint(buf[HEADER_BYTES:]) == fingerprint(pack(layout, i, cpu, version=5)[HEADER_BYTES:])
        got = unpack(layout, i, buf, version=5)
        assert all(torch.equal(got[s.name].cpu(), cpu[s.name]) for s in layout.buckets[i])
    buf[HEADER_BYTES + 12345] ^= 8
    with pytest.raises(WeightSyncError, match="fingerprint mismatch"):
        unpack(layout, len(layout.buckets) - 1, buf, version=5)


def test_hf_engine_takes_weights_from_gpu_buckets(tmp_path):
    """An update unpacked on the GPU loads into the GPU engine and changes what it samples."""
    from rollout.hf_engine import HFEngine
    from rollout.types import GenerationRequest, SamplingParams
    from trainer.bootstrap import save_random_model

    engine = HFEngine(str(save_random_model(tmp_path / "m", llama())), "float32", "cuda")
    params = dict(engine.model.named_parameters())
    moved = {k: p.detach() + 0.05 * torch.randn_like(p) for k, p in params.items()}
    layout = plan_layout([TensorSpec(k, tuple(v.shape), "float32") for k, v in moved.items()], 2**20)
    got = {}
    for i in range(len(layout.buckets)):
        got.update(unpack(layout, i, pack(layout, i, moved, 1), 1))
    reqs = [GenerationRequest(group_id=0, prompt_id=0, prompt="", prompt_ids=(1, 5), answer="", num_samples=1)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=12, seed=0)
    before = engine.generate(reqs, greedy, 0)[0].response_ids
    engine.load_weights(got)
    assert all(torch.equal(params[k], moved[k]) for k in moved)
    assert engine.generate(reqs, greedy, 1)[0].response_ids != before


def test_deepspeed_learner_bf16_on_nccl(tmp_path):
    """One DeepSpeed rank in bf16 on NCCL takes a step (needs ray and deepspeed installed)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed on this GPU image")
    ray = pytest.importorskip("ray", reason="Ray is not installed on this GPU image")
    import numpy as np

    from trainer.bootstrap import save_random_model
    from trainer.group import LearnerGroup
    from trainer.learner import LearnerOptions
    from trainer.types import LossSpec, TrainBatch

    path = save_random_model(tmp_path / "m", llama())
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        opts = LearnerOptions(zero_stage=2, lr=1e-3, micro_batch_size=4, dtype="bfloat16", logprob_chunk_tokens=16)
        group = LearnerGroup(str(path), 1, opts, actor_options=[{"num_gpus": 1}])
        rng = np.random.default_rng(0)
        ids = rng.integers(4, 1000, size=(4, 24))
        mask = np.zeros((4, 24), np.float32)
        mask[:, 8:] = 1
        batch = TrainBatch(ids, np.ones_like(ids), mask, mask / mask.sum(), advantages=rng.standard_normal((4, 24)).astype(np.float32) * mask,
                           behaviour_logprobs=np.zeros((4, 24), np.float32))
        stats = group.train_step(batch, LossSpec(temperature=1.0))
        assert np.isfinite(stats["loss"]) and stats["grad_norm"] > 0
        group.shutdown()
    finally:
        ray.shutdown()


@pytest.mark.parametrize("level", [1, 2])
def test_hf_engine_sleep_frees_its_gpu_memory_and_wakes_to_the_same_samples(tmp_path, level):
    """Colocated placement: asleep, the engine holds none of its weights on the GPU (level 1:
    moved to host memory; level 2: dropped, then refilled by an update); awake it samples the
    same tokens as before."""
    from rollout.hf_engine import HFEngine
    from rollout.types import GenerationRequest, SamplingParams
    from trainer.bootstrap import save_random_model

    engine = HFEngine(str(save_random_model(tmp_path / "m", llama(vocab=32000, hidden=256))), "float32", "cuda")
    weights = {k: p.detach().clone() for k, p in engine.model.named_parameters()}
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    reqs = [GenerationRequest(group_id=0, prompt_id=0, prompt="", prompt_ids=(1, 5, 7), answer="", num_samples=4)]
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=0)
    before = [r.response_ids for r in engine.generate(reqs, params, 0)]
    held = torch.cuda.memory_allocated()
    assert engine.sleep(level) == weight_bytes
    torch.cuda.empty_cache()
    assert held - torch.cuda.memory_allocated() >= weight_bytes  # the clone above stays; the engine's went
    engine.wake_up()
    if level == 2:
        engine.load_weights(weights)
    assert [r.response_ids for r in engine.generate(reqs, params, 0)] == before


def test_deepspeed_learner_offload_frees_the_gpu_and_reloads(tmp_path):
    """Colocated placement: a bf16 ZeRO-2 rank's offload releases its optimizer states, master
    weights and (unless kept for the sync) parameters; reload brings them back and it trains on."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed on this GPU image")
    ray = pytest.importorskip("ray", reason="Ray is not installed on this GPU image")
    import numpy as np
    from safetensors.torch import load_file

    from trainer.bootstrap import save_random_model
    from trainer.group import LearnerGroup
    from trainer.learner import LearnerOptions
    from trainer.types import LossSpec, TrainBatch

    path = save_random_model(tmp_path / "m", llama(vocab=32000, hidden=256))
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        opts = LearnerOptions(zero_stage=2, lr=1e-3, micro_batch_size=4, dtype="bfloat16")
        group = LearnerGroup(str(path), 1, opts, actor_options=[{"num_gpus": 1}])
        rng = np.random.default_rng(0)
        ids = rng.integers(4, 1000, size=(4, 24))
        mask = np.zeros((4, 24), np.float32)
        mask[:, 8:] = 1
        batch = TrainBatch(ids, np.ones_like(ids), mask, mask / mask.sum(),
                           advantages=rng.standard_normal((4, 24)).astype(np.float32) * mask,
                           behaviour_logprobs=np.zeros((4, 24), np.float32))
        group.train_step(batch, LossSpec(temperature=1.0))
        [kept] = group.offload(keep_params=True)
        [rest] = group.offload()
        [back] = group.reload()
        # fp32 master weights + Adam's two moments: 12 bytes per parameter; bf16 parameters: 2.
        n = sum(t.numel() for t in load_file(str(path / "model.safetensors")).values())
        assert kept.freed_bytes >= 12 * n and rest.freed_bytes >= 2 * n, (kept, rest, n)
        assert back.offloaded == () and -back.freed_bytes >= 14 * n
        stats = group.train_step(batch, LossSpec(temperature=1.0))
        assert np.isfinite(stats["loss"]) and stats["grad_norm"] > 0
        group.shutdown()
    finally:
        ray.shutdown()


def _open_and_check(layout, shared, version):
    """In another process on the same GPU: open the buckets, check them, copy the tensors out."""
    from rollout.transfer.buckets import unpack
    from rollout.transfer.ipc import open_shared

    out = {}
    for index, bucket in enumerate(shared):
        out.update({k: t.cpu() for k, t in unpack(layout, index, open_shared(bucket), version).items()})
    return out


def test_ipc_hands_packed_buckets_to_another_process_on_the_gpu():
    """rollout.weight_transfer 'ipc': a process on the same GPU maps the sender's packed bf16
    buckets, gets the exact tensors, and refuses a bucket changed after it was fingerprinted."""
    from rollout.transfer.ipc import share

    params = {f"w{i}": torch.randn(256, 512, device="cuda").to(torch.bfloat16) for i in range(6)}
    layout = plan_layout([TensorSpec(k, tuple(v.shape), "bfloat16") for k, v in params.items()], 2**19)
    buffers = [pack(layout, i, params, 3) for i in range(len(layout.buckets))]
    shared = [share(b) for b in buffers]
    ctx = torch.multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        got = pool.apply(_open_and_check, (layout, shared, 3))
    assert len(layout.buckets) == 3 and all(torch.equal(got[k], v.cpu()) for k, v in params.items())
    buffers[2][HEADER_BYTES + 7] ^= 1  # the receiver maps the same memory: it sees the flipped bit
    torch.cuda.synchronize()
    with ctx.Pool(1) as pool, pytest.raises(WeightSyncError, match="bucket 2/3: fingerprint mismatch"):
        pool.apply(_open_and_check, (layout, shared, 3))
