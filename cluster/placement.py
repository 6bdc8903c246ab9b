"""Placement: a resource plan computed from the recipe, checked against the cluster, and
mapped onto Ray placement groups.

The plan is pure data (no Ray needed): `tandem run --dry-run` prints it and `tandem submit`
sizes clusters from it. `place()` checks it against the live cluster's nodes, so a plan that
cannot fit fails at once naming what was asked and what exists, instead of hanging in Ray's
scheduler; then it reserves the bundles and hands each role's actors their scheduling options.

Modes (`cluster.placement`):
- disaggregated: each role has its own bundles (one placement group per role; one per engine
  replica when an engine spans several GPUs, so its tensor-parallel shards share a node: the
  rollout worker actor takes only its CPUs in the first bundle, and vLLM's Ray executor, which
  finds the group from inside the actor, puts one worker on each bundle's GPU).
- colocated: learner ranks and engine shards share bundles (one GPU each on GPU hosts,
  time-sliced between the roles), so a synchronous run needs max(learners, engine GPUs)
  GPUs instead of their sum. Reward workers always have their own bundles.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from cluster.config import Config, ConfigError

ROLES = ("learner", "rollout", "reward", "critic", "reward_model")


class PlacementError(RuntimeError):
    """The cluster cannot hold the plan; the message says what was asked and what exists."""


@dataclass(frozen=True)
class Slot:
    """Where one actor goes: bundle `bundle` of group `group` (-1: unreserved, scheduled by
    Ray anywhere), asking for `resources` (CPU, GPU and custom names)."""

    group: int
    bundle: int
    resources: dict[str, float]


@dataclass(frozen=True)
class BundleGroup:
    name: str
    strategy: str
    bundles: tuple[dict[str, float], ...]


@dataclass(frozen=True)
class Plan:
    mode: str
    groups: tuple[BundleGroup, ...]
    actors: dict[str, tuple[Slot, ...]]  # role -> one slot per actor, in rank order
    engine_tp: int = 1  # bundles per engine replica (its tensor-parallel size)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for g in self.groups:
            for b in g.bundles:
                for k, v in b.items():
                    out[k] = out.get(k, 0) + v
        return out

    def describe(self) -> str:
        lines = [f"placement plan ({self.mode}):"]
        for role, slots in self.actors.items():
            where = "no reservation (zero resources)" if slots and slots[0].group < 0 else \
                ", ".join(sorted({self.groups[s.group].name for s in slots}))
            asks = " / ".join(dict.fromkeys(_fmt(s.resources) for s in slots)) or "{}"
            extra = f" x TP {self.engine_tp}" if role == "rollout" and self.engine_tp > 1 else ""
            lines.append(f"  {role:<8} {len(slots)} actor(s){extra}, asking {asks} -> {where}")
        for g in self.groups:
            lines.append(f"  group {g.name:<12} {g.strategy:<13} {len(g.bundles)} bundle(s): "
                         + " ".join(_fmt(b) for b in g.bundles))
        lines.append(f"  total reserved: {_fmt(self.totals())}")
        return "\n".join(lines)


def _fmt(res: dict[str, float]) -> str:
    parts = [f"{k}: {v:g}" for k, v in sorted(res.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU"), kv[0]))]
    return "{" + ", ".join(parts) + "}"


def _clean(res: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in res.items() if v}  # Ray refuses zero-valued bundle entries


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def role_demands(cfg: Config) -> dict[str, tuple[int, dict[str, float]]]:
    """role -> (actors, resources one actor asks for), from the recipe."""
    c = cfg.cluster
    if cfg.rollout.engine == "hf" and c.gpus_per_engine > 1:
        raise ConfigError(f"cluster.gpus_per_engine={c.gpus_per_engine}: the 'hf' engine runs on one device; "
                          "tensor parallelism (gpus_per_engine > 1) needs a vllm engine")
    custom = {role: dict(c.resources.get(role, {})) for role in ROLES}
    return {
        "learner": (cfg.trainer.num_learners, {"CPU": cfg.trainer.threads_per_learner,
                                               "GPU": c.gpus_per_learner, **custom["learner"]}),
        "rollout": (cfg.rollout.num_workers, {"CPU": cfg.rollout.threads_per_worker,
                                              "GPU": min(c.gpus_per_engine, 1), **custom["rollout"]}),
        "reward": (cfg.reward.num_workers, {"CPU": c.cpus_per_reward_worker, **custom["reward"]}),
        # PPO's value model: learner-shaped ranks of their own (empty when there is no critic).
        "critic": (cfg.critic.num_learners if cfg.critic.enabled else 0,
                   {"CPU": cfg.critic.threads_per_learner, "GPU": c.gpus_per_learner, **custom["critic"]}),
        # The reward-model actor (reward.components names reward_model), on its own GPU with
        # reward.reward_model_device cuda; like the reward workers it reserves no CPU.
        "reward_model": (int("reward_model" in cfg.reward.weights()),
                         {"GPU": int(cfg.reward.reward_model_device == "cuda"), **custom["reward_model"]}),
    }


def build_plan(cfg: Config) -> Plan:
    c = cfg.cluster
    return plan_for(role_demands(cfg), c.placement, c.strategy, max(c.gpus_per_engine, 1))


def plan_for(demands: dict[str, tuple[int, dict[str, float]]], mode: str, strategy: str, tp: int = 1) -> Plan:
    """The plan for role demands (role -> (actors, resources per actor)); `tp` = GPUs per engine."""
    builder = _colocated if mode == "colocated" else _disaggregated
    groups, actors = builder(demands, tp, strategy)
    for role in ("critic", "reward", "reward_model"):  # roles with a group of their own in either mode
        n, each = demands.get(role, (0, {}))
        if n and _clean(each):
            actors[role] = tuple(Slot(len(groups), i, _clean(each)) for i in range(n))
            groups.append(BundleGroup(role, strategy, tuple(_clean(each) for _ in range(n))))
        elif n or role == "reward":  # nothing to reserve: Ray schedules zero-resource actors anywhere
            actors[role] = tuple(Slot(-1, 0, {}) for _ in range(n))
    return Plan(mode, tuple(groups), actors, tp)


def _engine_bundles(each: dict[str, float], tp: int) -> list[dict[str, float]]:
    # A tensor-parallel engine: its actor (with its CPUs) in the first bundle, one GPU per shard.
    return [_clean({**each, "GPU": 1.0})] + [{"GPU": 1.0} for _ in range(tp - 1)]


def _disaggregated(demands, tp: int, strategy: str) -> tuple[list[BundleGroup], dict[str, tuple[Slot, ...]]]:
    groups: list[BundleGroup] = []
    n, each = demands["learner"]
    groups.append(BundleGroup("learner", strategy, tuple(_clean(each) for _ in range(n))))
    learners = tuple(Slot(0, i, _clean(each)) for i in range(n))
    n, each = demands["rollout"]
    if tp == 1:
        groups.append(BundleGroup("rollout", strategy, tuple(_clean(each) for _ in range(n))))
        engines = tuple(Slot(1, i, _clean(each)) for i in range(n))
    else:  # one group per replica: its shards must share a node (NVLink / IPC)
        # The actor asks no GPU: vLLM's Ray workers take every bundle's, the first one's too.
        engines = tuple(Slot(1 + j, 0, _clean({**each, "GPU": 0})) for j in range(n))
        groups += [BundleGroup(f"rollout-{j}", "STRICT_PACK", tuple(_engine_bundles(each, tp))) for j in range(n)]
    return groups, {"learner": learners, "rollout": engines}


def _colocated(demands, tp: int, strategy: str) -> tuple[list[BundleGroup], dict[str, tuple[Slot, ...]]]:
    (n_l, learner), (n_e, engine) = demands["learner"], demands["rollout"]
    size = max(n_l, n_e * tp)
    learner_at = {k: k for k in range(n_l)}
    engine_at = {j * tp: j for j in range(n_e)}  # engine j's actor sits on its first shard's bundle
    gpu_users = [(k < n_l and learner["GPU"] > 0) + (k < n_e * tp and engine["GPU"] > 0) for k in range(size)]
    bundles, learners, engines = [], [None] * n_l, [None] * n_e
    for k in range(size):
        share = 1.0 / gpu_users[k] if gpu_users[k] else 0.0  # roles on one GPU split it, time-sliced
        bundle: dict[str, float] = {"GPU": 1.0} if gpu_users[k] else {}
        if k in learner_at:
            ask = _clean({**learner, "GPU": share if learner["GPU"] else 0})
            learners[k] = Slot(0, k, ask)
            bundle = _add(bundle, {r: v for r, v in ask.items() if r != "GPU"})
        if k in engine_at:
            ask = _clean({**engine, "GPU": share if engine["GPU"] else 0})
            engines[engine_at[k]] = Slot(0, k, ask)
            bundle = _add(bundle, {r: v for r, v in ask.items() if r != "GPU"})
        bundles.append(_clean(bundle) or {"CPU": 0.01})  # an empty bundle is refused by Ray
    return [BundleGroup("colocated", strategy, tuple(bundles))], {"learner": tuple(learners), "rollout": tuple(engines)}


def nodes_needed(plan: Plan, gpus_per_node: int) -> int:
    """Nodes of `gpus_per_node` GPUs that hold the plan's GPUs (1 when it needs none)."""
    gpus = plan.totals().get("GPU", 0)
    if gpus and not gpus_per_node:
        raise ConfigError(f"the plan needs {gpus:g} GPUs but cluster.gpus_per_node is 0 (set it, or --gpus-per-node)")
    return max(1, math.ceil(gpus / gpus_per_node)) if gpus else 1


