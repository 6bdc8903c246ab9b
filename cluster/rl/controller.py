"""The RL controller loop: prompts -> rollouts -> rewards -> staleness gate -> advantages ->
learner step -> weight sync -> guard -> eval every N -> checkpoint every M. Read this file first.

Synchronous and asynchronous training are the same loop: `controller.max_staleness` (k) is
how many policy versions generation may run ahead of the learner (cluster/rl/scheduler.py).
With k = 0 each step's generation starts after the previous step's weight sync, which is
the synchronous order; with k > 0 generation, rewards and training overlap."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from cluster.rl.gate import StalenessGate, Group
from cluster.rl.guard import Guard
from cluster.config import Config
from cluster.rl.budget import Downsampler, RolloutPlanner, budget_options
from cluster.rl.experience import make_experience
from cluster.placement import cpus_needed
from cluster.rl.progress import Progress
from cluster.rl.prompt_stats import PromptStats, signal_row
from cluster.rl.rescue import Rescue
from cluster.roles import Roles, start_roles
from cluster.rundir import RunDir, RunSummary
from cluster.runtime import ray_session
from cluster.trackers import sample_rows
from cluster.weights import WeightSync
from cluster.rl.scheduler import Scheduler
from cluster.rl.streaming import Streaming
from cluster.rl.timeslice import TimeSlice
from reward.sandbox import sandbox_isolation
from rollout.data import Prompt, PromptSource
from rollout.envs.episode import episode_metrics
from rollout.types import GenerationRequest, SamplingParams
from rollout.transfer.buckets import WeightSyncError
from trainer.group import LearnerFault

# Per step: gen_s / reward_s are the parts of the learner's wait spent until the last rollout
# arrived / after it (with k = 0: the generation and reward stages); what overlaps training
# is hidden and not counted. switch_s: colocated placement handing the devices between the
# engines and the learners (cluster/rl/timeslice.py). eval_s is outside the steps.
TIMERS = ("gen_s", "reward_s", "train_s", "sync_s", "switch_s")


class Controller:
    def __init__(self, cfg: Config, roles: Roles, run_dir: RunDir, train: list[Prompt], evals: list[Prompt],
                 weights: WeightSync):
        self.cfg, self.roles, self.run_dir, self.weights = cfg, roles, run_dir, weights
        self.source = PromptSource(train, seed=cfg.run.seed)
        self.prompt_stats = PromptStats()  # per prompt, across epochs (cluster/rl/prompt_stats.py)
        a = cfg.algorithm
        self.rescue = Rescue(train) if a.hint_rescue else None  # cluster/rl/rescue.py
        self.planner = RolloutPlanner(self.source, self.prompt_stats, a.curriculum, a.curriculum_pool,
                                      a.rollout_budget, budget_options(a))
        self.evals = evals[: cfg.controller.eval_prompts]
        self.eval_episodes: dict[str, dict] = {}  # multi-turn: the first and the latest evaluation's figures
        self.gate = StalenessGate(cfg.controller.max_staleness, cfg.algorithm.group_size,
                                  cfg.controller.staleness_rule)
        c = cfg.controller
        self.scheduler = Scheduler(c.steps, c.prompts_per_step, a.group_size, c.max_staleness, self.gate,
                                   a.dynamic_sampling, a.dynamic_sampling_limit, c.lookahead,
                                   Downsampler(a.downsample, a.downsample_keep) if a.downsample_keep else None,
                                   self.rescue.wants if self.rescue else None)
        self.streaming = Streaming(self.scheduler, roles.rollout, roles.reward, self._requests,
                                   lambda step: self._sampling(cfg.rollout.temperature, step),
                                   self.rescue.unhint if self.rescue else None)
        self.experience = make_experience(cfg, roles.learners, roles.critic)
        self.timeslice = TimeSlice(cfg.cluster.placement == "colocated", cfg.rollout.sleep_level, roles.learners,
                                   roles.rollout)
        g = c.guard
        self.guard = Guard(g.limits(), g.patience, g.nonfinite_steps)
        self.version = 0  # policy version: weight updates published to the rollout workers
        self.initial_accuracy: float | None = None
        self.steps_done = 0
        self.next_group = 0
        self.totals = {k: 0.0 for k in TIMERS} | {"samples": 0, "tokens": 0, "syncs": 0, "sync_failures": 0,
                                                   "reward_failures": 0, "eval_s": 0.0, "trained_tokens": 0,
                                                   "generated_tokens": 0}
        self.summary: dict = {}
        self.faults_before: dict = {}  # counted before this controller: by the run it resumed or restarted
        self._generated_seen = 0  # streaming.generated_tokens already counted into a step

    def run(self, progress: Progress) -> dict:
        c = self.cfg.controller
        t_start = time.perf_counter()
        self.timeslice.start()
        if self.steps_done == 0:
            self.initial_accuracy = self.evaluate()
        initial = self.initial_accuracy
        self._write_summary("running", t_start, initial, None)
        progress.start(c.steps, initial)
        for step in range(self.steps_done + 1, c.steps + 1):
            row = self.step(step)
            self.steps_done = step
            if c.eval_every and step % c.eval_every == 0 and step < c.steps:
                row["eval_accuracy"] = self.evaluate()
            if c.checkpoint_every and step % c.checkpoint_every == 0 and step < c.steps:
                row["checkpoint_s"] = self.checkpoint(step)
            self.run_dir.log_metrics(row)
            progress.update(step, row)
            self._write_summary("running", t_start, initial, None)
            self.guard.check(step, row)  # a run gone wrong stops here, its row and summary written
        self.streaming.close()
        self.scheduler.close()  # every group still open ends (incomplete / unused) in the ledger
        final = self.evaluate()
        merge = self.cfg.model.lora is not None and self.cfg.model.lora.merge_on_export
        self.timeslice.learners_resident(lambda: self.roles.learners.save_hf(str(self.run_dir.final_dir), merge))
        self.run_dir.log_metrics({"step": c.steps, "version": self.version, "eval_accuracy": final, "final": True})
        progress.finish(final)
        return self._write_summary("completed", t_start, initial, final)

    def step(self, step: int) -> dict:
        t0 = time.perf_counter()
        groups = self.streaming.next_batch(self.version, step - 1)
        for group in self.scheduler.take_completed():
            if not (self.rescue and self.rescue.is_hinted(group)):  # a hinted success is the hint's
                self.prompt_stats.observe(group, step)
        rescue_row = self.rescue.take_row(groups) if self.rescue else {}
        staleness = [self.version - r.min_version for g in groups for r in g.rollouts]  # vs the trained policy
        log = self.cfg.logging
        if log.samples_every and step % log.samples_every == 0:
            self.run_dir.log_samples(sample_rows(step, self.version, groups, log.samples_per_step))
        t1 = time.perf_counter()
        switch = self.timeslice.to_training()
        train_metrics, policy_moved = self.train(groups, step)
        moving = train_metrics.pop("moving_groups", None)  # per group: a non-zero advantage somewhere
        switch += self.timeslice.to_sync()
        t2 = time.perf_counter()
        synced = policy_moved or self.timeslice.always_sync
        if synced:
            self.sync_weights()
            if self.cfg.controller.abort_doomed:  # groups that can no longer train stop generating
                self.streaming.abort_doomed(self.version)
        t3 = time.perf_counter()
        handover = self.timeslice.to_generation(synced)
        gen = min(max(self.streaming.last_rollout_at - t0, 0.0), t1 - t0)
        times = (gen, t1 - t0 - gen, t2 - t1 - switch, t3 - t2, switch + handover)
        row = self._step_row(step, groups, train_metrics, times) | self.timeslice.take_row() | self.planner.take_row()
        row |= rescue_row
        row |= self._goodput_row(groups, policy_moved, sum(times))
        row |= signal_row(groups, moving, self.scheduler.filtered_for_last_take, self.cfg.algorithm.group_size,
                          self.scheduler.downsample is not None)
        row |= {"staleness_mean": float(np.mean(staleness)), "staleness_max": int(max(staleness)),
                "lookahead": self.scheduler.lookahead.depth}  # the depth generation started at this step
        self.scheduler.lookahead.observe(sum(times))
        return row

    def train(self, groups: list[Group], step: int) -> tuple[dict, bool]:
        """Critic and policy updates on this step's groups; False when the policy did not move."""
        if not groups:
            raise RuntimeError(f"step {step}: no complete group survived the buffer; nothing to train on")
        batches = self.experience.make(groups)
        metrics = dict(batches.metrics)
        if batches.policy is None:
            return metrics, False  # online DPO: no group's rewards told its samples apart
        parts = self.experience.split(len(batches.policy), step)
        if self.experience.needs_proximal():  # several updates per batch: pi_prox is the policy before them
            batches.policy = batches.policy.replace(
                proximal_logprobs=self.roles.learners.logprobs(batches.policy, self.cfg.rollout.temperature))
        if batches.critic is not None:
            for part in parts:
                critic = self.roles.critic.train_step(self.experience.weighted(batches.critic.rows(part)),
                                                      self.experience.critic_spec())
            metrics.update(value_loss=critic["loss"], value_clip_frac=critic["value_clip_frac"], critic_lr=critic["lr"])
        if step <= self.cfg.critic.warmup_steps:
            return metrics, False  # critic warm-up: the policy waits for useful values
        updates = [self.roles.learners.train_step(self.experience.weighted(batches.policy.rows(part)),
                                                  self.experience.policy_spec()) for part in parts]
        skipped = [u["nonfinite"] for u in updates]  # 1: that update's loss or gradient was not finite
        metrics.update(updates[-1], nonfinite=max(skipped))  # the last mini-batch's; nonfinite: any
        if all(skipped):
            return metrics, False  # no update moved the learners
        self.experience.kl.update(metrics.get("kl"))
        metrics["kl_coef"] = self.experience.kl.coef
        return metrics, True

    def sync_weights(self) -> None:
        self.version += 1
        try:
            self.weights.sync(self.version)
        except WeightSyncError:
            self.totals["sync_failures"] += 1
            raise
        self.totals["syncs"] += 1

    def checkpoint(self, step: int) -> float:
        """The policy as a Hugging Face checkpoint, and beside it the learners' (and critic's) full
        DeepSpeed state, written atomically (cluster/rundir.py). Returns the seconds it took."""
        t0 = time.perf_counter()

        def write(path) -> None:
            (path / "controller.json").write_text(json.dumps(self.state(step)) + "\n")
            self.roles.learners.save_hf(str(path))
            self.roles.learners.save_state(str(path / "policy"))
            if self.roles.critic is not None:
                self.roles.critic.save_state(str(path / "critic"))

        self.timeslice.learners_resident(
            lambda: self.run_dir.save_checkpoint(step, write, self.cfg.controller.keep_checkpoints))
        return time.perf_counter() - t0

    def state(self, step: int) -> dict:
        """What the loop itself carries from one step to the next (JSON, in every checkpoint): the
        policy version, the group ids and prompts dealt so far, the ledger, the staleness counts,
        the adaptive KL coefficient and the running totals."""
        return {"step": step, "version": self.version, "next_group": self.next_group,
                "initial_accuracy": self.initial_accuracy, "kl_coef": self.experience.kl.coef,
                "totals": self.totals, "source": self.source.state(), "scheduler": self.scheduler.state(),
                "gate": self.gate.summary(), "reward": self.roles.reward.state(), "faults": self.faults(),
                "guard": self.guard.state(), "eval_episodes": self.eval_episodes,
                "prompt_stats": self.prompt_stats.state(), "rescue": self.rescue.state() if self.rescue else {}}

    def restore(self, state: dict) -> None:
        """Continue after the checkpoint that wrote `state` (its engines and learners are loaded
        by start_roles): the next step is the one the interrupted run would have taken."""
        self.version, self.next_group, self.steps_done = state["version"], state["next_group"], state["step"]
        self.initial_accuracy, self.experience.kl.coef = state["initial_accuracy"], state["kl_coef"]
        self.totals = self.totals | state["totals"]  # keys an older checkpoint lacks keep their zeros
        self.eval_episodes = state.get("eval_episodes", {})
        self.source.restore(state["source"])
        self.scheduler.restore(state["scheduler"])
        self.gate.restore(state["gate"])
        self.roles.reward.restore(state["reward"])
        self.faults_before = state.get("faults", {})
        self.guard.restore(state["guard"])
        self.prompt_stats.restore(state.get("prompt_stats", {}))  # a checkpoint from before it: none kept
        if self.rescue:
            self.rescue.restore(state.get("rescue", {}))

    def faults(self) -> dict:
        """Workers replaced after they died (per role; a learner or critic restart restarts the
        run from a checkpoint, run_rl), samples generated or scored again because of it, and what
        the arrival checks counted lost or duplicated (cluster/rl/streaming.py)."""
        pool, reward = self.roles.rollout, self.roles.reward.stats  # live counters (metrics() adds percentiles)
        now = {"restarts": {"rollout": pool.restarts, "reward": reward.fault_restarts, "learner": 0, "critic": 0},
               "reissued": {"rollout": pool.reissued, "reward": reward.reissued},
               "lost": self.streaming.lost, "duplicated": self.streaming.duplicated}
        return _plus(self.faults_before, now)

    def evaluate(self) -> float:
        """Held-out accuracy (greedy unless controller.eval_temperature > 0) of the latest policy."""
        t0 = time.perf_counter()
        # Held-out prompts have their own group ids (-1, -2, ...), the same at every evaluation: the
        # training groups' ids, and so their sampling seeds, must not depend on how often we evaluate.
        requests = [self._request(prompt, 1, -i) for i, prompt in enumerate(self.evals, 1)]
        # Held out, the policy answers freely: rollout.min_new_tokens (a benchmark's fixed length) is not applied.
        rollouts = self.roles.rollout.generate(requests, self._sampling(self.cfg.controller.eval_temperature, -1,
                                                                        min_new_tokens=0))
        rewards = self.roles.reward.score(rollouts)
        self.totals["eval_s"] += time.perf_counter() - t0
        episodes = episode_metrics(rollouts)  # multi-turn: turns and tool use on the held-out prompts
        if episodes:
            self.eval_episodes.setdefault("initial", episodes)
            self.eval_episodes["latest"] = episodes
        return sum(r.correct for r in rewards) / len(rewards)

    def _requests(self, n: int) -> list[GenerationRequest]:
        """Hinted retries owed first (cluster/rl/rescue.py), then the curriculum's prompts with
        the budget's group sizes (cluster/rl/budget.py)."""
        requests = self.rescue.requests(n, self.cfg.algorithm.group_size) if self.rescue else []
        for prompt, size in self.planner.next(n - len(requests)):
            self.next_group += 1
            requests.append(self._request(prompt, size, self.next_group))
        return requests

    @staticmethod
    def _request(prompt: Prompt, n: int, group_id: int) -> GenerationRequest:
        return GenerationRequest(group_id=group_id, prompt_id=prompt.id, prompt=prompt.text, prompt_ids=prompt.ids,
                                 answer=prompt.answer, num_samples=n)

    def _sampling(self, temperature: float, step: int, min_new_tokens: int | None = None) -> SamplingParams:
        r = self.cfg.rollout
        return SamplingParams(temperature=temperature, max_new_tokens=r.max_new_tokens,
                              min_new_tokens=r.min_new_tokens if min_new_tokens is None else min_new_tokens,
                              seed=self.cfg.run.seed, step=step)

    def _step_row(self, step: int, groups: list[Group], m: dict, times: tuple) -> dict:
        rewards = [r for g in groups for r in g.rewards]
        rollouts = [r for g in groups for r in g.rollouts]
        values = np.array([r.reward for r in rewards])
        tokens = sum(len(r.response_ids) for r in rollouts)
        step_s = sum(times)
        for key, value in zip(TIMERS, times):
            self.totals[key] += value
        failures = sum(r.failure is not None for r in rewards)
        self.totals.update(samples=self.totals["samples"] + len(rollouts), tokens=self.totals["tokens"] + tokens,
                           reward_failures=self.totals["reward_failures"] + failures)
        return {
            "step": step, "version": self.version, "reward_mean": float(values.mean()),
            "reward_std": float(values.std()), "accuracy": float(np.mean([r.correct for r in rewards])),
            "format_rate": float(np.mean([r.format_ok for r in rewards])), "reward_failures": failures,
            "response_len": tokens / len(rollouts),
            "partial_frac": float(np.mean([len(set(r.versions)) > 1 for r in rollouts])),
            "filtered_groups": self.scheduler.filtered, "aborted_groups": self.scheduler.aborted_groups, **m,
            **dict(zip(TIMERS, times)), "step_s": step_s,
            "samples_per_s": len(rollouts) / step_s, "tokens_per_s": tokens / step_s, **episode_metrics(rollouts),
        }

    def _goodput_row(self, groups: list[Group], moved: bool, step_s: float) -> dict:
        """Useful work next to raw work: response tokens the step trained on (none when the policy
        did not move), tokens generated since the last step, and those thrown away (groups dropped
        stale or filtered, or aborted while generating), with the mean length of the complete
        samples dropped (long responses go stale first)."""
        trained = sum(len(r.response_ids) for g in groups for r in g.rollouts) if moved else 0
        generated = self.streaming.generated_tokens - self._generated_seen
        self._generated_seen = self.streaming.generated_tokens
        dropped_tokens, dropped_samples, aborted_tokens = self.scheduler.take_dropped()
        self.totals["trained_tokens"] += trained
        self.totals["generated_tokens"] += generated
        row = {"trained_tokens": trained, "generated_tokens": generated,
               "wasted_tokens": dropped_tokens + aborted_tokens,
               "goodput_tokens_per_s": trained / step_s, "generated_tokens_per_s": generated / step_s}
        if dropped_samples:
            row["dropped_response_len"] = dropped_tokens / dropped_samples
        return row

    def _write_summary(self, status: str, t_start: float, initial: float, final) -> dict:
        t = self.totals
        wall = time.perf_counter() - t_start
        busy = sum(t[k] for k in TIMERS) or 1e-9
        self.summary = {
            "status": status, "run_dir": str(self.run_dir.path), "algorithm": self.cfg.algorithm.name,
            "steps": self.steps_done, "samples": int(t["samples"]), "wall_s": wall,
            "eval": {"initial_accuracy": initial, "final_accuracy": final, "num_prompts": len(self.evals),
                     **({"episodes": self.eval_episodes} if self.eval_episodes else {})},
            "staleness": self.gate.summary(),
            "scheduling": {"max_staleness": self.cfg.controller.max_staleness,
                           "lookahead": {"mode": self.cfg.controller.lookahead, **self.scheduler.lookahead.state()},
                           "in_flight_mode": self.cfg.rollout.in_flight,
                           "dynamic_sampling_filtered_groups": self.scheduler.filtered,
                           "rescued_groups": self.scheduler.rescued,
                           "stale_groups_replaced": self.scheduler.stale_groups,
                           "abort_doomed": self.cfg.controller.abort_doomed,
                           "aborted_groups": self.scheduler.aborted_groups, "eval_s": t["eval_s"]},
            "groups": self.scheduler.summary(),  # the ledger: issued, open, and ended by outcome
            "weight_sync": {"count": int(t["syncs"]), "checksum_failures": int(t["sync_failures"]),
                            "mean_s": t["sync_s"] / max(t["syncs"], 1), "transfer": self.weights.kind,
                            "bytes_per_update": self.weights.bytes_per_update,
                            "full_model_bytes": self.weights.full_model_bytes,
                            # updates that landed while a generation call was running (partial rollouts)
                            "swaps_in_flight": sum(w["swaps_in_flight"] for w in self.roles.rollout.stats())},
            "rewards": {"failures": int(t["reward_failures"]), **self.roles.reward.metrics().to_dict(),
                        "sandbox_isolation": sandbox_isolation(self.cfg.reward)},
            "faults": self.faults(),
            "numerics": {"nonfinite_steps": self.guard.skipped, "guard": self.cfg.controller.guard.limits()},
            "throughput": {"samples_per_s": t["samples"] / busy, "tokens_per_s": t["tokens"] / busy,
                           **{k: t[k] for k in TIMERS}},
            # Trained response tokens per second of the steps, against every token generated (the
            # difference: groups dropped stale or filtered, work in flight at the end).
            "goodput": {"trained_tokens": int(t["trained_tokens"]), "generated_tokens": int(t["generated_tokens"]),
                        "trained_tokens_per_s": t["trained_tokens"] / busy,
                        "generated_tokens_per_s": t["generated_tokens"] / busy,
                        "useful_fraction": t["trained_tokens"] / max(t["generated_tokens"], 1),
                        "tokens_by_outcome": dict(self.scheduler.tokens)},
        }
        self.run_dir.write_summary(self.summary)
        return self.summary


