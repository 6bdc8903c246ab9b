"""`tandem submit --backend ray` against a real `ray start --head` on loopback, with Ray's
token authentication on: submit, wait for success, fetch the logs; a token-less client is
refused with an error that says what to do."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import requires
from tests.e2e.test_existing_cluster import only_loopback, stop_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)

# A whole run, as small as it gets: tiny random model (no warm-up), one step, one learner.
TINY_RUN = ["model.path=.cache/tandem/submit-test", "data.train_path=.cache/tandem/submit-test/data/train.jsonl",
            "data.eval_path=.cache/tandem/submit-test/data/eval.jsonl", "model.bootstrap_spec.hidden_size=64",
            "model.bootstrap_spec.num_heads=2", "model.bootstrap_spec.sft_max_steps=0",
            "model.bootstrap_spec.num_train_prompts=64", "model.bootstrap_spec.num_eval_prompts=8",
            "model.bootstrap_spec.sft_val_prompts=8", "controller.steps=1", "controller.prompts_per_step=4",
            "algorithm.group_size=4", "controller.eval_prompts=8", "controller.progress=false",
            "trainer.num_learners=1", "rollout.threads_per_worker=1", "run.name=submitted"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head():
    """A one-node Ray cluster with its job API on 127.0.0.1 and token auth on (a fresh token,
    passed by environment: ~/.ray/auth_token is never written)."""
    port, dash = free_port(), free_port()
    token = secrets.token_hex(16)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: unix socket paths must fit 107 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "PATH": f"{BIN}:{os.environ['PATH']}"}
    start = [f"{BIN}/ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=3",
             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--temp-dir={temp}", "--disable-usage-stats"]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield f"http://127.0.0.1:{dash}", token
    finally:
        stop_cluster(temp, port)
        shutil.rmtree(temp, ignore_errors=True)


def tandem(*args, token=None, home=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)  # no ~/.ray/auth_token of the machine's user leaks into the test
    if token:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run([f"{BIN}/tandem", *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@requires(only_loopback(), "needs a loopback-only network namespace (make test provides one)")
def test_ray_job_round_trip_with_token_auth(head, tmp_path):
    url, token = head
    recipe = os.path.join("recipes", "quickstart.yaml")

    refused = tandem("submit", recipe, *TINY_RUN, "--backend", "ray", "--address", url, home=tmp_path)
    assert refused.returncode == 2
    assert "requires an authentication token" in refused.stderr and "RAY_AUTH_TOKEN" in refused.stderr

    done = tandem("submit", recipe, *TINY_RUN, "--backend", "ray", "--address", url, "--job-id", "tandem-test-1",
                  "--wait", token=token, home=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tandem-test-1" in done.stdout and "SUCCEEDED" in done.stdout

    status = tandem("status", "tandem-test-1", "--address", url, token=token, home=tmp_path)
    assert status.returncode == 0 and status.stdout.strip() == "SUCCEEDED"
    logs = tandem("logs", "tandem-test-1", "--address", url, token=token, home=tmp_path)
    assert logs.returncode == 0
    assert "held-out accuracy (8 prompts)" in logs.stdout and "1 steps" in logs.stdout

    stopped = tandem("stop", "tandem-test-1", "--address", url, token=token, home=tmp_path)
    assert stopped.returncode == 0 and "had already ended" in stopped.stdout

    unknown = tandem("status", "no-such-job", "--address", url, token=token, home=tmp_path)
    assert unknown.returncode == 2 and "no-such-job" in unknown.stderr
