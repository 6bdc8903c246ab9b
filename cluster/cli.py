"""`tandem` command line: run a recipe, list algorithms."""

from __future__ import annotations

import argparse
import os
import sys

from cluster.config import ConfigError, load_config

USAGE_RUN = """run a recipe on the embedded local Ray (or cluster.address).
Overrides are dotted keys: tandem run recipes/quickstart.yaml trainer.lr=3e-5 controller.steps=10"""


def _cmd_run(args: argparse.Namespace) -> int:
    from rollout.data import DataError
    from rollout.hf_engine import EngineError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_config(args.recipe, args.overrides)
        if args.print_config:
            from cluster.config import config_to_yaml

            print(config_to_yaml(cfg))
            return 0
        from cluster.controller import run

        summary = run(cfg)
    except (ConfigError, DataError, EngineError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return 2
    ev, tp = summary["eval"], summary["throughput"]
    print(f"\nrun directory: {summary['run_dir']}")
    print(f"held-out accuracy ({ev['num_prompts']} prompts): {ev['initial_accuracy']:.1%} -> "
          f"{ev['final_accuracy']:.1%}  ({summary['steps']} steps, {summary['samples']} samples, "
          f"{summary['wall_s']:.0f} s, {tp['samples_per_s']:.1f} samples/s)")
    return 0


def _cmd_algorithms(args: argparse.Namespace) -> int:
    from trainer.algorithms import ADVANTAGES, KL_ESTIMATORS, LOSSES
    from reward.verifiers import VERIFIERS

    for registry in (ADVANTAGES, LOSSES, KL_ESTIMATORS, VERIFIERS):
        print(f"{registry.kind}s:")
        for entry in registry.entries():
            print(f"  {entry.name:<12} {entry.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Distributed RL post-training on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a recipe", description=USAGE_RUN)
    run.add_argument("recipe", help="YAML recipe file")
    run.add_argument("overrides", nargs="*", help="section.key=value overrides")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.set_defaults(fn=_cmd_run)
    algos = sub.add_parser("algorithms", help="list registered advantage estimators, losses, KL estimators, verifiers")
    algos.set_defaults(fn=_cmd_algorithms)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