def _plus(before: dict, now: dict) -> dict:
    """now + before, key by key (nested); keys only `before` has are kept."""
    out = dict(before)
    for key, value in now.items():
        out[key] = _plus(before.get(key, {}), value) if isinstance(value, dict) else before.get(key, 0) + value
    return out


def _count_restart(faults: dict, role: str) -> dict:
    restarts = faults.setdefault("restarts", {})
    restarts[role] = restarts.get(role, 0) + 1
    return faults


def _restart_point(run_dir: RunDir, fault: LearnerFault, budget_spent: bool, budget: int) -> Path:
    """The checkpoint a learner fault restarts the run from (metrics cut back to it), or the
    fault again, saying what would have saved the run."""
    checkpoint = run_dir.latest_checkpoint()
    if checkpoint is None or budget_spent:
        raise LearnerFault(fault.role, fault.rank, fault.cause, (
            "no complete checkpoint to restart from (set controller.checkpoint_every to recover automatically)"
            if checkpoint is None else f"the restart budget is spent (cluster.max_actor_restarts={budget}; "
            f"--resume continues from {checkpoint.name})") + "; the rank's worker log in Ray's logs directory "
            "says why it died") from fault
    run_dir.rewind(checkpoint)
    return checkpoint


def run_rl(cfg: Config, train: list[Prompt], evals: list[Prompt], run_dir: RunDir, log=print,
           checkpoint: Path | None = None) -> RunSummary:
    """Start the roles on the embedded or given Ray cluster, run the loop, stop the roles.
    `checkpoint`: resume from it (the engines start from its weights, the learners and the loop
    from its state). A learner or critic rank that dies restarts every role from the latest
    complete checkpoint, as --resume would (at most cluster.max_actor_restarts times); with no
    checkpoint, or the budget spent, the run stops naming the rank and what to do."""
    carried: dict = {}  # fault counts of the attempts before a learner restart
    with ray_session(cfg.cluster, cpus_needed(cfg)) as loopback:
        for attempt in range(cfg.cluster.max_actor_restarts + 1):
            state = json.loads((checkpoint / "controller.json").read_text()) if checkpoint else None
            roles = start_roles(cfg, loopback, checkpoint, state["version"] if state else 0)
            progress, controller, graceful = Progress(cfg.controller.progress, log), None, True
            try:
                weights = WeightSync(cfg, roles.learners, roles.rollout, loopback)
                controller = Controller(cfg, roles, run_dir, train, evals, weights)
                if state:
                    controller.restore(state)
                controller.faults_before = carried or controller.faults_before
                record = controller.run(progress)
                break
            except LearnerFault as fault:
                graceful = False  # its peers may hang in a collective
                carried = _count_restart(controller.faults() if controller else carried, fault.role)
                checkpoint = _restart_point(run_dir, fault, attempt == cfg.cluster.max_actor_restarts,
                                            cfg.cluster.max_actor_restarts)
                log(f"{fault}: restarting every role from {checkpoint.name}")
            finally:
                progress.stop()
                roles.shutdown(graceful)
    ev, tp = record["eval"], record["throughput"]
    headline = (f"held-out accuracy ({ev['num_prompts']} prompts): {ev['initial_accuracy']:.1%} -> "
                f"{ev['final_accuracy']:.1%}  ({record['steps']} steps, {record['samples']} samples, "
                f"{record['wall_s']:.0f} s, {tp['samples_per_s']:.1f} samples/s)")
    return RunSummary(record["status"], "rl", record["run_dir"], headline, record)
