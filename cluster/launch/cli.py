"""`tandem submit | status | logs | stop`: the job commands, one set of verbs for every backend."""

from __future__ import annotations

import argparse
import sys

from cluster.config import ConfigError
from cluster.launch import Job, LaunchError

BACKENDS = ("ray", "slurm", "kuberay")

SUBMIT_HELP = """Submit a recipe to a cluster. The recipe (with overrides) is validated here first.

  --backend ray      submit to a Ray cluster's job API (the project directory is uploaded as
                     the working dir); prints the job id. --wait blocks until it ends.
                     Token auth: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
                     is sent as the cluster's token.
  --backend slurm    write an sbatch script (Ray head on the first node, workers on the rest,
                     wait for all, then run the recipe); --submit runs sbatch on it.
  --backend kuberay  write a RayJob manifest (plus the recipe as a ConfigMap) for
                     `kubectl apply -f`; --submit applies it.

Node and GPU counts (slurm, kuberay): --nodes/--gpus-per-node, else cluster.num_nodes /
cluster.gpus_per_node in the recipe, else as many nodes as the placement plan's GPUs need.

examples:
  tandem submit recipes/quickstart.yaml controller.steps=50 --backend ray --address http://HEAD:8265
  tandem submit recipes/gsm8k.yaml --backend slurm --nodes 4 --gpus-per-node 8 --partition gpu --submit
  tandem submit recipes/gsm8k.yaml --backend kuberay --image registry/tandem:gpu -o rayjob.yaml"""


def add_job_commands(sub) -> None:
    submit = sub.add_parser("submit", help="submit a recipe to a Ray cluster, Slurm or KubeRay",
                            description=SUBMIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    submit.add_argument("recipe", help="YAML recipe file")
    submit.add_argument("overrides", nargs="*", help="section.key=value overrides")
    submit.add_argument("--backend", choices=BACKENDS, required=True)
    submit.add_argument("--address", help="(ray) job API address, default $RAY_API_SERVER_ADDRESS or "
                                          "http://127.0.0.1:8265")
    submit.add_argument("--working-dir", help="(ray) directory uploaded as the job's working dir "
                                              "(default: this Tandem checkout)")
    submit.add_argument("--job-id", help="(ray) submission id to use instead of a generated one")
    submit.add_argument("--wait", action="store_true", help="(ray) wait until the job ends; exit 1 unless it succeeded")
    submit.add_argument("--timeout", type=float, default=24 * 3600, help="(ray) seconds --wait waits")
    submit.add_argument("--nodes", type=int, help="(slurm, kuberay) nodes / worker pods")
    submit.add_argument("--gpus-per-node", type=int, help="(slurm, kuberay) GPUs per node")
    submit.add_argument("--cpus-per-node", type=int, help="(slurm) CPUs per node")
    submit.add_argument("--partition", help="(slurm) partition")
    submit.add_argument("--account", help="(slurm) account")
    submit.add_argument("--time", default="04:00:00", help="(slurm) time limit, default 04:00:00")
    submit.add_argument("--image", help="(kuberay) container image, default cluster.image")
    submit.add_argument("--namespace", help="(kuberay) Kubernetes namespace")
    submit.add_argument("-o", "--output", help="(slurm, kuberay) where to write the script / manifest")
    submit.add_argument("--submit", action="store_true", help="(slurm) run sbatch; (kuberay) kubectl apply")
    submit.set_defaults(fn=_cmd_submit)

    for verb, text in (("status", "print a submitted job's state"), ("logs", "print a submitted job's output"),
                       ("stop", "stop a submitted job")):
        p = sub.add_parser(verb, help=f"{text} (ray: job id; slurm: job id; kuberay: RayJob name)",
                           description=f"{text[0].upper()}{text[1:]}. ray: through the job API; slurm: squeue/sacct, "
                                       "the job's output file, scancel; kuberay: kubectl on the RayJob.")
        p.add_argument("job", help="job id (ray, slurm) or RayJob name (kuberay)")
        p.add_argument("--backend", choices=BACKENDS, default="ray", help="default: ray")
        p.add_argument("--address", help="(ray) job API address")
        if verb == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="(ray) stream until the job ends")
        p.set_defaults(fn=_cmd_job, verb=verb)


def _cmd_submit(args: argparse.Namespace) -> int:
    try:
        job = Job.load(args.recipe, args.overrides)
        return {"ray": _submit_ray, "slurm": _submit_slurm, "kuberay": _submit_kuberay}[args.backend](job, args)
    except (ConfigError, LaunchError, TimeoutError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2


def _submit_ray(job: Job, args) -> int:
    from cluster.launch import ray_job

    job_id = ray_job.submit(job, args.address, args.working_dir, args.job_id)
    print(f"submitted Ray job {job_id} to {ray_job.job_api_address(args.address)}")
    if not args.wait:
        print(f"follow it: tandem logs {job_id} --follow --address {ray_job.job_api_address(args.address)}")
        return 0
    state = ray_job.wait(job_id, args.address, args.timeout)
    print(f"job {job_id}: {state}")
    if state != "SUCCEEDED":
        print(ray_job.logs(job_id, args.address)[-4000:], file=sys.stderr)
        return 1
    return 0


def _submit_slurm(job: Job, args) -> int:
    from cluster.launch import slurm

    shape = slurm.shape_for(job, args.nodes, args.gpus_per_node, args.cpus_per_node, partition=args.partition,
                            account=args.account, time=args.time)
    path = slurm.write(job, shape, args.output)
    print(f"wrote {path} ({shape.nodes} node(s), {shape.gpus_per_node} GPU(s) each)")
    if args.submit:
        print(f"submitted Slurm job {slurm.sbatch(path)}")
    else:
        print(f"submit it: sbatch {path}")
    return 0


def _submit_kuberay(job: Job, args) -> int:
    from cluster.launch import kuberay

    docs = kuberay.manifest(job, image=args.image, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                            namespace=args.namespace)
    path = kuberay.write(docs, args.output)
    name = docs[1]["metadata"]["name"]
    print(f"wrote {path} (RayJob {name}, {docs[1]['spec']['rayClusterSpec']['workerGroupSpecs'][0]['replicas']} "
          "worker pod(s))")
    if args.submit:
        print(kuberay.apply(path).strip())
    else:
        print(f"submit it: kubectl apply -f {path}")
    return 0


def _cmd_job(args: argparse.Namespace) -> int:
    try:
        out = _job_verb(args)
    except (LaunchError, TimeoutError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    if out:
        print(out, end="" if out.endswith("\n") else "\n")
    return 0


def _job_verb(args: argparse.Namespace) -> str:
    if args.backend == "ray":
        from cluster.launch import ray_job

        if args.verb == "status":
            return ray_job.status(args.job, args.address)
        if args.verb == "logs":
            return ray_job.logs(args.job, args.address, follow=args.follow)
        return f"stop requested for {args.job}" if ray_job.stop(args.job, args.address) else \
            f"job {args.job} had already ended"
    if args.backend == "slurm":
        from cluster.launch import slurm

        if args.verb == "status":
            return slurm.status(args.job)
        if args.verb == "logs":
            return slurm.log_path(args.job).read_text()
        slurm.stop(args.job)
        return f"scancel {args.job}"
    from cluster.launch import kuberay

    return {"status": kuberay.status, "logs": kuberay.logs, "stop": kuberay.stop}[args.verb](args.job)
