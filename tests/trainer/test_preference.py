"""Preference and supervised losses against numpy transcriptions of the papers' formulas,
pair weights, and the held-out metrics on constructed data with known answers."""

import numpy as np
import pytest
import torch

from trainer.data import PreferencePair
from trainer.losses import LOSSES, LossInputs
from trainer.batches import pad_pairs, pair_batch
from trainer.preference import best_worst_pairs, implicit_reward_stats, pair_accuracy, pair_weights
from trainer.types import LossSpec

RNG = np.random.default_rng(7)
PAIRS, WIDTH = 3, 6
# Rows alternate chosen / rejected; answers of different lengths (masks), random token logprobs.
MASK = np.zeros((2 * PAIRS, WIDTH))
for row, n in enumerate([3, 5, 1, 4, 6, 2]):
    MASK[row, WIDTH - n:] = 1.0
LOGP = -RNG.uniform(0.05, 3.0, size=(2 * PAIRS, WIDTH))
REF = -RNG.uniform(0.05, 3.0, size=(2 * PAIRS, WIDTH))
SCORES = RNG.normal(size=2 * PAIRS)
MARGINS = np.repeat([0.5, 0.0, 2.0], 2)


def log_sigmoid(z):
    return -np.log1p(np.exp(-z))


def seq(a):
    return (a * MASK).sum(axis=1)


def mean_logp():
    return seq(LOGP) / MASK.sum(axis=1)


# ---- numpy transcriptions, one pair per entry ----

def np_dpo(beta, eps=0.0):  # Rafailov et al. 2023 eq. 7; cDPO (Mitchell 2023) with eps
    h = (seq(LOGP) - seq(REF))
    z = beta * (h[0::2] - h[1::2])
    return -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)


def np_ipo(beta):  # Azar et al. 2023 eq. 17: (h - 1/(2 tau))^2
    h = seq(LOGP) - seq(REF)
    return (h[0::2] - h[1::2] - 1 / (2 * beta)) ** 2


def np_simpo(beta, gamma):  # Meng et al. 2024 eq. 6
    m = mean_logp()
    return -log_sigmoid(beta * m[0::2] - beta * m[1::2] - gamma)


def np_orpo(lam):  # Hong et al. 2024 eqs. 6-7, length-normalised likelihoods
    m = mean_logp()
    odds = m - np.log(1 - np.exp(m))
    return -m[0::2] - lam * log_sigmoid(odds[0::2] - odds[1::2])


def np_bradley_terry(margin):  # Ouyang et al. 2022; margin as in Touvron et al. 2023 (Llama 2)
    return -log_sigmoid(SCORES[0::2] - SCORES[1::2] - margin[0::2])


def inputs(**extra):
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    return LossInputs(mask=t(MASK), logprobs=t(LOGP), ref_logprobs=t(REF), scores=t(SCORES), **extra)


def step_loss(name, spec, x=None):
    """The loss the learner would optimise: sum(per_token * pair_weights)."""
    per_token, metrics = LOSSES.get(name)(x or inputs(), spec)
    return float((per_token * torch.tensor(pair_weights(MASK))).sum()), per_token, metrics


