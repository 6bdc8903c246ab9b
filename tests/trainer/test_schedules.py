"""Learning-rate schedules against values worked out by hand, and their place in the config."""

import math

import pytest

from cluster.config import ConfigError, load_config
from cluster.shapes import critic_options, learner_options
from trainer.schedules import SCHEDULES, Schedule


def multipliers(name, total, warmup=0, min_ratio=0.0, steps=None):
    s = Schedule(name, total, warmup, min_ratio)
    return [s(i) for i in range(steps if steps is not None else total)]


def test_constant_with_warm_up_reaches_the_full_rate_at_the_last_warm_up_step():
    # 4 warm-up steps: 1/4, 2/4, 3/4, 4/4, then the full rate (no step at lr 0).
    assert multipliers("constant", 6, warmup=4) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert multipliers("constant", 3) == [1.0, 1.0, 1.0]


def test_linear_decays_over_the_steps_after_warm_up():
    # total 6, warm-up 2: steps 0-1 warm up; steps 2..5 have progress 0, 1/4, 2/4, 3/4.
    assert multipliers("linear", 6, warmup=2) == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    # with a floor of 0.2: 0.2 + 0.8 x (1 - p); past the end it stays at the floor.
    assert multipliers("linear", 4, min_ratio=0.2, steps=6) == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])


def test_cosine_follows_half_a_cosine():
    # total 5, no warm-up: p = 0, 0.2, 0.4, 0.6, 0.8 -> (1 + cos(pi p)) / 2
    want = [1.0, 0.9045084971874737, 0.6545084971874737, 0.34549150281252633, 0.09549150281252633]
    assert multipliers("cosine", 5) == pytest.approx(want, abs=1e-12)
    # floor 0.1 and warm-up 1: 1.0 at step 0, then 0.1 + 0.9 x (1 + cos(pi (i - 1) / 3)) / 2
    assert multipliers("cosine", 4, warmup=1, min_ratio=0.1) == pytest.approx(
        [1.0, 1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.25])
    assert math.isclose(Schedule("cosine", 4)(100), 0.0, abs_tol=1e-15)


def test_unknown_schedule_is_refused_with_the_valid_names():
    with pytest.raises(KeyError, match="unknown learning-rate schedule 'step'; valid names: constant, cosine, linear"):
        Schedule("step", 10)
    assert SCHEDULES.names() == ["constant", "cosine", "linear"]


def test_the_config_gives_each_learner_group_its_schedule_over_its_optimizer_steps():
    cfg = load_config("recipes/ppo_quickstart.yaml", [
        "controller.steps=10", "critic.warmup_steps=3", "trainer.updates_per_batch=2", "trainer.lr_schedule=cosine",
        "trainer.lr_warmup_steps=2", "trainer.min_lr_ratio=0.1", "critic.lr_schedule=linear"])
    # the policy trains in steps 4..10 (7 steps) x 2 updates; the critic in all 10 x 2
    assert learner_options(cfg).schedule == Schedule("cosine", 14, 2, 0.1)
    assert critic_options(cfg).schedule == Schedule("linear", 20, 0, 0.0)
    with pytest.raises(ConfigError, match=r"'trainer.lr_schedule': Value error, unknown learning-rate schedule "
                                          r"'cosin'; valid names: constant, cosine, linear"):
        load_config("recipes/quickstart.yaml", ["trainer.lr_schedule=cosin"])
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.warmup_steps': did you mean 'lr_warmup_steps'\?"):
        load_config("recipes/quickstart.yaml", ["trainer.warmup_steps=5"])
