"""`tandem eval`: the unbiased pass@k estimator by hand, and the command on a real checkpoint
(pass@1 and pass@k agree with the per-prompt counts it reports; bad input exits 2 by name).
Agreement with a run's own held-out accuracy: tests/e2e/test_learning.py."""

import json
import math

import pytest

from cluster.cli import main
from cluster.evaluation import pass_at_k, reported_ks


def test_pass_at_k_by_hand():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(5, 2, 3) == pytest.approx(1 - 1 / 10)  # 1 - C(3,3)/C(5,3)
    assert pass_at_k(8, 0, 4) == 0.0 and pass_at_k(8, 5, 4) == 1.0 and pass_at_k(3, 3, 3) == 1.0
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    with pytest.raises(ValueError, match="pass@5 needs at least 5 samples per prompt, got 4"):
        pass_at_k(4, 1, 5)
    assert reported_ks(1) == [1] and reported_ks(8) == [1, 2, 4, 8] and reported_ks(10) == [1, 2, 4, 8, 10]


def test_eval_command_samples_scores_and_writes_its_results(tiny_model, tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["eval", tiny_model, "--data", f"{tiny_model}/data/eval.jsonl", "--verifier", "format", "--limit", "24",
            "--max-new-tokens", "4", "--samples", "4", "--temperature", "1.0", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    counts = [p["correct"] for p in result["per_prompt"]]
    assert result["num_prompts"] == 24 and len(counts) == 24 and 0 < sum(counts) < 24 * 4  # some, not all
    # pass@1 is the mean fraction correct, pass@4 (all 4 samples) the share of prompts with any correct
    assert result["pass_at"]["pass@1"] == pytest.approx(sum(counts) / (24 * 4))
    assert result["pass_at"]["pass@4"] == pytest.approx(sum(c > 0 for c in counts) / 24)
    assert result["pass_at"]["pass@1"] <= result["pass_at"]["pass@2"] <= result["pass_at"]["pass@4"]
    assert f"pass@4    {100 * result['pass_at']['pass@4']:6.2f}%" in printed and f"results: {out}" in printed
    # The same seed gives the same samples: a second evaluation reports the same counts.
    assert main(args) == 0
    assert [p["correct"] for p in json.loads(out.read_text())["per_prompt"]] == counts


@pytest.mark.parametrize("extra, message", [
    (["--verifier", "arithmetc"], "unknown verifier 'arithmetc'; valid names: arithmetic"),
    (["--verifier", "arithmetic", "--samples", "4"], "--samples > 1 with --temperature 0"),
    (["--verifier", "arithmetic", "--answer-key", "solution"], r"eval.jsonl:1: no column 'solution' \(columns: answer"),
])
def test_eval_refuses_bad_input_by_name(tiny_model, capsys, extra, message):
    assert main(["eval", tiny_model, "--data", f"{tiny_model}/data/eval.jsonl", *extra]) == 2
    import re

    assert re.search(message, capsys.readouterr().err)
