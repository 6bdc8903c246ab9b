"""Multi-node on one machine: a three-node Ray cluster (`ray.cluster_utils.Cluster`, all on
127.0.0.1) whose nodes carry custom resources, and a GRPO step whose roles land on the nodes
the placement plan pins them to: learners on one node, the rollout engine on another, the
reward worker on the head. Also: a plan the cluster cannot hold fails at once, naming what was
asked and what exists, and leaves nothing reserved.

The cluster and the driver run in a subprocess (`drive`): this pytest process may already hold
a Ray session (the session fixture), and a driver belongs to one cluster at a time."""

import json
import os
import shutil
import subprocess
import sys
import tempfile


from tests.conftest import requires
from tests.e2e.test_existing_cluster import only_loopback, stop_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PINNED = "cluster.resources={learner: {learner_host: 1}, rollout: {rollout_host: 1}, reward: {reward_host: 1}}"


def overrides(model: str, out: str) -> list[str]:
    return [f"model.path={model}", f"data.train_path={model}/data/train.jsonl",
            f"data.eval_path={model}/data/eval.jsonl", f"run.output_dir={out}/runs", "run.name=multinode",
            "model.bootstrap_spec.hidden_size=64", "model.bootstrap_spec.num_heads=2",
            "model.bootstrap_spec.sft_max_steps=0", "model.bootstrap_spec.num_train_prompts=64",
            "model.bootstrap_spec.num_eval_prompts=8", "model.bootstrap_spec.sft_val_prompts=8",
            "controller.steps=1", "controller.prompts_per_step=4", "algorithm.group_size=4",
            "controller.eval_prompts=8", "controller.progress=false", "rollout.threads_per_worker=1",
            "trainer.num_learners=2", "trainer.zero_stage=2", PINNED]


def drive(out: str) -> None:
    """Subprocess body: start the cluster, run one step on it, write what happened to out/result.json."""
    from ray.cluster_utils import Cluster

    from cluster.config import load_config
    from cluster.launch.wait_nodes import wait_for_nodes
    from cluster.placement import PlacementError
    from cluster.rl.controller import Controller
    from cluster.weights import WeightSync
    from cluster.rl.progress import Progress
    from cluster.roles import start_roles
    from cluster.run import prepare_inputs, prepare_model
    from cluster.rundir import RunDir
    from cluster.runtime import ray_session

    recipe = os.path.join(ROOT, "recipes", "quickstart.yaml")
    ip = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"reward_host": 1}, **ip})
    try:
        learner = cluster.add_node(num_cpus=2, resources={"learner_host": 2}, **ip)
        rollout = cluster.add_node(num_cpus=1, resources={"rollout_host": 1}, **ip)
        # The Slurm script's barrier, on a real cluster.
        result = {"nodes_up": wait_for_nodes(cluster.address, 3, timeout_s=60),
                  "expected": {"learner": learner.node_id, "rollout": rollout.node_id,
                               "reward": cluster.head_node.node_id}}
        cfg = load_config(recipe, [*overrides(f"{out}/tiny", out), f"cluster.address={cluster.address}"])
        prepare_model(cfg, log=lambda *_: None)
        train, evals = prepare_inputs(cfg)
        with ray_session(cfg.cluster, 0) as loopback:
            import ray

            # Three learners pinned to a node with learner_host: 2 cannot fit: a clear error at once.
            too_big = load_config(recipe, [*overrides(f"{out}/tiny", out), "trainer.num_learners=3",
                                           "controller.prompts_per_step=3"])
            try:
                start_roles(too_big, loopback)
            except PlacementError as exc:
                result["error"] = str(exc)
            result["free_after_error"] = ray.available_resources()
            roles = start_roles(cfg, loopback)
            try:
                result["actual"] = roles.actor_nodes()
                weights = WeightSync(cfg, roles.learners, roles.rollout, loopback)
                summary = Controller(cfg, roles, RunDir.create(cfg), train, evals, weights).run(Progress(False, lambda *_: None))
                result["status"], result["steps"] = summary["status"], summary["steps"]
            finally:
                roles.shutdown()
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump(result, f)
    finally:
        cluster.shutdown()


@requires(only_loopback(), "needs a loopback-only network namespace (make test provides one); "
                                                "outside it Ray nodes advertise the machine's routable address")
def test_roles_land_on_planned_nodes(tmp_path):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    # RAY_TMPDIR keeps this cluster's session files (and its ray_current_cluster) out of /tmp/ray.
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    code = f"from tests.e2e.test_multinode import drive; drive({str(tmp_path)!r})"
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=400)
    finally:
        stop_cluster(temp, -1)  # whatever the driver left behind if it died
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["nodes_up"] == 3
    expected, actual = result["expected"], result["actual"]
    assert len(set(expected.values())) == 3  # three distinct nodes
    assert actual["learner"] == [expected["learner"]] * 2
    assert actual["rollout"] == [expected["rollout"]]
    assert actual["reward"] == [expected["reward"]]
    assert result["status"] == "completed" and result["steps"] == 1

    err = result["error"]
    assert "cannot fit the placement plan" in err
    assert "learner_host: the plan reserves 3, the cluster has 2 in total" in err
    assert "trainer.num_learners" in err and err.count("127.0.0.1 (") == 3  # each node and what it has
    assert result["free_after_error"].get("learner_host") == 2  # nothing was reserved by the failed plan
