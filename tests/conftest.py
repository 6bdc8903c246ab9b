"""Shared fixtures: a local Ray on 127.0.0.1 and tiny models built on the spot (no hub)."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the test cluster is private and on loopback
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

try:
    from cluster.config import BootstrapConfig
except ImportError:  # the GPU machine's image lacks pydantic: only tests/gpu (torch + transformers) runs there
    BootstrapConfig = None

# CI runs as root in a loopback-only network namespace: there, a test whose environment is
# missing must fail, not skip, so that a green run means it ran. Elsewhere it skips, saying why.
IN_CI = os.environ.get("CI", "").lower() == "true"


def requires(ok: bool, reason: str):
    """Mark a test that needs root, namespaces or a loopback-only network: skipped without it,
    failed without it under CI=true."""
    return pytest.mark.requires(ok=ok, reason=reason)


def pytest_configure(config):
    config.addinivalue_line("markers", "requires(ok, reason): needs an environment (fails under CI=true without it)")


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU (bench/gpu_check.py and `pytest -m gpu tests/gpu` run on a GPU host)")
    for mark in item.iter_markers("requires"):
        if not mark.kwargs["ok"]:
            if IN_CI:
                pytest.fail(f"CI=true and this machine lacks what the test needs: {mark.kwargs['reason']}")
            pytest.skip(mark.kwargs["reason"])

TINY = None if BootstrapConfig is None else BootstrapConfig(hidden_size=64, num_layers=2, num_heads=2, sft_max_steps=0, num_train_prompts=512,
                       num_eval_prompts=64, sft_val_prompts=16)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from cluster.runtime import ACTOR_ENV

    ray.init(address="local", num_cpus=6, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": ACTOR_ENV})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised tiny Llama + char tokenizer + task data (no SFT), saved in HF layout."""
    from trainer.bootstrap import ensure_tiny_model

    path = tmp_path_factory.mktemp("models") / "tiny-random"
    ensure_tiny_model(path, TINY, seed=0, log=lambda *_: None)
    return str(path)
