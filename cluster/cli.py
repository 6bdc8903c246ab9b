"""`tandem` command line: run a recipe here, submit it to a cluster (Ray job API, Slurm,
KubeRay) and follow submitted jobs, list algorithms."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from cluster.config import ConfigError, load_config
from cluster.placement import PlacementError

DESCRIPTION = """Distributed RL post-training on Ray: the same recipe on a laptop or a cluster.

  tandem run RECIPE [k=v ...]                       run here (or on cluster.address)
  tandem run RECIPE --dry-run                       print the placement plan only
  tandem submit RECIPE [k=v ...] --backend ray      submit to a Ray cluster's job API
  tandem submit RECIPE --backend slurm [--submit]   write (and sbatch) a Slurm script
  tandem submit RECIPE --backend kuberay            write a KubeRay RayJob manifest
  tandem status|logs|stop JOB --backend ...         follow a submitted job
  tandem report RUN_DIR                             plots and report.html of a run
  tandem eval CHECKPOINT --data FILE --verifier V   pass@1 / pass@k of any HF checkpoint
Run `tandem COMMAND --help` for each command's options."""

USAGE_RUN = """Run a recipe: the embedded local Ray on 127.0.0.1, or the cluster at cluster.address.
The roles' resources are reserved as Ray placement groups first (--dry-run prints the plan);
a plan the cluster cannot hold fails before any actor starts, naming what was asked and what exists.
Overrides are dotted keys: tandem run recipes/quickstart.yaml trainer.lr=3e-5 controller.steps=10"""


