"""`tandem submit --backend slurm | kuberay`: the generated sbatch script (bash -n, structure for
1 and N nodes, quoting of overrides) and the RayJob manifest (checked against the RayJob schema's
field names). No Slurm or Kubernetes runs here; the Ray backend's round trip is test_submit_ray.py."""

import json
import os
import stat
import subprocess
import sys

import jsonschema
import pytest
import yaml

from cluster.cli import main
from cluster.config import Config, load_config
from cluster.launch import Job, kuberay, slurm

RECIPE = """
run: {name: grpo-big}
model: {path: /models/x}
data: {train_path: a.jsonl, eval_path: b.jsonl}
rollout: {num_workers: 2, threads_per_worker: 1}
trainer: {num_learners: 4}
controller: {prompts_per_step: 16}
cluster: {gpus_per_learner: 1, gpus_per_engine: 1, gpus_per_node: 4}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(RECIPE)
    return path


def script(recipe, *overrides, **shape) -> str:
    job = Job.load(recipe, list(overrides))
    return slurm.render(job, slurm.shape_for(job, **shape))


def bash_n(text: str, tmp_path) -> None:
    path = tmp_path / "check.sbatch"
    path.write_text(text)
    done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_slurm_one_node(recipe, tmp_path):
    text = script(recipe, nodes=1, gpus_per_node=8)
    bash_n(text, tmp_path)
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --nodes=1\n" in text and "#SBATCH --gpus-per-node=8\n" in text
    assert text.count(" start --head ") == 1 and "start --address=" not in text  # no workers
    assert "wait_nodes --address \"$ADDRESS\" --nodes 1 " in text
    assert "export RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN=" in text
    last = text.strip().splitlines()[-1]
    assert last == f"\"$PYTHON\" -m cluster.cli run {recipe} cluster.address=\"$ADDRESS\""


def test_slurm_n_nodes_from_the_plan(recipe, tmp_path):
    # 4 learner GPUs + 2 engine GPUs = 6 GPUs; 4 per node (cluster.gpus_per_node) -> 2 nodes.
    text = script(recipe)
    bash_n(text, tmp_path)
    assert "#SBATCH --nodes=2\n" in text and "#SBATCH --gpus-per-node=4\n" in text
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if " start --head " in line)
    loop = lines.index("for ((i = 1; i < ${#NODES[@]}; i++)); do")
    worker = next(i for i, line in enumerate(lines) if " start --address=\"$ADDRESS\"" in line)
    wait_all = next(i for i, line in enumerate(lines) if "--nodes 2 --timeout" in line)
    run = next(i for i, line in enumerate(lines) if "-m cluster.cli run" in line)
    assert head < loop < worker < wait_all < run  # head, then workers, wait for all, then the recipe
    assert "--num-gpus=4" in lines[head] and "--num-gpus=4" in lines[worker]
    assert lines[head].endswith("--block &") and lines[worker].endswith("--block &")


def test_slurm_flags_beat_recipe(recipe, tmp_path):
    text = script(recipe, nodes=5, gpus_per_node=8, cpus_per_node=32, partition="gpu", account="rl", time="1:00:00")
    bash_n(text, tmp_path)
    for line in ("--nodes=5", "--gpus-per-node=8", "--cpus-per-task=32", "--partition=gpu", "--account=rl",
                 "--time=1:00:00"):
        assert f"#SBATCH {line}\n" in text
    assert "--nodes 5 --timeout" in text


def test_slurm_overrides_reach_the_run_intact(recipe, tmp_path):
    """Run the script's last line with a stand-in python that prints its argv."""
    text = script(recipe, "run.name=two words", "trainer.lr=3e-5", nodes=1, gpus_per_node=4)
    dump = tmp_path / "argv"
    dump.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    dump.chmod(dump.stat().st_mode | stat.S_IEXEC)
    last = text.strip().splitlines()[-1]
    done = subprocess.run(["bash", "-c", f"PYTHON={dump}; ADDRESS=10.1.2.3:6379; {last}"], capture_output=True,
                          text=True, check=True)
    assert json.loads(done.stdout) == ["-m", "cluster.cli", "run", str(recipe), "run.name=two words",
                                       "trainer.lr=3e-5", "cluster.address=10.1.2.3:6379"]


def test_slurm_cli_writes_script_and_needs_sbatch_to_submit(recipe, tmp_path, capsys, monkeypatch):
    out = tmp_path / "job.sbatch"
    assert main(["submit", str(recipe), "--backend", "slurm", "-o", str(out), "controller.steps=3"]) == 0
    assert "controller.steps=3" in out.read_text() and os.access(out, os.X_OK)
    assert f"sbatch {out}" in capsys.readouterr().out
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["submit", str(recipe), "--backend", "slurm", "-o", str(out), "--submit"]) == 2
    assert "`sbatch` not found" in capsys.readouterr().err


def test_submit_validates_the_recipe_first(recipe, capsys):
    assert main(["submit", str(recipe), "--backend", "slurm", "trainer.lrr=1"]) == 2
    assert "unknown key 'trainer.lrr': did you mean 'lr'?" in capsys.readouterr().err


# ---- KubeRay -------------------------------------------------------------------------------------
# The RayJob fields Tandem writes, with each level's allowed keys as named in KubeRay's CRD
# (ray-operator/config/crd/bases/ray.io_rayjobs.yaml, ray.io/v1, read at kuberay commit feeaf72):
# a misspelt or invented field fails `additionalProperties: false`.

