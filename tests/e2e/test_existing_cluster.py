"""`cluster.address`: join a Ray cluster started separately (`ray start --head`) instead of embedding one."""

import json
import os
import socket
import subprocess
import sys
import tempfile

import psutil

from tests.conftest import requires

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def only_loopback() -> bool:
    return set(psutil.net_if_addrs()) <= {"lo"}


@requires(only_loopback(), "needs a loopback-only network namespace (make test provides one); "
                                                "outside it Ray advertises the machine's routable address")
def test_run_joins_existing_cluster(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    start = [f"{BIN}/ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=4",
             "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        model = tmp_path / "tiny"
        cmd = [f"{BIN}/tandem", "run", os.path.join(ROOT, "recipes", "quickstart.yaml"),
               f"cluster.address=127.0.0.1:{port}", f"model.path={model}",
               f"data.train_path={model}/data/train.jsonl", f"data.eval_path={model}/data/eval.jsonl",
               f"run.output_dir={tmp_path}/runs", "model.bootstrap_spec.sft_max_steps=5",
               "model.bootstrap_spec.num_train_prompts=100", "model.bootstrap_spec.sft_val_prompts=16",
               "model.bootstrap_spec.num_eval_prompts=16", "controller.steps=1", "controller.prompts_per_step=4",
               "algorithm.group_size=4", "controller.eval_prompts=16", "controller.progress=false"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((tmp_path / "runs" / "quickstart" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["weight_sync"]["count"] == 1
    finally:
        stop_cluster(temp, port)


def stop_cluster(temp: str, port: int) -> None:
    """Stop only the cluster this test started (`ray stop` would stop every Ray on the machine):
    its processes name the temp dir or the port; their agents are their children."""
    marks = (temp, f"127.0.0.1:{port}")
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks)]
    procs = {q for p in roots for q in [p, *p.children(recursive=True)]}
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs), timeout=30)
