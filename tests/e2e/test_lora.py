"""LoRA end to end on local Ray: only the adapter trains and travels; after each sync the engine's
logprobs are the learner's (so the adapter reached the engine: the peers' verl#3821 /
ms-swift#9855 bug fails here) and differ from the previous version's; the KL reference is the
base model (the adapter switched off); final/ holds the adapter and, merged, a plain checkpoint;
a checkpoint holds the adapter and the learners' state without the base, and resumes bitwise."""

import json

import torch
from safetensors import safe_open

from cluster.run import run
from tests.e2e.test_grpo_local import config

KEYS = ("step", "reward_mean", "loss", "grad_norm", "entropy", "logprob_diff", "kl", "lr", "version")


def tensor_bytes(path) -> int:
    with safe_open(str(path), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def adapter_tensors(final) -> dict:
    with safe_open(str(final / "adapter_model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_lora_trains_syncs_exports_and_resumes_only_the_adapter(ray_session, tmp_path):
    cfg = config(tmp_path, "model.lora.r=4", "model.lora.merge_on_export=true", "controller.steps=4",
                 "controller.checkpoint_every=2", "algorithm.kl_coef=0.05", "trainer.lr=5e-3",
                 "trainer.lr_schedule=cosine", "controller.eval_every=0")
    summary = run(cfg, log=lambda *_: None).record
    run_dir, final = tmp_path / "runs" / "quickstart", tmp_path / "runs" / "quickstart" / "final"

    def metrics():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [{k: r.get(k) for k in KEYS} for r in rows]

    rows = metrics()
    adapter = tensor_bytes(final / "adapter_model.safetensors")
    base = tensor_bytes(next(iter(sorted((tmp_path / "tiny").glob("*.safetensors")))))
    sync = summary["weight_sync"]
    assert sync["count"] == 4 and sync["checksum_failures"] == 0
    assert sync["bytes_per_update"] == adapter and sync["full_model_bytes"] == base and adapter < base / 5
    # Step 1: the adapter is a no-op (B = 0), so the base-model reference equals the policy.
    assert rows[0]["kl"] < 1e-7 and rows[0]["logprob_diff"] < 1e-5
    # Later steps sampled after syncs: the engine's logprobs are the learner's current policy's,
    # which has moved away from the previous versions (KL to the base grows).
    for r in rows[1:4]:
        assert r["logprob_diff"] < 1e-5 and r["kl"] > 1e-4, r

    assert not (final / "model.safetensors").exists() and (final / "adapter_config.json").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(final)("12+34=", return_tensors="pt").input_ids
    with torch.no_grad():
        adapted = AutoModelForCausalLM.from_pretrained(final)(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(final / "merged")(ids).logits
        start = AutoModelForCausalLM.from_pretrained(cfg.model.path)(ids).logits
    assert torch.allclose(adapted, merged, atol=1e-5) and (adapted - start).abs().max() > 1e-3

    # The step-2 checkpoint: the adapter (the engines start from base + it) and the learners' state
    # (adapter, its Adam moments, the schedule, RNG) without a copy of the frozen base.
    checkpoint = run_dir / "checkpoints" / "step_000002"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    assert sum(p.stat().st_size for p in (checkpoint / "policy").rglob("*") if p.is_file()) < base
    straight = adapter_tensors(final)
    resumed = run(cfg, log=lambda *_: None, resume=True).record
    assert resumed["status"] == "completed" and resumed["steps"] == 4
    assert metrics() == rows and len(rows) == 5  # 4 steps and the final row, bitwise
    got = adapter_tensors(final)
    assert set(got) == set(straight) and all(torch.equal(got[k], straight[k]) for k in straight)
