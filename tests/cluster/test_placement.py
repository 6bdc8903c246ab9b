"""The placement plan computed from a recipe, and the fit check against a cluster's nodes.
(Placement on a real multi-node Ray cluster: tests/e2e/test_multinode.py.)"""

from pathlib import Path

import pytest

from cluster.cli import main
from cluster.config import ConfigError, load_config
from cluster.placement import Node, Placement, PlacementError, build_plan, check_fit, nodes_needed, plan_for

# The quickstart's roles (2 learner ranks, 1 rollout worker with 2 threads, 1 reward worker),
# without the sections placement does not read.
RECIPE = """
model: {path: /models/x}
data: {train_path: a.jsonl, eval_path: b.jsonl}
rollout: {num_workers: 1, threads_per_worker: 2}
trainer: {num_learners: 2, threads_per_learner: 1, micro_batch_size: 128}
controller: {prompts_per_step: 64}
algorithm: {group_size: 8}
"""


@pytest.fixture(autouse=True)
def recipe(tmp_path, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    monkeypatch.setitem(globals(), "QUICKSTART", path)
    return path


def plan(*overrides):
    return build_plan(load_config(QUICKSTART, list(overrides)))


def test_disaggregated_plan_of_the_quickstart():
    p = plan()
    assert [(g.name, g.strategy, g.bundles) for g in p.groups] == [
        ("learner", "PACK", ({"CPU": 1.0}, {"CPU": 1.0})),
        ("rollout", "PACK", ({"CPU": 2.0},)),
    ]
    assert [(s.group, s.bundle) for s in p.actors["learner"]] == [(0, 0), (0, 1)]
    assert [(s.group, s.bundle) for s in p.actors["rollout"]] == [(1, 0)]
    assert [s.group for s in p.actors["reward"]] == [-1]  # zero resources: nothing to reserve
    assert p.totals() == {"CPU": 4.0}


def test_gpus_disaggregated_vs_colocated():
    gpu = ["cluster.gpus_per_learner=1", "cluster.gpus_per_engine=1", "trainer.num_learners=2",
           "rollout.num_workers=2", "rollout.threads_per_worker=1"]
    assert plan(*gpu).totals() == {"CPU": 4.0, "GPU": 4.0}
    co = plan(*gpu, "cluster.placement=colocated")
    # Learner rank k and engine k share bundle k and its GPU, half each (time-sliced).
    assert co.totals() == {"CPU": 4.0, "GPU": 2.0}
    assert [g.name for g in co.groups] == ["colocated"]
    assert [s.resources for s in co.actors["learner"]] == [{"CPU": 1.0, "GPU": 0.5}] * 2
    assert [(s.bundle, s.resources) for s in co.actors["rollout"]] == [(0, {"CPU": 1.0, "GPU": 0.5}),
                                                                       (1, {"CPU": 1.0, "GPU": 0.5})]


def test_colocated_uneven_counts_give_unshared_bundles_a_whole_gpu():
    co = plan("cluster.gpus_per_learner=1", "cluster.gpus_per_engine=1", "cluster.placement=colocated")
    assert co.groups[0].bundles == ({"CPU": 3.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 1.0})
    assert [s.resources["GPU"] for s in co.actors["learner"]] == [0.5, 1.0]


def test_tensor_parallel_engines_get_one_strict_pack_group_each():
    demands = {"learner": (2, {"CPU": 1, "GPU": 1}), "rollout": (2, {"CPU": 2, "GPU": 1}), "reward": (1, {"CPU": 1})}
    p = plan_for(demands, "disaggregated", "PACK", tp=4)
    assert [(g.name, g.strategy, len(g.bundles)) for g in p.groups] == [
        ("learner", "PACK", 2), ("rollout-0", "STRICT_PACK", 4), ("rollout-1", "STRICT_PACK", 4), ("reward", "PACK", 1)]
    assert p.groups[1].bundles[0] == {"CPU": 2.0, "GPU": 1.0} and p.groups[1].bundles[3] == {"GPU": 1.0}
    assert [(s.group, s.bundle) for s in p.actors["rollout"]] == [(1, 0), (2, 0)]
    # The actor takes its CPUs only: vLLM's Ray workers take the 4 bundles' GPUs, the first one's too.
    assert [s.resources for s in p.actors["rollout"]] == [{"CPU": 2.0}] * 2
    assert p.totals()["GPU"] == 2 + 2 * 4
    assert "2 actor(s) x TP 4" in p.describe()
    # Its actor's scheduling: bundle 0 of its own group, vLLM's workers started inside that group.
    opts = Placement(p, groups=[f"pg{i}" for i in range(len(p.groups))]).options("rollout")
    strategies = [o["scheduling_strategy"] for o in opts]
    assert [(st.placement_group, st.placement_group_bundle_index) for st in strategies] == [("pg1", 0), ("pg2", 0)]
    assert all(st.placement_group_capture_child_tasks for st in strategies) and opts[0]["num_gpus"] == 0
    co = plan_for(demands, "colocated", "PACK", tp=4)  # 8 shards over 8 GPUs; learners on the first 2
    assert len(co.groups[0].bundles) == 8 and co.totals()["GPU"] == 8
    assert [s.bundle for s in co.actors["rollout"]] == [0, 4]


def test_custom_resources_pin_roles_and_reward_cpus_reserve():
    p = plan("cluster.resources={learner: {a100: 1}, reward: {cpu_pool: 1}}", "cluster.cpus_per_reward_worker=1",
             "cluster.strategy=STRICT_SPREAD")
    assert p.groups[0].bundles == ({"CPU": 1.0, "a100": 1.0},) * 2 and p.groups[0].strategy == "STRICT_SPREAD"
    assert p.groups[2].name == "reward" and p.groups[2].bundles == ({"CPU": 1.0, "cpu_pool": 1.0},)


def test_critic_has_a_group_of_its_own(tmp_path):
    p = plan("algorithm.advantage=gae", "critic.enabled=true", "critic.num_learners=2",
             "cluster.resources={critic: {big_mem: 1}}")
    names = [g.name for g in p.groups]
    assert "critic" in names and len(p.actors["critic"]) == 2
    assert p.groups[names.index("critic")].bundles == ({"CPU": 1.0, "big_mem": 1.0},) * 2
    assert "critic" not in plan().actors


def test_a_reward_model_on_cuda_gets_a_gpu_in_the_plan():
    """The reward-model actor's GPU is reserved with the rest, so a cluster without one fails the
    fit check at once instead of leaving the actor pending in Ray's queue."""
    rm = ["reward.components={reward_model: 1.0}", "reward.reward_model_path=/models/rm"]
    p = plan(*rm, "reward.reward_model_device=cuda", "cluster.resources={reward_model: {rm_node: 1}}")
    assert p.groups[-1].name == "reward_model" and p.groups[-1].bundles == ({"GPU": 1.0, "rm_node": 1.0},)
    assert [(s.group, s.resources) for s in p.actors["reward_model"]] == [(len(p.groups) - 1,
                                                                         {"GPU": 1.0, "rm_node": 1.0})]
    assert p.totals()["GPU"] == 1 and "reward_model 1 actor(s), asking {GPU: 1" in p.describe()
    with pytest.raises(PlacementError, match=r"group reward_model bundle 0 \{GPU: 1, rm_node: 1\} fits on no node"):
        check_fit(p, CPU_NODES)
    on_cpu = plan(*rm)
    assert [s.group for s in on_cpu.actors["reward_model"]] == [-1] and "GPU" not in on_cpu.totals()
    assert "reward_model" not in plan().actors  # no reward model, no actor


def test_bad_placement_fields_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster.gpus_per_engine=2.*'hf' engine"):
        plan("cluster.gpus_per_engine=2")
    with pytest.raises(ConfigError, match=r"cluster.resources.judge.*'learner', 'rollout', 'reward', 'critic' or "
                                          r"'reward_model'"):
        plan("cluster.resources={judge: {x: 1}}")
    with pytest.raises(ConfigError, match=r"unknown key 'cluster.placment': did you mean 'placement'"):
        plan("cluster.placment=colocated")


CPU_NODES = [Node("10.0.0.1 (aaaa)", {"CPU": 4.0}), Node("10.0.0.2 (bbbb)", {"CPU": 4.0})]


def test_fit_passes_when_it_fits():
    check_fit(plan(), CPU_NODES)
    check_fit(plan("cluster.strategy=STRICT_SPREAD"), CPU_NODES)  # 2 learner bundles on 2 nodes


def test_fit_error_says_what_was_asked_and_what_exists():
    with pytest.raises(PlacementError) as err:
        check_fit(plan("cluster.gpus_per_learner=1"), CPU_NODES)
    text = str(err.value)
    assert "GPU: the plan reserves 2, the cluster has 0 in total" in text
    assert "group learner bundle 0 {CPU: 1, GPU: 1} fits on no node" in text
    assert "10.0.0.1 (aaaa): {CPU: 4}" in text and "10.0.0.2 (bbbb): {CPU: 4}" in text  # what exists
    assert "learner  2 actor(s), asking {CPU: 1, GPU: 1}" in text  # what was asked
    assert "cluster.gpus_per_learner" in text


def test_fit_catches_bundles_and_strict_groups_no_node_holds():
    with pytest.raises(PlacementError, match=r"group rollout bundle 0 \{CPU: 6\} fits on no node"):
        check_fit(plan("rollout.threads_per_worker=6"), CPU_NODES)  # 8 CPUs in total, but 4 per node
    with pytest.raises(PlacementError, match=r"STRICT_SPREAD: 3 bundles need as many nodes; 2 node\(s\)"):
        check_fit(plan("cluster.strategy=STRICT_SPREAD", "trainer.num_learners=3", "controller.prompts_per_step=3",
                       "algorithm.group_size=8", "trainer.micro_batch_size=8"), CPU_NODES)
    with pytest.raises(PlacementError, match=r"STRICT_PACK: all of \{CPU: 6\} must fit on one node"):
        check_fit(plan("cluster.strategy=STRICT_PACK", "trainer.threads_per_learner=3"), CPU_NODES)


def test_nodes_needed_for_gpus():
    gpus = plan("cluster.gpus_per_learner=1", "cluster.gpus_per_engine=1")  # 3 GPUs
    assert nodes_needed(gpus, 2) == 2 and nodes_needed(gpus, 8) == 1 and nodes_needed(plan(), 0) == 1
    with pytest.raises(ConfigError, match="cluster.gpus_per_node is 0"):
        nodes_needed(gpus, 0)


def test_dry_run_prints_the_plan_and_starts_nothing(capsys):
    import ray

    assert main(["run", str(QUICKSTART), "--dry-run", "cluster.placement=colocated"]) == 0
    out = capsys.readouterr().out
    assert "placement plan (colocated)" in out and "group colocated" in out and "total reserved: {CPU: 4}" in out
    assert not ray.is_initialized()


def test_dry_run_reports_config_errors(capsys):
    assert main(["run", str(QUICKSTART), "--dry-run", "cluster.gpus_per_engine=2"]) == 2
    assert "cluster.gpus_per_engine=2" in capsys.readouterr().err


GPU_RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*qwen2.5*.yaml"))
GPU_BOX = [Node("10.0.0.1 (gpu box)", {"CPU": 64.0, "GPU": 8.0})]


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.name)
def test_gpu_recipes_ask_for_the_gpus_their_header_names(recipe, capsys):
    """Every Qwen2.5 recipe reserves one GPU per learner, critic and engine (the count its
    header names), RL recipes generate with vLLM on the chat template, the plan fits the one
    8-GPU node it was written for and not a CPU cluster, and --dry-run prints GPUs."""
    import re

    cfg = load_config(recipe)
    gpus = cfg.trainer.num_learners + (cfg.critic.num_learners if cfg.critic.enabled else 0)
    if cfg.run.mode == "rl":
        assert cfg.rollout.engine == "vllm" and cfg.data.chat_template is True
        gpus += cfg.rollout.num_workers * cfg.cluster.gpus_per_engine
    assert build_plan(cfg).totals()["GPU"] == gpus
    header = re.search(r"# Hardware: (\d+) GPUs", recipe.read_text())
    assert header and int(header.group(1)) == gpus == 8
    check_fit(build_plan(cfg), GPU_BOX)
    with pytest.raises(PlacementError, match=f"GPU: the plan reserves {gpus}, the cluster has 0"):
        check_fit(build_plan(cfg), CPU_NODES)
    assert main(["run", str(recipe), "--dry-run"]) == 0
    assert f"GPU: {gpus}" in capsys.readouterr().out
