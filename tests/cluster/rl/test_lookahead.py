"""The adaptive lookahead (cluster/rl/lookahead.py): the fewest steps ahead that are as fast as
more, measured from step times, re-measured as the run's balance changes."""

import json
import random

import pytest

from cluster.rl.lookahead import EARLY, EXPIRE, WINDOW, Lookahead


def run(look, steps, step_s, seed=0):
    """Feed `steps` step times (step_s(depth, step) with +-3% noise); the depth at each step."""
    rng, depths = random.Random(seed), []
    for step in range(steps):
        depths.append(look.depth)
        look.observe(step_s(look.depth, step) * rng.uniform(0.97, 1.03))
    return depths


def test_it_steps_down_to_synchronous_when_depth_buys_nothing_despite_noise():
    look = Lookahead(3, "adaptive")
    depths = run(look, 2 * EXPIRE, lambda depth, step: 1.0)
    # k = 3: a first window unmeasured (start-up), then each depth settles 3 steps and is measured
    # over WINDOW before the next one down; then depth 0 until its neighbour's figure expires (one
    # window at 1), and 0 again.
    descent = WINDOW + 3 * (3 + WINDOW)
    assert 0 not in depths[:descent] and depths[descent:EXPIRE] == [0] * (EXPIRE - descent)
    assert look.chosen == 0 and depths.count(0) >= len(depths) - descent - 2 * (3 + WINDOW)


def test_it_stops_where_one_step_less_is_slower_and_follows_a_change_of_balance():
    """Depth 1 is as fast as 2, depth 0 is 40% slower: it settles at 1. Later generation slows
    (only depth 2 hides it): the next measurements move it back up to 2."""
    look = Lookahead(2, "adaptive")
    before = run(look, EXPIRE + 50, lambda depth, step: 1.4 if depth == 0 else 1.0)
    # Start-up, 2, 1: one window each; 0 (40% slower) ends after EARLY steps; then 1 until the
    # figures expire.
    descent = WINDOW + 2 * (2 + WINDOW) + 2 + EARLY
    assert before[descent - 2 - EARLY:descent] == [0] * (2 + EARLY) and before[descent] == 1
    assert before[descent:EXPIRE] == [1] * (EXPIRE - descent) and look.chosen == 1
    after = run(look, 2 * EXPIRE, lambda depth, step: {0: 2.0, 1: 1.5, 2: 1.0}[depth], seed=1)
    assert look.chosen == 2 and after[-50:] == [2] * 50


def test_eager_and_k0_never_move():
    eager, sync = Lookahead(2, "eager"), Lookahead(0, "adaptive")
    assert set(run(eager, 100, lambda depth, step: 1.0 + depth)) == {2}
    assert set(run(sync, 100, lambda depth, step: 1.0)) == {0}


def test_it_survives_a_checkpoint_and_an_unknown_mode_is_refused():
    look = Lookahead(2, "adaptive")
    run(look, 40, lambda depth, step: 1.0)
    again = Lookahead(2, "adaptive")
    again.restore(json.loads(json.dumps(look.state())))
    assert again.state() == look.state() and again.means == look.means
    with pytest.raises(ValueError, match=r"controller.lookahead 'lazy' is not valid \(valid: adaptive, eager\)"):
        Lookahead(2, "lazy")