# ---- checking a plan against a cluster -------------------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str  # node IP and short id, for messages
    resources: dict[str, float]


def _fits(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0) + 1e-9 >= v for k, v in bundle.items())


def check_fit(plan: Plan, nodes: list[Node]) -> None:
    """Raise PlacementError when the plan certainly cannot fit these nodes (each condition
    checked is a proof: a resource short in total, a bundle no node can hold, a STRICT group
    no node or set of nodes can hold). Tighter bin-packing is left to Ray's scheduler."""
    problems: list[str] = []
    have: dict[str, float] = {}
    for n in nodes:
        have = _add(have, n.resources)
    for key, asked in sorted(plan.totals().items()):
        if asked > have.get(key, 0) + 1e-9:
            problems.append(f"{key}: the plan reserves {asked:g}, the cluster has {have.get(key, 0):g} in total")
    for g in plan.groups:
        for i, b in enumerate(g.bundles):
            if not any(_fits(b, n.resources) for n in nodes):
                problems.append(f"group {g.name} bundle {i} {_fmt(b)} fits on no node")
                break
        if g.strategy == "STRICT_PACK":
            whole = {}
            for b in g.bundles:
                whole = _add(whole, b)
            if not any(_fits(whole, n.resources) for n in nodes):
                problems.append(f"group {g.name} is STRICT_PACK: all of {_fmt(whole)} must fit on one node; none can")
        if g.strategy == "STRICT_SPREAD":
            able = [n for n in nodes if any(_fits(b, n.resources) for b in g.bundles)]
            if len(able) < len(g.bundles):
                problems.append(f"group {g.name} is STRICT_SPREAD: {len(g.bundles)} bundles need as many nodes; "
                                f"{len(able)} node(s) can hold one")
    if problems:
        raise PlacementError(_fit_message(plan, nodes, problems))


