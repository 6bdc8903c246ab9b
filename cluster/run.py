"""One recipe end to end: input checks, model preparation, run.mode dispatch, and the one
wrapper that writes a failed summary (keeping what the run wrote) before re-raising.

  run(cfg) -> RunSummary
    1. batch shapes (cluster/shapes.py) and inputs are checked before anything starts;
    2. the run directory is created (cluster/rundir.py);
    3. the mode runs: "rl" -> cluster/rl/controller.py; "sft" / "reward_model" / "dpo" ->
       cluster/offline.py.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cluster.config import Config, ConfigError
from cluster.offline import load_offline_data, run_offline
from cluster.rl.controller import run_rl
from cluster.rundir import RunDir, RunSummary
from cluster.shapes import PAIRED_MODES, learner_options
from cluster.trackers import check_trackers
from cluster.weights import resolve_weight_transfer
from rollout.cpu_linear import wants_onednn
from rollout.data import Prompt, load_prompts, render_prompts


def run(cfg: Config, log=print, resume: bool = False) -> RunSummary:
    """Run one recipe; the run directory survives any failure with what was written. `resume`:
    continue run.output_dir/run.name from its latest complete checkpoint (RL runs)."""
    learner_options(cfg)  # batch-shape errors surface before anything starts
    if cfg.run.mode == "rl":
        resolve_weight_transfer(cfg)  # a weight transfer that cannot run here, too
        check_reward(cfg, log)
    wants_onednn(cfg.model.cpu_linear)  # a kernel this torch lacks, before anything starts
    check_trackers(cfg)
    prepare_model(cfg, log)
    inputs = prepare_inputs(cfg) if cfg.run.mode == "rl" else load_offline_data(cfg)
    if resume and cfg.run.mode != "rl":
        raise ConfigError(f"--resume continues RL runs; run.mode '{cfg.run.mode}' has no checkpoints to resume from")
    run_dir, checkpoint = RunDir.resume(cfg) if resume else (RunDir.create(cfg), None)
    log(f"run directory: {run_dir.path}" + (f" (resuming from {checkpoint.name})" if checkpoint else ""))
    with failed_summary(run_dir):
        run_dir.open_trackers(cfg, checkpoint)
        try:
            if cfg.run.mode == "rl":
                return run_rl(cfg, *inputs, run_dir, log, checkpoint)
            return run_offline(cfg, inputs, run_dir, log)
        finally:
            run_dir.close_trackers()


def check_reward(cfg: Config, log=print) -> None:
    """The reward's files and sandbox on this machine, before Ray starts (its names, options and
    budgets were checked when the config was parsed)."""
    from reward.pool import check_paths
    from reward.sandbox import SandboxError, require_isolation

    try:
        check_paths(cfg.reward)
        if cfg.reward.uses_sandbox:
            log(f"code verifier sandbox: isolation '{require_isolation(cfg.reward.allow_unisolated_sandbox)}'")
    except (ValueError, SandboxError) as exc:
        raise ConfigError(str(exc)) from None


def prepare_model(cfg: Config, log=print) -> None:
    """Bootstrap the tiny model (and its task data) if asked, then check it is an HF checkpoint."""
    if cfg.model.bootstrap:
        from trainer.bootstrap import ensure_tiny_model, write_arithmetic_pairs

        ensure_tiny_model(cfg.model.path, cfg.model.bootstrap_spec, seed=cfg.run.seed, log=log)
        if cfg.run.mode in PAIRED_MODES:  # the tiny task's synthetic preferences, next to its prompts
            write_arithmetic_pairs(Path(cfg.model.path) / "data", cfg.run.seed)
    model = Path(cfg.model.path)
    if not model.exists():
        raise ConfigError(f"model.path '{model}' does not exist (set model.bootstrap: true to build the tiny model)")
    if not (model / "config.json").is_file():
        raise ConfigError(f"model.path '{model}' is not a Hugging Face checkpoint (no config.json)")


def prepare_inputs(cfg: Config) -> tuple[list[Prompt], list[Prompt]]:
    """The RL prompts (train, held-out) from any format read_rows reads, checked row by row and
    rendered to token ids by the policy's tokenizer (its chat template, data.system_prompt first,
    then the row's messages or a user turn, per data.chat_template) before any actor starts."""
    from transformers import AutoTokenizer

    from rollout.render import Renderer

    keys = dict(prompt_key=cfg.data.prompt_key, answer_key=cfg.data.answer_key)
    renderer = Renderer(AutoTokenizer.from_pretrained(cfg.model.path), cfg.data.chat_template,
                        system_prompt=cfg.data.system_prompt)
    train = render_prompts(load_prompts(cfg.data.train_path, **keys, hint_key=cfg.data.hint_key),
                           renderer.prompt_ids, cfg.data.train_path, renderer.continuation_ids)
    evals = render_prompts(load_prompts(cfg.data.eval_path, **keys), renderer.prompt_ids, cfg.data.eval_path)
    return train, evals


@contextmanager
def failed_summary(run_dir: RunDir) -> Iterator[None]:
    """On any failure: the last summary the run wrote, marked failed with the error, then
    re-raise. Stopped from outside (Ctrl-C, or SIGTERM, which the CLI turns into the same
    KeyboardInterrupt: what schedulers send before SIGKILL) it is marked interrupted instead,
    with how to continue; a SIGKILL leaves "running", and --resume works the same."""
    try:
        yield
    except BaseException as exc:
        summary = run_dir.read_summary() or {"run_dir": str(run_dir.path)}
        if isinstance(exc, KeyboardInterrupt):
            summary.update(status="interrupted", resume=f"the same tandem run command with --resume continues "
                                                         f"{run_dir.path} from its latest complete checkpoint")
            run_dir.write_summary(summary)
            raise
        summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=20))
        run_dir.write_summary(summary)
        raise
