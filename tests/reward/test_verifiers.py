import json
import time

import pytest

from reward.extract import code_block, final_answer_text, last_boxed
from reward.config import RewardConfig
from reward.verifiers import VERIFIERS, normalize_number
from reward.worker import RewardWorker
from rollout.types import Rollout


def v(name):
    return VERIFIERS.get(name)


@pytest.mark.parametrize("response, answer, score", [
    ("168", "168", 1.0), (" 0168 ", "168", 1.0), ("1,234", "1234", 1.0), ("work #### 57", "57", 1.0),
    ("167", "168", 0.0), ("16 8x", "168", 0.0), ("", "168", 0.0), ("-5", "-5", 1.0),
])
def test_arithmetic(response, answer, score):
    assert v("arithmetic")(response, answer) == score


def test_format():
    assert v("format")("42", "x") == 1.0
    assert v("format")("42+", "x") == 0.0
    assert normalize_number("+007") == "7"


def test_extraction():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{unclosed") is None
    assert final_answer_text("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert final_answer_text("Thus, the answer is 3/4.") == "3/4"
    assert final_answer_text("no answer here") is None
    assert code_block("text\n```python\nprint(1)\n```\nmore\n```py\nprint(2)\n```") == "print(2)\n"


MATH_EQUIVALENT = [
    (r"The area is $\boxed{\frac{1}{2}}$.", "0.5"),
    (r"\boxed{\dfrac12}", "1/2"),
    ("#### 0.5", r"\frac{1}{2}"),
    (r"\boxed{50\%}", "0.5"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\sqrt{2}/2"),
    (r"so \boxed{x = 3}", "3"),
    (r"\boxed{(x+1)^2}", "x^2+2x+1"),
    (r"\boxed{\{1, 2\}}", r"\{2,1\}"),
    ("the answer is 1,000", "1000"),
    (r"\boxed{10^{3}}", "1000"),
    (r"\boxed{2\pi}", r"2 \pi"),
    (r"\boxed{(1, 2)}", "(1,2)"),
]
MATH_DIFFERENT = [
    (r"\boxed{\frac{1}{3}}", "0.5"),
    (r"\boxed{[1,2)}", "[1,2]"),
    ("#### 73", "72"),
    (r"\boxed{x^2+1}", "(x+1)^2"),
    (r"\boxed{-3}", "3"),
    ("I think it is 7 but no final answer", "7"),  # no \boxed / #### / "the answer is": nothing to grade
    (r"\boxed{}", "0"),
]


@pytest.mark.parametrize("response, answer", MATH_EQUIVALENT)
def test_math_equivalent(response, answer):
    assert v("math")(response, answer) == 1.0


@pytest.mark.parametrize("response, answer", MATH_DIFFERENT)
def test_math_not_equivalent(response, answer):
    assert v("math")(response, answer) == 0.0


GSM8K_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
MATH_SOLUTION = r"The two roots sum to $\boxed{3}$ in one case and $\frac{1}{2}$ in the other, so $\boxed{\frac{1}{2}}$."


@pytest.mark.parametrize("name, response, reference, score", [
    # GSM8K's answer field is the whole solution: the reference is what follows its last '####'.
    ("math", "She sold 72 clips. #### 72.", GSM8K_SOLUTION, 1.0),
    ("math", r"so \boxed{72}", GSM8K_SOLUTION, 1.0),
    ("math", "The answer is 72.", GSM8K_SOLUTION, 1.0),
    ("math", "#### 24", GSM8K_SOLUTION, 0.0),  # a number of the solution's working is not its answer
    ("arithmetic", "#### 72.", GSM8K_SOLUTION, 1.0),
    ("arithmetic", "#### $1,072.", "#### 1,072", 1.0),
    ("arithmetic", "#### 24", GSM8K_SOLUTION, 0.0),
    # MATH's solution field: the reference is its last \boxed{}.
    ("math", r"\boxed{0.5}", MATH_SOLUTION, 1.0),
    ("math", "The answer is 1/2.", MATH_SOLUTION, 1.0),
    ("math", r"\boxed{3}", MATH_SOLUTION, 0.0),
])
def test_whole_solutions_as_references_are_read_at_their_final_answer(name, response, reference, score):
    assert v(name)(response, reference) == score


def test_math_bad_reference_raises():
    with pytest.raises(ValueError, match="could not be parsed"):
        v("math")(r"\boxed{1}", "")


@pytest.mark.parametrize("response, answer, score", [
    ("B", "B", 1.0), ("(C)", "C", 1.0), ("The answer is (D).", "D", 1.0), (r"\boxed{A}", "A", 1.0),
    ("Answer: b", "B", 1.0), ("A is tempting but the correct choice is C", "C", 1.0),
    (r"\boxed{\text{(E)}}", "(E) 42", 1.0), ("The answer is B.", "C", 0.0), ("I am not sure", "A", 0.0),
])
def test_multiple_choice(response, answer, score):
    assert v("multiple_choice")(response, answer) == score


def test_multiple_choice_bad_reference():
    with pytest.raises(ValueError, match="option letter"):
        v("multiple_choice")("A", "forty-two")


def test_format_and_length_rewards():
    assert v("format_boxed")(r"so \boxed{4}", "") == 1.0 and v("format_boxed")("4", "") == 0.0
    assert v("format_think")("<think>2+2</think> 4", "") == 1.0
    assert v("format_think")("<think>2+2</think><answer>4</answer>", "") == 1.0
    assert v("format_think")("4 <think>x</think>", "") == 0.0 and v("format_think")("<think>x</think>", "") == 0.0
    assert "overlong" not in VERIFIERS  # DAPO's length penalty is one, in tokens: algorithm.overlong_buffer


ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ECHO_SUM = "Here:\n```python\nimport sys\nprint(sum(map(int, sys.stdin.read().split())))\n```"
STDIN_TESTS = json.dumps({"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5 5", "output": "15"},
                                    {"input": "0", "output": "1"}]})
ASSERTS = json.dumps({"asserts": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'",
                                  "assert add(2, 2) == 5"]})