def _fit_message(plan: Plan, nodes: list[Node], problems: list[str]) -> str:
    node_lines = "\n".join(f"    {n.name}: {_fmt(n.resources)}" for n in nodes) or "    (no alive nodes)"
    return ("the cluster cannot fit the placement plan:\n  - " + "\n  - ".join(problems)
            + f"\nasked:\n{_indent(plan.describe())}\ncluster nodes:\n{node_lines}\n"
            + "change the plan (trainer.num_learners, rollout.num_workers, reward.num_workers, their thread "
              "counts, cluster.gpus_per_learner, cluster.gpus_per_engine, cluster.resources, cluster.strategy) "
              "or the cluster")


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def cluster_nodes() -> list[Node]:
    """Alive nodes of the connected Ray cluster and their total resources (memory and the
    per-node bookkeeping keys left out)."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = {k: v for k, v in n["Resources"].items()
               if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        out.append(Node(f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})", res))
    return out


# ---- reserving it ------------------------------------------------------------------------------

@dataclass
class Placement:
    """Live placement groups for a plan; `options(role)` gives each actor's Ray options."""

    plan: Plan
    groups: list[Any] = field(default_factory=list)  # ray PlacementGroup, in plan.groups order

    def options(self, role: str) -> list[dict[str, Any]]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        out = []
        for slot in self.plan.actors.get(role, ()):
            res = dict(slot.resources)
            opts: dict[str, Any] = {"num_cpus": res.pop("CPU", 0), "num_gpus": res.pop("GPU", 0)}
            if res:
                opts["resources"] = res
            if slot.group >= 0:
                # A tensor-parallel engine's actor starts vLLM's workers inside its group.
                tp_engine = role == "rollout" and self.plan.engine_tp > 1
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    self.groups[slot.group], placement_group_bundle_index=slot.bundle,
                    placement_group_capture_child_tasks=tp_engine)
            out.append(opts)
        return out

    def remove(self) -> None:
        from ray.util import remove_placement_group

        for pg in self.groups:
            try:
                remove_placement_group(pg)
            except Exception:
                pass  # the cluster may be gone already; nothing left to free
        self.groups = []


def place(plan: Plan, timeout_s: float, nodes: Optional[list[Node]] = None) -> Placement:
    """Check the plan against the cluster, create its placement groups and wait until all are
    reserved. Must run inside a Ray session."""
    import ray
    from ray.util import placement_group

    check_fit(plan, cluster_nodes() if nodes is None else nodes)
    placed = Placement(plan)
    try:
        for g in plan.groups:
            placed.groups.append(placement_group(list(g.bundles), strategy=g.strategy,
                                                name=f"tandem-{g.name}-{uuid.uuid4().hex[:6]}"))
        ready, _ = ray.wait([pg.ready() for pg in placed.groups], num_returns=len(placed.groups),
                            timeout=timeout_s)
        if len(ready) < len(placed.groups):
            raise PlacementError(
                f"placement groups not reserved after {timeout_s:g} s (cluster.placement_timeout_s): the plan "
                f"fits the cluster's totals, but its resources are busy or fragmented.\nasked:\n"
                f"{_indent(plan.describe())}\nfree now: {_fmt(ray.available_resources())}")
    except BaseException:
        placed.remove()
        raise
    return placed


def actor_nodes(handles: list) -> list[str]:
    """The Ray node id each actor runs on, as the actor itself reports it."""
    import ray

    def node_id(_self) -> str:
        return ray.get_runtime_context().get_node_id()

    return ray.get([h.__ray_call__.remote(node_id) for h in handles])


def cpus_needed(cfg: Config) -> int:
    """Logical CPUs the placement plan reserves (the embedded cluster gets at least this many)."""
    return math.ceil(build_plan(cfg).totals().get("CPU", 0))
