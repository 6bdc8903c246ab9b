from pathlib import Path

import pytest

from cluster.config import Config, ConfigError, load_config, parse_overrides
from cluster.shapes import learner_options

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


MINIMAL = """
model: {path: /models/x}
data: {train_path: a.jsonl, eval_path: b.jsonl}
"""


def test_there_are_recipes():
    assert RECIPES, "recipes/ holds no YAML recipe"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, Config)
    learner_options(cfg)  # batch shapes of every recipe are consistent


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["trainer.lr=3e-5", "controller.steps=7", "run.name=abc"])
    assert cfg.trainer.lr == pytest.approx(3e-5)
    assert cfg.controller.steps == 7 and cfg.run.name == "abc"
    assert cfg.controller.max_staleness == 0
    assert cfg.algorithm.name == "grpo"


def test_unknown_key_names_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.lrr': did you mean 'lr'\?"):
        load_config(write(tmp_path, MINIMAL + "trainer: {lrr: 0.1}\n"))


def test_unknown_section_names_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainr': did you mean 'trainer'\?"):
        load_config(write(tmp_path, MINIMAL), ["trainr.lr=0.1"])


def test_wrong_type_names_field(tmp_path):
    with pytest.raises(ConfigError, match=r"'trainer.lr'.*got 'fast'"):
        load_config(write(tmp_path, MINIMAL + "trainer: {lr: fast}\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'model.path'"):
        load_config(write(tmp_path, "model: {}\ndata: {train_path: a, eval_path: b}\n"))


def test_async_settings(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["controller.max_staleness=2", "rollout.in_flight=finish"])
    assert cfg.controller.max_staleness == 2 and cfg.rollout.in_flight == "finish"
    with pytest.raises(ConfigError, match=r"controller.max_staleness"):
        load_config(write(tmp_path, MINIMAL), ["controller.max_staleness=-1"])
    with pytest.raises(ConfigError, match=r"rollout.in_flight"):
        load_config(write(tmp_path, MINIMAL), ["rollout.in_flight=later"])


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(Exception):
        cfg.trainer.lr = 1.0


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["trainer.lr"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")


def test_batch_shape_checked(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["controller.prompts_per_step=3", "algorithm.group_size=3",
                                                 "trainer.num_learners=2"])
    with pytest.raises(ConfigError, match="trainer.num_learners=2"):
        learner_options(cfg)


def test_grad_accumulation_from_micro_batch(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["controller.prompts_per_step=16", "algorithm.group_size=8",
                                                 "trainer.num_learners=2", "trainer.micro_batch_size=16"])
    opts = learner_options(cfg)
    assert (opts.micro_batch_size, opts.grad_accum_steps) == (16, 4)


def _fields(model, prefix=""):
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{prefix}{name}.")
        else:
            yield prefix, name


def test_config_reference_names_every_field():
    doc = (ROOT / "docs" / "config.md").read_text()
    missing = [p + n for p, n in _fields(Config) if f"`{n}`" not in doc]
    assert not missing, f"docs/config.md does not describe: {missing}"


@pytest.mark.parametrize("override, message", [
    ("algorithm.advantage=gaee", "unknown advantage estimator 'gaee'; valid names: gae, grpo"),
    ("algorithm.loss=value_clip", "'value_clip' is a critic loss"),
    ("algorithm.loss_agg=mean", "unknown loss aggregation 'mean'"),
    ("algorithm.kl_estimator=k9", "unknown KL estimator 'k9'"),
])
def test_algorithm_names_are_checked_against_the_registries(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL), [override])


def test_k1_in_the_loss_is_refused_with_what_to_use(tmp_path):
    recipe = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="kl_estimator 'k1' with kl_in 'loss'.*'k3' or 'k2', or kl_in 'reward'"):
        load_config(recipe, ["algorithm.kl_coef=0.05", "algorithm.kl_estimator=k1"])
    ok = load_config(recipe, ["algorithm.kl_coef=0.05", "algorithm.kl_estimator=k1", "algorithm.kl_in=reward"])
    assert ok.algorithm.kl_estimator == "k1"
    assert load_config(recipe, ["algorithm.kl_estimator=k1"]).algorithm.kl_coef == 0  # no penalty: nothing to refuse