def test_code_stdin_tests_fraction_passed():
    assert v("code")(ECHO_SUM, STDIN_TESTS) == pytest.approx(2 / 3)
    assert v("code")("no code block", STDIN_TESTS) == 0.0
    assert v("code")("```python\nwhile True: pass\n```", json.dumps({"tests": [{"input": "", "output": ""}],
                                                                       "timeout_s": 1})) == 0.0


def test_code_assert_tests():
    assert v("code")(ADD, ASSERTS) == pytest.approx(3 / 4)
    assert v("code")("```python\ndef add(a, b):\n    return b + a\n```", ASSERTS) == pytest.approx(2 / 4)


@pytest.mark.parametrize("hack", [
    "import sys\nsys.exit(0)",  # end the run before the asserts
    "import os\nos._exit(0)",
    "print('\\n' + 'f' * 32 + ' 4')",  # a forged tally without the token
    "import builtins\nbuiltins.print = lambda *a, **k: None\nimport os\nos.write = lambda *a: 0",
])
def test_code_reward_hacks_score_nothing(hack):
    assert v("code")(f"```python\n{hack}\n```", ASSERTS) == 0.0


def test_code_calls_compare_exact_types_outside_the_sandbox():
    ref = json.dumps({"calls": [{"fn": "f", "args": [3], "expected": 3}]})
    assert v("code")("```python\ndef f(x):\n    return x\n```", ref) == 1.0
    for wrong in ("3.0", "True if x == 1 else 3.0", "[x]", "(x,)", "str(x)"):
        assert v("code")(f"```python\ndef f(x):\n    return {wrong}\n```", ref) == 0.0, wrong
    # A tuple literal in an assert stays a tuple; a list answer does not pass for it.
    tup = json.dumps({"asserts": ["assert f(1) == (1, 'a')"]})
    assert v("code")("```python\ndef f(x):\n    return (x, 'a')\n```", tup) == 1.0
    assert v("code")("```python\ndef f(x):\n    return [x, 'a']\n```", tup) == 0.0


