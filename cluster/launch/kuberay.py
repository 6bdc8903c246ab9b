"""`tandem submit --backend kuberay`: a KubeRay `RayJob` manifest (ray.io/v1), preceded by a
ConfigMap that holds the resolved recipe (overrides applied), mounted into the head pod.

Shape: a small CPU head pod that runs the driver and hosts no roles (`num-cpus: "0"`), and one
worker group of `nodes` pods with `gpus_per_node` GPUs each, where the placement groups land.
The image must hold Tandem at /opt/tandem (docker/Dockerfile.gpu or Dockerfile.cpu).
Authentication: `rayClusterSpec.authOptions.mode: token`, so KubeRay generates the token and
gives it to head, workers and the submitter.
Field names were checked against KubeRay's RayJob CRD (ray.io_rayjobs.yaml, v1).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Optional

import yaml

from cluster.config import config_to_yaml
from cluster.launch import Job, LaunchError, run_args
from cluster.placement import build_plan, nodes_needed

WORKDIR = "/opt/tandem"  # where the images install Tandem
RECIPE_DIR = "/etc/tandem"
RAY_VERSION = "2.60.0"


def _container(name: str, image: str, cpus: int, memory: str, gpus: int, mounts: list) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    c = {"name": name, "image": image, "workingDir": WORKDIR,
         "resources": {"limits": limits, "requests": dict(limits)},
         "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}]}
    if mounts:
        c["volumeMounts"] = mounts
    return c


def manifest(job: Job, name: Optional[str] = None, image: Optional[str] = None, nodes: Optional[int] = None,
             gpus_per_node: Optional[int] = None, namespace: Optional[str] = None) -> list[dict[str, Any]]:
    """[ConfigMap, RayJob] as plain dicts (node/GPU counts: arguments, else the recipe, else the plan)."""
    c = job.cfg.cluster
    name = name or re.sub(r"[^a-z0-9-]", "-", f"tandem-{job.cfg.run.name}".lower())[:50].strip("-")
    image = image or c.image
    gpus = c.gpus_per_node if gpus_per_node is None else gpus_per_node
    count = nodes or c.num_nodes or nodes_needed(build_plan(job.cfg), gpus)
    meta = {"name": f"{name}-recipe", **({"namespace": namespace} if namespace else {})}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                  "data": {"recipe.yaml": config_to_yaml(job.cfg)}}
    mount = [{"name": "recipe", "mountPath": RECIPE_DIR, "readOnly": True}]
    head_pod = {"containers": [_container("ray-head", image, 2, "8Gi", 0, mount)],
                "volumes": [{"name": "recipe", "configMap": {"name": f"{name}-recipe"}}]}
    worker_pod = {"containers": [_container("ray-worker", image, c.cpus_per_node, c.memory_per_node, gpus, [])]}
    entry = f"cd {WORKDIR} && python {run_args(f'{RECIPE_DIR}/recipe.yaml', [])} cluster.address=auto"
    rayjob = {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {}),
                     "labels": {"app.kubernetes.io/name": "tandem"}},
        "spec": {
            "entrypoint": entry,
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": {
                "rayVersion": RAY_VERSION,
                "authOptions": {"mode": "token"},
                # The head runs the driver only: roles go to the workers' placement groups.
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                                  "template": {"spec": head_pod}},
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": count, "minReplicas": count, "maxReplicas": count,
                    "rayStartParams": {"num-cpus": str(c.cpus_per_node), **({"num-gpus": str(gpus)} if gpus else {})},
                    "template": {"spec": worker_pod},
                }],
            },
        },
    }
    return [config_map, rayjob]


def write(docs: list[dict[str, Any]], path: Optional[str] = None) -> Path:
    out = Path(path or f"{docs[1]['metadata']['name']}.yaml")
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def _kubectl(*args: str) -> str:
    try:
        done = subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError("`kubectl` not found: install it and point it at the cluster running KubeRay") from None
    if done.returncode:
        raise LaunchError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def apply(path: Path) -> str:
    return _kubectl("apply", "-f", str(path))


def status(name: str) -> str:
    return _kubectl("get", "rayjob", name, "-o", "jsonpath={.status.jobStatus} {.status.jobDeploymentStatus}")


def logs(name: str) -> str:
    # The submitter Job runs `ray job submit`, which streams the driver's output.
    return _kubectl("logs", f"job/{name}")


def stop(name: str) -> str:
    return _kubectl("delete", "rayjob", name)
