"""Rule-based verifiers: one signature `fn(response: str, answer: str, **options) -> float`.

Registered by name; `RewardConfig.verifier` picks the correctness verifier, `format` is
added with `RewardConfig.format_weight`, `RewardConfig.components` adds any others with
weights, and `RewardConfig.verifier_options` passes keyword options (e.g. the code
verifier's limits). A verifier raises on a malformed *reference* (a data bug, recorded as
a failure by the pool); a malformed *response* simply scores 0.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from typing import Optional

from reward.extract import code_block, final_answer_text, last_boxed
from rollout.registry import Registry

VERIFIERS: Registry = Registry("verifier")

_INT = re.compile(r"^[+-]?\d+$")


def normalize_number(text: str) -> str | None:
    """'  0042 ' -> '42', '-7' -> '-7', '1,234' -> '1234'; None when not an integer."""
    text = text.strip().replace(",", "").replace(" ", "")
    if not _INT.match(text):
        return None
    return str(int(text))


def final_answer(response: str) -> str:
    """The text after the last '####' marker, else the whole response."""
    return response.rsplit("####", 1)[-1]


@VERIFIERS.register("arithmetic", "1.0 when the final integer answer equals the reference after normalisation")
def arithmetic(response: str, answer: str) -> float:
    got = normalize_number(final_answer(response))
    want = normalize_number(answer)
    if want is None:
        raise ValueError(f"reference answer {answer!r} is not an integer")
    return 1.0 if got is not None and got == want else 0.0


@VERIFIERS.register("format", "1.0 when the response is a bare integer answer (the task's format)")
def format_reward(response: str, answer: str) -> float:
    return 1.0 if normalize_number(final_answer(response)) is not None else 0.0


# --- math -----------------------------------------------------------------------------

def _math_parse(text: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    wrapped = text if "$" in text or "\\boxed" in text else f"${text}$"
    # parsing_timeout=None: math-verify's own timeout uses SIGALRM, which only works in a
    # main thread; the RewardPool enforces the per-sample timeout instead.
    return parse(wrapped, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=None)


def math_equivalent(predicted: str, reference: str) -> bool:
    """Mathematical equivalence via math-verify (sympy): 1/2 == \\frac{1}{2} == 0.5 == 50\\%."""
    from math_verify import verify

    gold = _math_parse(reference)
    if not gold:
        raise ValueError(f"reference answer {reference!r} could not be parsed as math")
    pred = _math_parse(predicted)
    return bool(pred) and verify(gold, pred, timeout_seconds=None)


@VERIFIERS.register("math", "1.0 when the final answer (\\boxed{}, ####, 'the answer is') equals the reference "
                            "mathematically (math-verify)")
def math_answer(response: str, answer: str) -> float:
    predicted = final_answer_text(response)
    if not predicted:
        return 0.0
    return 1.0 if math_equivalent(predicted, answer) else 0.0


@VERIFIERS.register("format_boxed", "1.0 when the response states its answer in a non-empty \\boxed{...}")
def format_boxed(response: str, answer: str) -> float:
    return 1.0 if last_boxed(response) else 0.0


_THINK = re.compile(r"^\s*<think>(.+?)</think>\s*(?:<answer>(.+?)</answer>|(\S.*))\s*$", re.DOTALL)


@VERIFIERS.register("format_think", "1.0 for '<think>...</think>' followed by a non-empty answer")
def format_think(response: str, answer: str) -> float:
    m = _THINK.match(response)
    return 1.0 if m and "<think>" not in m.group(1) else 0.0


# --- multiple choice ------------------------------------------------------------------

_LETTER = r"\(?\b([A-J])\b\)?"
_CHOICE_PATTERNS = [re.compile(p, re.IGNORECASE if i else 0) for i, p in enumerate([
    r"^\s*" + _LETTER + r"[.):]?\s*$",  # the whole response is the letter (case-sensitive: 'a' is a word)
    r"(?:answer|choice|option)\s*(?:is|:)?\s*(?:option\s*)?\(?\b([A-J])\b\)?",
])]


def choice_letter(text: str) -> Optional[str]:
    """The chosen option letter: \\boxed{B}, 'Answer: (B)', 'the answer is B', or a bare 'B'."""
    final = final_answer_text(text)
    if final:
        m = re.search(r"\b([A-J])\b", re.sub(r"\\text\{(.*?)\}", r"\1", final))
        if m:
            return m.group(1)
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


@VERIFIERS.register("multiple_choice", "1.0 when the chosen option letter (A-J) equals the reference letter")
def multiple_choice(response: str, answer: str) -> float:
    m = re.match(r"^\s*\(?([A-Ja-j])\b", answer)
    if not m:
        raise ValueError(f"reference answer {answer!r} is not an option letter A-J")
    return 1.0 if choice_letter(response) == m.group(1).upper() else 0.0


# --- code -----------------------------------------------------------------------------

_ASSERT_HARNESS = """
import os, sys
def _run(token, tests, write=os.write):  # write is bound now: a solution patching os/print cannot touch it
    ns = {"__name__": "solution"}
    try:
        exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
    except BaseException as exc:  # SystemExit too: the solution cannot end the harness
        print(f"solution raised {type(exc).__name__}: {exc}", file=sys.stderr)
    passed = 0
    for test in tests:
        try:
            exec(test, ns)
            passed += 1
        except BaseException as exc:
            print(f"failed {test!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stdout.flush()
    write(1, f"\\n{token} {passed}\\n".encode())
_run(sys.stdin.readline().strip(), TESTS)
"""


def _code_tests(answer: str) -> dict:
    try:
        spec = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise ValueError(f"code reference is not JSON: {exc}") from None
    if not isinstance(spec, dict) or not (spec.get("tests") or spec.get("asserts")):
        raise ValueError("code reference must be a JSON object with 'tests' ([{input, output}]) or 'asserts' ([str])")
    return spec


def _same_output(got: str, want: str) -> bool:
    """Output equality up to trailing whitespace on each line and trailing blank lines."""
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).strip()  # noqa: E731
    return norm(got) == norm(want)


@VERIFIERS.register("code", "fraction of test cases the response's last ```python block passes in the sandbox; "
                            "reference JSON: {'tests': [{'input','output'}]} (stdin/stdout) or {'asserts': [...]} "
                            "(options: timeout_s, memory_mb, max_tests)")
def code_tests(response: str, answer: str, timeout_s: float = 2.0, memory_mb: int = 256,
               max_tests: int = 32) -> float:
    from reward.sandbox import SandboxLimits, run_python

    spec = _code_tests(answer)
    source = code_block(response)
    if source is None:
        return 0.0
    limits = SandboxLimits(timeout_s=float(spec.get("timeout_s", timeout_s)), memory_mb=memory_mb)
    if spec.get("asserts"):
        tests = list(spec["asserts"])[:max_tests]
        # A fresh token, given only on stdin, marks the harness's own report: a solution that
        # exits early or prints a fake tally cannot produce it.
        token = secrets.token_hex(16)
        harness = _ASSERT_HARNESS.replace("TESTS", repr(tests))
        result = run_python(harness, stdin=token + "\n", files={"solution.py": source}, limits=limits)
        tallies = [line.split()[1] for line in result.stdout.splitlines() if line.startswith(token + " ")]
        return int(tallies[-1]) / len(tests) if tallies and result.status == "ok" else 0.0
    cases = list(spec["tests"])[:max_tests]
    passed = 0
    for case in cases:
        result = run_python(source, stdin=str(case.get("input", "")), limits=limits)
        passed += result.status == "ok" and _same_output(result.stdout, str(case["output"]))
    return passed / len(cases)