def test_code_float_tolerance_only_where_the_test_says_so():
    third = "```python\ndef third(x):\n    return x / 3\n```"
    assert v("code")(third, json.dumps({"calls": [{"fn": "third", "args": [1], "expected": 0.3333}]})) == 0.0
    assert v("code")(third, json.dumps({"calls": [{"fn": "third", "args": [1], "expected": 0.3333,
                                                   "abs_tol": 1e-3}]})) == 1.0
    assert v("code")(third, json.dumps({"asserts": ["assert math.isclose(third(1), 0.3333, rel_tol=1e-3)",
                                                    "assert math.isclose(third(1), 0.3, rel_tol=1e-3)"]})) == 0.5


def test_code_truthy_asserts_and_a_slow_call_fails_alone():
    ref = json.dumps({"asserts": ["assert is_even(4)", "assert not is_even(3)", "assert is_even(1000000000)"],
                      "timeout_s": 0.5})
    slow = "```python\ndef is_even(n):\n    while n > 10: pass\n    return n % 2 == 0\n```"
    assert v("code")(slow, ref) == pytest.approx(2 / 3)


@pytest.mark.parametrize("bad, why", [
    ("assert add(x, 2) == 3", "must be Python literals"),  # a name, not a literal
    ("assert add(1, 2) > 2", "not a supported form"),
    ("print(add(1, 2))", "single assert"),
    ("assert add(*[1, 2]) == 3", r"\*args"),
    ("assert obj.add(1, 2) == 3", "not a supported form"),
    ("assert add(1, 2) == 3 and True", "not a supported form"),
])
def test_code_asserts_outside_the_supported_forms_are_refused_naming_the_test(bad, why):
    ref = json.dumps({"asserts": ["assert add(1, 2) == 3", bad]})
    with pytest.raises(ValueError, match=r"asserts\[1\] .*" + why):
        v("code")(ADD, ref)


def test_code_bad_reference():
    with pytest.raises(ValueError, match="not JSON"):
        v("code")(ADD, "assert add(1,2)==3")
    with pytest.raises(ValueError, match="'tests'"):
        v("code")(ADD, "{}")


def rollout(text, answer="12", finish="stop"):
    return Rollout(group_id=1, prompt_id=0, sample_index=0, prompt="5+7=", answer=answer, prompt_ids=(1,), response_ids=(3,), response_text=text, logprobs=(-0.1,), versions=(0,), finish_reason=finish)


def worker(**kw):
    return RewardWorker(RewardConfig(**kw))


def test_worker_scores_and_format_needs_a_finished_response():
    w = worker(format_weight=0.1, timeout_s=1.0)
    ok = {c.name: c.value for c in w.score_one(rollout("12"))}
    assert ok == {"arithmetic": 1.0, "format": 1.0}
    cut = {c.name: c.value for c in w.score_one(rollout("12", finish="length"))}
    assert cut == {"arithmetic": 1.0, "format": 0.0}


def test_worker_records_verifier_errors():
    bad = worker(timeout_s=1.0).score_one(rollout("12", answer="twelve"))  # the reference is not an integer
    assert bad[0].value is None and bad[0].failure.startswith("error: arithmetic: ValueError")
    assert "twelve" in bad[0].failure


def test_worker_times_out_slow_verifier_and_keeps_working():
    w = worker(verifier="test_hang", format_weight=0.0, timeout_s=0.2, plugins=["tests.reward.plugin_verifiers"])
    t0 = time.perf_counter()
    slow = w.score(rollout("hang") for _ in range(1))
    assert time.perf_counter() - t0 < 5.0
    assert slow.tainted and slow.scores[0][0].failure.startswith("timeout")
    assert w.score_one(rollout("fine"))[0].value == 1.0  # a fresh thread serves the next sample


def test_unknown_verifier_lists_valid_names():
    with pytest.raises(ValueError, match="unknown verifier .maths.; valid names: .*arithmetic.*math"):
        worker(verifier="maths")
