"""The collective weight transfer end to end (local Ray, gloo on loopback, 2 DeepSpeed ZeRO-3
ranks, 2 hf engines): the engines receive exactly the learners' weights, so a run trains to
bitwise the same weights as with the object store; the bytes moved per update are the model's
bytes in its training dtype; and a transfer that cannot run is refused before anything starts."""

import json

import pytest

from cluster.config import ConfigError
from cluster.run import run
from tests.e2e.checkpoints import same_weights
from tests.e2e.test_grpo_local import config


def test_collective_transfer_trains_exactly_as_the_object_store(ray_session, tmp_path):
    from safetensors.torch import load_file

    records = {}
    for kind in ("object_store", "collective"):
        cfg = config(tmp_path, "controller.steps=4", "controller.eval_every=0", f"run.name={kind}",
                     f"rollout.weight_transfer={kind}", "rollout.weight_bucket_mb=1", "rollout.num_workers=2",
                     "trainer.zero_stage=3")
        records[kind] = run(cfg, log=lambda *_: None).record
    coll = records["collective"]
    assert coll["status"] == "completed" and coll["weight_sync"]["transfer"] == "collective"
    assert coll["weight_sync"]["count"] == 4 and coll["weight_sync"]["checksum_failures"] == 0
    # Every step's rollouts came from the same weights: same rewards step by step, same result.
    rows = {k: [json.loads(line) for line in (tmp_path / "runs" / k / "metrics.jsonl").read_text().splitlines()]
            for k in records}
    rewards = {k: [r["reward_mean"] for r in v if "reward_mean" in r] for k, v in rows.items()}
    assert len(rewards["collective"]) == 4 and rewards["collective"] == rewards["object_store"]
    assert same_weights(tmp_path / "runs" / "collective" / "final", tmp_path / "runs" / "object_store" / "final")
    # One update = the model's parameters in fp32 (the tiny model ties its head to its embeddings).
    final = load_file(str(tmp_path / "runs" / "collective" / "final" / "model.safetensors"))
    model_bytes = sum(t.numel() * t.element_size() for name, t in final.items() if name != "lm_head.weight")
    assert coll["weight_sync"]["bytes_per_update"] == model_bytes > 2**20  # more than one 1 MB bucket


GPUS = ["cluster.gpus_per_learner=1", "cluster.gpus_per_engine=1"]


@pytest.mark.parametrize("overrides, carrier", [
    ([], "object_store"),  # CPU
    (GPUS, "collective"),  # disaggregated GPUs
    (GPUS + ["cluster.placement=colocated"], "ipc"),  # learner rank k and engine k on one GPU
    (GPUS + ["cluster.placement=colocated", "trainer.num_learners=1", "rollout.num_workers=2"],
     "object_store"),  # engine 1 has no learner on its GPU
    (GPUS + ["rollout.engine=vllm", "cluster.gpus_per_engine=2"], "object_store"),  # tensor-parallel vLLM
])
def test_auto_picks_the_carrier_the_placement_allows(tmp_path, overrides, carrier):
    from cluster.weights import resolve_weight_transfer

    assert resolve_weight_transfer(config(tmp_path, *overrides)) == carrier


def test_carriers_that_cannot_join_are_refused_naming_what_to_use(tmp_path):
    from cluster.weights import resolve_weight_transfer

    colocated = GPUS + ["cluster.placement=colocated"]
    with pytest.raises(ConfigError, match="'collective' with colocated GPUs: NCCL cannot join.*"
                                          "use rollout.weight_transfer=ipc"):
        resolve_weight_transfer(config(tmp_path, *colocated, "rollout.weight_transfer=collective"))
    with pytest.raises(ConfigError, match=r"'ipc' needs a learner rank on every engine's GPU \(rollout.num_workers=3"):
        resolve_weight_transfer(config(tmp_path, *colocated, "rollout.weight_transfer=ipc", "rollout.num_workers=3"))
    with pytest.raises(ConfigError, match="'ipc' into the vllm engine is not built yet"):
        resolve_weight_transfer(config(tmp_path, *colocated, "rollout.weight_transfer=ipc", "rollout.engine=vllm"))


@pytest.mark.parametrize("overrides, message", [
    (["rollout.engine=vllm", "cluster.gpus_per_engine=2", "cluster.gpus_per_learner=1"],
     "'collective' into a tensor-parallel vllm engine"),
    (["cluster.gpus_per_learner=1"], "needs the learners and the engines on the same kind of device"),
    (["rollout.weight_transfer=ipc"], "'ipc' needs learners and engines on shared GPUs"),
])
def test_a_transfer_that_cannot_run_is_refused_before_anything_starts(tmp_path, overrides, message):
    cfg = config(tmp_path, "rollout.weight_transfer=collective", *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # no run directory: nothing started