def obj(props: dict, required=(), allowed=()) -> dict:
    return {"type": "object", "properties": {**{k: {} for k in allowed}, **props}, "required": list(required),
            "additionalProperties": False}


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
STR_MAP = {"type": "object", "additionalProperties": STR}
QUANTITY = {"anyOf": [INT, {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"}]}
CONTAINER = obj({
    "name": STR, "image": STR, "workingDir": STR,
    "resources": obj({"limits": {"type": "object", "additionalProperties": QUANTITY},
                      "requests": {"type": "object", "additionalProperties": QUANTITY}}),
    "env": {"type": "array", "items": obj({"name": STR, "value": STR}, ["name"])},
    "volumeMounts": {"type": "array", "items": obj({"name": STR, "mountPath": STR, "readOnly": BOOL},
                                                   ["name", "mountPath"])},
}, ["name"])
POD_TEMPLATE = obj({"spec": obj({
    "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
    "volumes": {"type": "array", "items": obj({"name": STR, "configMap": obj({"name": STR})}, ["name"])},
}, ["containers"])}, allowed=["metadata"])
HEAD = obj({"rayStartParams": STR_MAP, "template": POD_TEMPLATE}, ["template"],
           allowed=["enableIngress", "headService", "ingressOptions", "labels", "resources", "serviceType"])
WORKER = obj({"groupName": STR, "replicas": INT, "minReplicas": INT, "maxReplicas": INT,
              "rayStartParams": STR_MAP, "template": POD_TEMPLATE},
             ["groupName", "maxReplicas", "minReplicas", "template"],
             allowed=["idleTimeoutSeconds", "labels", "numOfHosts", "priority", "resources", "scaleStrategy",
                      "suspend"])
RAY_CLUSTER = obj({"rayVersion": STR, "authOptions": obj({"mode": {"enum": ["disabled", "token"]}},
                                                         allowed=["secretName", "enableK8sTokenAuth"]),
                   "headGroupSpec": HEAD, "workerGroupSpecs": {"type": "array", "items": WORKER}},
                  ["headGroupSpec"],
                  allowed=["autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
                           "headServiceAnnotations", "historyServerOptions", "managedBy", "networkPolicy", "suspend",
                           "tlsOptions", "upgradeStrategy"])
RAYJOB = obj({
    "apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"},
    "metadata": obj({"name": STR, "namespace": STR, "labels": STR_MAP}, ["name"]),
    "spec": obj({"entrypoint": STR, "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "SidecarMode",
                                                                 "InteractiveMode"]},
                 "shutdownAfterJobFinishes": BOOL, "ttlSecondsAfterFinished": INT, "rayClusterSpec": RAY_CLUSTER},
                allowed=["activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy",
                         "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy",
                         "metadata", "preRunningDeadlineSeconds", "runtimeEnvYAML", "submitterConfig",
                         "submitterPodTemplate", "suspend"]),
}, ["apiVersion", "kind", "metadata", "spec"])


def test_rayjob_manifest_matches_the_schema(recipe):
    job = Job.load(recipe, ["trainer.lr=3e-5"])
    config_map, rayjob = kuberay.manifest(job, image="registry.example/tandem:gpu", namespace="rl")
    jsonschema.validate(rayjob, RAYJOB)
    spec = rayjob["spec"]
    assert rayjob["metadata"] == {"name": "tandem-grpo-big", "namespace": "rl",
                                  "labels": {"app.kubernetes.io/name": "tandem"}}
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2  # 6 GPUs, 4 per node
    worker = workers["template"]["spec"]["containers"][0]
    assert worker["image"] == "registry.example/tandem:gpu" and worker["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert workers["rayStartParams"] == {"num-cpus": "8", "num-gpus": "4"}
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver, roles go to workers
    mount = head["template"]["spec"]["containers"][0]["volumeMounts"][0]
    assert head["template"]["spec"]["volumes"][0]["configMap"]["name"] == config_map["metadata"]["name"]
    assert spec["entrypoint"] == (f"cd /opt/tandem && python -m cluster.cli run {mount['mountPath']}/recipe.yaml "
                                  "cluster.address=auto")
    # The ConfigMap holds the resolved recipe: overrides applied, nothing lost.
    shipped = Config.model_validate(yaml.safe_load(config_map["data"]["recipe.yaml"]))
    assert shipped == job.cfg and shipped.trainer.lr == pytest.approx(3e-5)
    assert config_map["apiVersion"] == "v1" and config_map["kind"] == "ConfigMap"


def test_schema_catches_a_wrong_field(recipe):
    _, rayjob = kuberay.manifest(Job.load(recipe))
    rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="'replica' was unexpected"):
        jsonschema.validate(rayjob, RAYJOB)


def test_kuberay_cli_writes_a_manifest(recipe, tmp_path, capsys):
    out = tmp_path / "job.yaml"
    assert main(["submit", str(recipe), "--backend", "kuberay", "--nodes", "3", "--gpus-per-node", "2",
                 "-o", str(out)]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    jsonschema.validate(docs[1], RAYJOB)
    assert docs[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert f"kubectl apply -f {out}" in capsys.readouterr().out


def test_cpu_recipe_needs_one_node(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("model: {path: x}\ndata: {train_path: a, eval_path: b}\n")
    _, rayjob = kuberay.manifest(Job.load(path))
    group = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 1 and "nvidia.com/gpu" not in group["template"]["spec"]["containers"][0]["resources"][
        "limits"]
    assert load_config(path).cluster.image == rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]