@pytest.mark.parametrize("name, spec, expected", [
    ("dpo", LossSpec(name="dpo", beta=0.1), lambda: np_dpo(0.1)),
    ("dpo", LossSpec(name="dpo", beta=0.5), lambda: np_dpo(0.5)),
    ("cdpo", LossSpec(name="cdpo", beta=0.3, label_smoothing=0.2), lambda: np_dpo(0.3, 0.2)),
    ("ipo", LossSpec(name="ipo", beta=0.1), lambda: np_ipo(0.1)),
    ("simpo", LossSpec(name="simpo", beta=2.0, simpo_gamma=0.5), lambda: np_simpo(2.0, 0.5)),
    ("orpo", LossSpec(name="orpo", orpo_lambda=0.1), lambda: np_orpo(0.1)),
    ("bradley_terry", LossSpec(name="bradley_terry"), lambda: np_bradley_terry(np.zeros(2 * PAIRS))),
], ids=["dpo", "dpo-beta0.5", "cdpo", "ipo", "simpo", "orpo", "bradley_terry"])
def test_pair_loss_matches_formula(name, spec, expected):
    total, per_token, _ = step_loss(name, spec)
    want = expected()
    # Each pair's loss is constant on its rows' tokens; the weights take the mean over pairs.
    np.testing.assert_allclose(per_token[0::2, 0].numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(per_token[1::2, -1].numpy(), want, rtol=1e-10)
    assert total == pytest.approx(want.mean(), rel=1e-6)  # weights are float32


def test_bradley_terry_margin():
    total, _, metrics = step_loss("bradley_terry", LossSpec(name="bradley_terry"), inputs(margins=torch.tensor(MARGINS)))
    assert total == pytest.approx(np_bradley_terry(MARGINS).mean(), rel=1e-6)
    wins = (SCORES[0::2] > SCORES[1::2]).astype(float)
    np.testing.assert_array_equal(metrics["accuracy"].numpy(), np.repeat(wins, 2))


def test_cdpo_without_smoothing_is_dpo():
    a, _, _ = step_loss("cdpo", LossSpec(name="cdpo", beta=0.2, label_smoothing=0.0))
    b, _, _ = step_loss("dpo", LossSpec(name="dpo", beta=0.2))
    assert a == pytest.approx(b, rel=1e-12)


def test_dpo_metrics_and_gradient_direction():
    x = inputs()
    x.logprobs.requires_grad_(True)
    per_token, metrics = LOSSES.get("dpo")(x, LossSpec(name="dpo", beta=0.1))
    (per_token * torch.tensor(pair_weights(MASK))).sum().backward()
    h = seq(LOGP) - seq(REF)
    np.testing.assert_allclose(metrics["reward_margin"][0::2].numpy(), 0.1 * (h[0::2] - h[1::2]), rtol=1e-10)
    grad = x.logprobs.grad.numpy()
    # Descent raises the chosen answers' logprobs and lowers the rejected ones', on answer tokens only.
    assert np.all(grad[0::2][MASK[0::2] == 1] < 0) and np.all(grad[1::2][MASK[1::2] == 1] > 0)
    assert np.all(grad[MASK == 0] == 0)


def test_reference_losses_need_reference_logprobs():
    x = inputs()
    x.ref_logprobs = None
    with pytest.raises(ValueError, match="'dpo' needs reference logprobs"):
        LOSSES.get("dpo")(x, LossSpec(name="dpo"))
    LOSSES.get("simpo")(x, LossSpec(name="simpo"))  # reference-free


def test_sft_loss_is_token_nll():
    per_token, _ = LOSSES.get("sft")(inputs(), LossSpec(name="sft"))
    np.testing.assert_allclose(per_token.numpy(), -LOGP)


def test_filler_pairs_weigh_nothing():
    pairs = [PreferencePair((1, 5), (6, 7, 2), (8, 2), 0.0), PreferencePair((1, 9, 9), (4, 2), (5, 5, 5, 2), 1.5)]
    batch = pad_pairs(pair_batch(pairs, pad_id=0), 8)
    assert len(batch) == 8 and batch.loss_mask[4:].sum() == 0
    np.testing.assert_array_equal(batch.input_ids[4:6], batch.input_ids[0:2])
    np.testing.assert_array_equal(batch.margins, [0, 0, 1.5, 1.5, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask[0], [0, 0, 1, 1, 1, 0, 0])  # the answer, never the prompt
    w = pair_weights(batch.loss_mask)
    assert w.sum() == pytest.approx(1.0) and w[0, 0] == w[2, 0] == 0.5 and w[4:].sum() == 0
    # The weighted loss and its gradient on the live rows equal those of the 2 pairs without filler
    # (fillers have an empty mask: a loss that divided by it would turn them into nan).
    bare = pair_batch(pairs, pad_id=0)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    logp = t(-RNG.uniform(0.05, 3.0, size=batch.input_ids.shape))
    for name in ("dpo", "simpo", "orpo", "ipo"):
        out = []
        for b, rows in ((batch, 8), (bare, 4)):
            lp = logp[:rows].clone().requires_grad_(True)
            x = LossInputs(mask=t(b.loss_mask), logprobs=lp, ref_logprobs=lp.detach() * 0.5)
            per_token, _ = LOSSES.get(name)(x, LossSpec(name=name))
            loss = (per_token * t(pair_weights(b.loss_mask))).sum()
            loss.backward()
            out.append((loss.item(), lp.grad))
        (padded, g_pad), (alone, g_alone) = out
        assert padded == pytest.approx(alone, rel=1e-12) and abs(alone) > 1e-3, name
        assert torch.equal(g_pad[4:], torch.zeros_like(g_pad[4:])), name
        torch.testing.assert_close(g_pad[:4], g_alone, rtol=1e-12, atol=0)


def test_pair_accuracy_on_a_constructed_dataset():
    # 10 pairs: 6 where chosen scores higher, 1 tie, 3 where rejected wins -> (6 + 0.5) / 10.
    chosen = np.array([3, 2, 5, 1, 0, 9, 4, 2, 1, 7], dtype=float)
    rejected = np.array([1, 1, 4, 0, -1, 3, 4, 5, 6, 8], dtype=float)
    scores = np.stack([chosen, rejected], axis=1).ravel()
    assert pair_accuracy(scores) == pytest.approx(0.65)
    assert pair_accuracy(scores, ties=0.0) == pytest.approx(0.6)


def test_implicit_reward_stats():
    policy = np.array([-1.0, -3.0, -2.0, -1.0])
    reference = np.array([-2.0, -2.0, -2.0, -2.0])
    stats = implicit_reward_stats(policy, reference, beta=0.5)
    # pair 0: 0.5 * (1 - (-1)) = 1.0; pair 1: 0.5 * (0 - 1) = -0.5
    assert stats["margin"] == pytest.approx(0.25) and stats["accuracy"] == 0.5


def test_best_worst_pairs():
    assert best_worst_pairs([0.1, 1.1, 0.0, 1.1]) == (1, 2)
    assert best_worst_pairs([1.0, 1.0, 1.0]) is None
    assert best_worst_pairs([0.0, 0.05], min_gap=0.1) is None


@pytest.mark.parametrize("overrides, message", [
    (["run.mode=dpo"], r"run.mode 'dpo' trains with algorithm.loss one of cdpo, dpo, ipo, orpo, simpo; got 'ppo_clip'"),
    (["run.mode=reward_model", "algorithm.loss=dpo"], r"run.mode 'reward_model' trains with .* bradley_terry"),
    (["algorithm.loss=sft"], r"'sft' is for run.mode 'sft' / 'reward_model', not 'rl'"),
    (["algorithm.loss=dpo", "algorithm.group_size=1", "algorithm.advantage=reinforce_pp",
      "algorithm.group_baseline=false"], r"online DPO .* needs algorithm.group_size >= 2"),
    (["algorithm.loss=dpo", "algorithm.label_smoothing=0.5"], r"'algorithm.label_smoothing'"),
])
def test_mode_and_loss_must_agree(tmp_path, overrides, message):
    from cluster.config import ConfigError, load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: /m}\ndata: {train_path: a.jsonl, eval_path: b.jsonl}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, overrides)


def test_online_dpo_trains_a_pair_per_prompt(tmp_path):
    from cluster.config import ConfigError, load_config
    from cluster.shapes import learner_options

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: /m}\ndata: {train_path: a.jsonl, eval_path: b.jsonl}\n")
    base = ["algorithm.loss=dpo", "algorithm.group_size=8", "controller.prompts_per_step=16", "trainer.num_learners=2"]
    opts = learner_options(load_config(recipe, base + ["trainer.micro_batch_size=8"]))
    assert (opts.micro_batch_size, opts.grad_accum_steps, opts.use_reference) == (8, 2, True)  # 32 rows
    with pytest.raises(ConfigError, match="must be even"):
        learner_options(load_config(recipe, base + ["trainer.micro_batch_size=1"]))
    offline = learner_options(load_config(recipe, ["run.mode=reward_model", "algorithm.loss=bradley_terry",
                                                   "offline.batch_size=8", "trainer.num_learners=2"]))
    assert (offline.model_kind, offline.micro_batch_size, offline.use_reference) == ("reward", 8, False)