def test_gspo_gets_its_own_clip_range_and_aggregation(tmp_path):
    recipe = write(tmp_path, MINIMAL)
    a = load_config(recipe, ["algorithm.loss=gspo"]).algorithm
    assert (a.clip_eps, a.clip_eps_high, a.loss_agg) == (3e-4, 4e-4, "seq-mean-token-mean")
    assert load_config(recipe, ["algorithm.loss=gspo", "algorithm.clip_eps=5e-4"]).algorithm.clip_eps == 5e-4
    with pytest.raises(ConfigError, match="clip_eps=0.2 with loss 'gspo'"):
        load_config(recipe, ["algorithm.loss=gspo", "algorithm.clip_eps=0.2"])
    with pytest.raises(ConfigError, match="clip_eps_high=0.2 with loss 'gspo'"):  # the high side as well
        load_config(recipe, ["algorithm.loss=gspo", "algorithm.clip_eps_high=0.2"])
    assert load_config(recipe).algorithm.clip_eps == 0.2  # PPO keeps PPO's


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_top_p_below_one_is_refused_for_every_engine(tmp_path, engine):
    with pytest.raises(ConfigError, match=f"rollout.top_p=0.9 with rollout.engine '{engine}'"):
        load_config(write(tmp_path, MINIMAL), [f"rollout.engine={engine}", "rollout.top_p=0.9"])


def test_colocated_placement_checks_what_can_time_slice(tmp_path):
    recipe = write(tmp_path, MINIMAL)
    ok = load_config(recipe, ["cluster.placement=colocated", "rollout.sleep_level=2"])
    assert ok.rollout.sleep_level == 2 and ok.trainer.zero_stage == 2
    for stage in (0, 3):
        with pytest.raises(ConfigError, match=f"colocated' with trainer.zero_stage {stage}.*use trainer.zero_stage 1 or 2"):
            load_config(recipe, ["cluster.placement=colocated", f"trainer.zero_stage={stage}"])
    with pytest.raises(ConfigError, match="colocated' with rollout.engine 'vllm' on CPU"):
        load_config(recipe, ["cluster.placement=colocated", "rollout.engine=vllm"])
    gpus = ["cluster.placement=colocated", "rollout.engine=vllm", "cluster.gpus_per_engine=1",
            "cluster.gpus_per_learner=1"]
    assert load_config(recipe, gpus).cluster.gpus_per_engine == 1
    with pytest.raises(ConfigError, match=r"colocated' with a tensor-parallel engine \(cluster.gpus_per_engine=2\)"):
        load_config(recipe, gpus[:2] + ["cluster.gpus_per_engine=2", "cluster.gpus_per_learner=1"])
    with pytest.raises(ConfigError, match="rollout.sleep_level"):
        load_config(recipe, ["rollout.sleep_level=3"])
    assert load_config(recipe, ["trainer.zero_stage=3"]).trainer.zero_stage == 3  # disaggregated: any stage


def test_noisy_verifier_corrections_need_a_binary_reward_and_informative_rates(tmp_path):
    def load(*overrides):
        return load_config(write(tmp_path, MINIMAL), ["algorithm.advantage=noisy_backward", *overrides])

    with pytest.raises(ConfigError, match=r"corrects a binary verifier's errors: set reward.format_weight 0"):
        load()  # the default format weight 0.1 makes rewards 0, 0.1, 1, 1.1
    with pytest.raises(ConfigError, match=r"verifier_fp_rate \+ verifier_fn_rate = 1.0: at 1 or more"):
        load("reward.format_weight=0", "algorithm.verifier_fp_rate=0.5", "algorithm.verifier_fn_rate=0.5")
    cfg = load("reward.format_weight=0", "algorithm.verifier_fp_rate=0.1", "algorithm.verifier_fn_rate=0.2")
    assert (cfg.algorithm.verifier_fp_rate, cfg.algorithm.verifier_fn_rate) == (0.1, 0.2)
