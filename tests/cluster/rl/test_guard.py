"""The numerics guard: streaks past a limit stop the run with a diagnosis; one good step resets them."""

import json
import math

import pytest

from cluster.rl.guard import Guard, GuardError


def test_a_metric_past_its_limit_for_patience_steps_stops_the_run_naming_it():
    guard = Guard({"grad_norm": 10.0, "kl": 0.5}, patience=3, nonfinite_steps=2)
    guard.check(1, {"grad_norm": 12.0, "kl": 0.1})
    guard.check(2, {"grad_norm": 11.0, "kl": 0.1})
    guard.check(3, {"grad_norm": 9.0, "kl": 0.1})  # back under: the streak starts again
    guard.check(4, {"grad_norm": 50.0, "kl": 0.1})
    guard.check(5, {"grad_norm": math.inf, "kl": 0.1})  # not finite counts as past the limit
    with pytest.raises(GuardError) as err:
        guard.check(6, {"grad_norm": 13.0, "kl": 0.1})
    message = str(err.value)
    assert message.startswith("grad_norm: 3 steps in a row past controller.guard.grad_norm=10 "
                              "(step 4: 50, step 5: inf, step 6: 13)")
    assert "learning rate is too high (trainer.lr)" in message


def test_metrics_a_run_does_not_measure_are_not_judged():
    guard = Guard({"kl": 0.5}, patience=1, nonfinite_steps=1)
    guard.check(1, {"grad_norm": 1e9})  # no kl in the row (no reference model), no limit on grad_norm
    with pytest.raises(GuardError, match=r"^kl: 1 step in a row past controller.guard.kl=0.5 \(step 2: 0.7\)"):
        guard.check(2, {"kl": 0.7})


def test_non_finite_steps_are_counted_and_stop_the_run_after_a_streak():
    guard = Guard({"grad_norm": 10.0}, patience=3, nonfinite_steps=2)
    guard.check(1, {"nonfinite": True, "loss": math.nan})
    guard.check(2, {"grad_norm": 1.0})
    guard.check(3, {"nonfinite": True, "loss": math.nan})
    assert guard.skipped == 2
    with pytest.raises(GuardError, match=r"^nonfinite: 2 steps in a row had a non-finite loss or gradient "
                                         r"\(step 3: nan, step 4: nan\). Likely cause: .*trainer.lr"):
        guard.check(4, {"nonfinite": True, "loss": math.nan})


def test_the_streaks_survive_a_checkpoint():
    guard = Guard({"is_weight_max": 20.0}, patience=2, nonfinite_steps=3)
    guard.check(7, {"is_weight_max": 40.0})
    restored = Guard({"is_weight_max": 20.0}, patience=2, nonfinite_steps=3)
    restored.restore(json.loads(json.dumps(guard.state())))
    with pytest.raises(GuardError, match=r"step 7: 40, step 8: 25\). Likely cause: .*off-policy"):
        restored.check(8, {"is_weight_max": 25.0})


def test_an_unknown_metric_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"\['loss'\] are not guarded metrics \(valid: \['grad_norm', 'is_weight_max'"):
        Guard({"loss": 1.0}, patience=1, nonfinite_steps=1)