def _cmd_run(args: argparse.Namespace) -> int:
    from rollout.data import DataError
    from rollout.types import EngineError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_config(args.recipe, args.overrides)
        if args.print_config:
            from cluster.config import config_to_yaml

            print(config_to_yaml(cfg))
            return 0
        if args.dry_run:
            return _dry_run(cfg)
        from cluster.run import run

        signal.signal(signal.SIGTERM, _interrupt)  # schedulers stop jobs with SIGTERM, then SIGKILL
        summary = run(cfg, resume=args.resume)
    except (ConfigError, DataError, EngineError, PlacementError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    print(f"\nrun directory: {summary.run_dir}\n{summary.headline}")
    if args.report:
        from cluster.report import write_report

        print(f"report: {write_report(summary.run_dir)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from cluster.evaluation import EvalSpec, evaluate, write_results
    from rollout.data import DataError
    from rollout.types import EngineError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    chat = {"auto": None, "true": True, "false": False}[args.chat_template]
    spec = EvalSpec(args.checkpoint, args.data, args.verifier, args.samples, args.temperature, args.engine,
                    args.max_new_tokens, args.limit, args.seed, args.prompt_key, args.answer_key, args.system_prompt,
                    chat, args.dtype)
    try:
        from reward.verifiers import VERIFIERS

        VERIFIERS.entry(args.verifier)  # unknown names fail before a model loads, listing the valid ones
        report = evaluate(spec)
    except (ValueError, KeyError, DataError, EngineError) as exc:
        print(f"tandem: error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    path = write_results(report, args.out)
    print(f"{report.table()}\nresults: {path}")
    return 0


def _add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="pass@1 and pass@k of a Hugging Face checkpoint on a prompt set")
    ev.add_argument("checkpoint", help="a Hugging Face checkpoint directory (e.g. runs/NAME/final)")
    ev.add_argument("--data", required=True, help="prompts: .jsonl, .parquet, .csv or a save_to_disk directory")
    ev.add_argument("--verifier", required=True, help="a registered verifier (tandem algorithms lists them)")
    ev.add_argument("--samples", type=int, default=1, help="responses per prompt (pass@k for k up to it)")
    ev.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    ev.add_argument("--engine", choices=("hf", "vllm"), default="hf")
    ev.add_argument("--max-new-tokens", type=int, default=512)
    ev.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--prompt-key", default="prompt")
    ev.add_argument("--answer-key", default="answer")
    ev.add_argument("--system-prompt", default=None)
    ev.add_argument("--chat-template", choices=("auto", "true", "false"), default="auto",
                    help="auto: the tokenizer's chat template when it has one")
    ev.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ev.add_argument("--out", default=None, help="JSON results file (default: CHECKPOINT/eval/<data stem>.json)")
    ev.set_defaults(fn=_cmd_eval)


def _cmd_report(args: argparse.Namespace) -> int:
    from cluster.report import ReportError, write_report

    try:
        print(f"report: {write_report(args.run_dir, args.out)}")
    except ReportError as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _dry_run(cfg) -> int:
    """Print what the run would reserve, start nothing (no Ray, no model)."""
    from cluster.placement import build_plan
    from cluster.shapes import learner_options

    from cluster.trackers import check_trackers
    from cluster.weights import resolve_weight_transfer

    opts = learner_options(cfg)
    check_trackers(cfg)
    print(build_plan(cfg).describe())
    if cfg.run.mode == "rl":
        from cluster.run import check_reward

        print(f"weight transfer: {resolve_weight_transfer(cfg)}")
        check_reward(cfg, log=print)  # the reward model's files and the code sandbox, on this machine
    print(f"learners: ZeRO-{opts.zero_stage}, micro-batch {opts.micro_batch_size} x {opts.grad_accum_steps} "
          f"accumulation steps per rank; learning rate {opts.lr:g}, {opts.schedule.describe()}; cluster: "
          f"{cfg.cluster.address or 'embedded local Ray on 127.0.0.1'}")
    return 0


def _cmd_algorithms(args: argparse.Namespace) -> int:
    from cluster.rl.budget import BUDGETS, CURRICULA, DOWNSAMPLERS
    from reward.verifiers import VERIFIERS
    from rollout.envs.base import ENVS, TOOLS
    from rollout.envs.spec import load_builtins
    from trainer.algorithms import REGISTRIES

    load_builtins()
    import reward.tools  # noqa: F401  (the sandboxed `python` tool, a plugin of the environments)
    for registry in (*REGISTRIES, BUDGETS, CURRICULA, DOWNSAMPLERS, VERIFIERS, ENVS, TOOLS):
        print(f"{registry.kind}{'es' if registry.kind.endswith('s') else 's'}:")
        for entry in registry.entries():
            described = _describe(entry.traits) if entry.traits is not None else ""
            traits = f" ({described})" if described else ""
            paper = f"  [{entry.paper}]" if entry.paper else ""
            print(f"  {entry.name:<20} {entry.description}{traits}{paper}")
    return 0


def _describe(traits) -> str:
    """A registry entry's traits as 'field=value' for the fields that differ from the default."""
    import dataclasses

    fields = [f for f in dataclasses.fields(traits)
              if getattr(traits, f.name) != f.default and not callable(getattr(traits, f.name))]
    return ", ".join(f"{f.name}={getattr(traits, f.name)}" for f in fields)


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from reward.sandbox import SandboxError, verdict_for_cli

    try:
        print(verdict_for_cli(args.file, args.timeout, args.memory_mb).to_json())
    except (OSError, ValueError, SandboxError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cluster.launch.cli import add_job_commands

    parser = argparse.ArgumentParser(prog="tandem", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a recipe here (embedded Ray) or on cluster.address", description=USAGE_RUN,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("recipe", help="YAML recipe file")
    run.add_argument("overrides", nargs="*", help="section.key=value overrides")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("--dry-run", action="store_true",
                     help="print the placement plan (actors, bundles, placement groups, totals) and exit")
    run.add_argument("--resume", action="store_true",
                     help="continue the run directory run.output_dir/run.name from its latest complete checkpoint")
    run.add_argument("--report", action="store_true", help="write the run's plots and report.html when it ends")
    run.set_defaults(fn=_cmd_run)
    report = sub.add_parser("report", help="plots (PNG) and a self-contained report.html of a run directory")
    report.add_argument("run_dir", help="a run directory (runs/NAME)")
    report.add_argument("--out", default=None, help="where to write them (default: RUN_DIR/report)")
    report.set_defaults(fn=_cmd_report)
    _add_eval_parser(sub)
    add_job_commands(sub)
    algos = sub.add_parser("algorithms", help="list registered advantage estimators, losses, KL estimators, verifiers, "
                                                      "environments and tools")
    algos.set_defaults(fn=_cmd_algorithms)
    sandbox = sub.add_parser("sandbox", help="run untrusted Python in the reward sandbox")
    sandbox_run = sandbox.add_subparsers(dest="action", required=True).add_parser(
        "run", help="run FILE under the sandbox's limits and print a JSON verdict")
    sandbox_run.add_argument("file", help="Python file to run")
    sandbox_run.add_argument("--timeout", type=float, default=2.0, help="wall-clock limit in seconds")
    sandbox_run.add_argument("--memory-mb", type=int, default=256, help="address-space limit in MiB")
    sandbox_run.set_defaults(fn=_cmd_sandbox)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come after flags too (`tandem run r.yaml --dry-run trainer.lr=1e-5`), which
    # argparse alone does not allow once the positional run has ended: collect them here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
