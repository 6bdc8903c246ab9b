"""Ray start-up: an embedded local cluster on 127.0.0.1, or an existing cluster by address."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from cluster.config import ClusterConfig

# Environment every actor gets: offline hubs, quiet libraries, no tokenizer thread pools.
ACTOR_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONWARNINGS": "ignore::FutureWarning",
}


@contextmanager
def ray_session(cfg: ClusterConfig, cpus_needed: int) -> Iterator[bool]:
    """Yields True when the cluster is the embedded loopback one (learners then rendezvous on 127.0.0.1)."""
    import ray

    if ray.is_initialized():  # a caller (tests, notebooks) already owns a session
        yield cfg.address is None
        return
    embedded = cfg.address is None
    if embedded:
        # The embedded cluster is private to this process and bound to loopback, so Ray's
        # token authentication (on by default since 2.5x) is switched off for it deliberately.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Logical CPUs: at least what the roles ask for. In synchronous mode the stages take
        # turns, so roles may share physical cores; each actor pins its own thread count.
        num_cpus = max(cfg.num_cpus or os.cpu_count() or 1, cpus_needed)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=cfg.dashboard,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 log_to_driver=False, runtime_env={"env_vars": ACTOR_ENV})
    else:
        ray.init(address=cfg.address, log_to_driver=False, runtime_env={"env_vars": ACTOR_ENV})
    try:
        yield embedded
    finally:
        ray.shutdown()
