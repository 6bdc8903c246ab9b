"""Rule-based verifiers: one signature `fn(response: str, answer: str, **options) -> float`.

Registered by name; `RewardConfig.verifier` picks the correctness verifier, `format` is
added with `RewardConfig.format_weight`, `RewardConfig.components` adds any others with
weights, and `RewardConfig.verifier_options` passes keyword options (e.g. the code
verifier's limits). A verifier raises on a malformed *reference* (a data bug, recorded as
a failure by the pool); a malformed *response* simply scores 0.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from reward.extract import after_hashes, code_block, final_answer_text, last_boxed
from rollout.registry import Registry

VERIFIERS: Registry = Registry("verifier")

_INT = re.compile(r"^[+-]?\d+$")


def normalize_number(text: str) -> str | None:
    """'  0042 ' -> '42', '-7' -> '-7', '1,234' -> '1234', '$18.' -> '18'; None when not an integer."""
    text = text.strip().replace(",", "").replace(" ", "").removesuffix(".").removeprefix("$")
    if not _INT.match(text):
        return None
    return str(int(text))


def final_answer(response: str) -> str:
    """The text after the last '####' marker, else the whole response."""
    return response.rsplit("####", 1)[-1]


def reference_answer(answer: str) -> str:
    """A reference given as a whole solution reduced to its final answer: MATH's '... \\boxed{72}'
    (the last box) or GSM8K's '... #### 72' (the line after the last marker); else as given."""
    for finder in (last_boxed, after_hashes):
        found = finder(answer)
        if found:
            return found
    return answer


@VERIFIERS.register("arithmetic", "1.0 when the final integer answer equals the reference after normalisation "
                                  "(a GSM8K-style reference '... #### 72' is read after its marker)")
def arithmetic(response: str, answer: str) -> float:
    got = normalize_number(final_answer(response))
    want = normalize_number(reference_answer(answer))
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
                            "mathematically (math-verify); a reference that is a whole solution is read at its "
                            "last \\boxed{} or ####")
def math_answer(response: str, answer: str) -> float:
    predicted = final_answer_text(response)
    if not predicted:
        return 0.0
    return 1.0 if math_equivalent(predicted.removesuffix("."), reference_answer(answer).removesuffix(".")) else 0.0


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

@VERIFIERS.register("code", "fraction of tests the response's last ```python block passes in the sandbox, checked "
                            "outside it; reference JSON: {'tests': [{'input','output'}]} (stdin/stdout), "
                            "{'calls': [{'fn','args','kwargs','expected'}]} or {'asserts': ['assert f(1) == 2']} "
                            "(options: timeout_s per test, memory_mb, max_tests, site_packages)")
def code_tests(response: str, answer: str, timeout_s: float = 2.0, memory_mb: int = 256,
               max_tests: int = 32, site_packages: bool = False) -> float:
    from reward import code_tests as ct
    from reward.sandbox import SandboxLimits, run_python, run_python_many

    ref = ct.parse_reference(answer)  # a malformed reference raises: a data bug, not a 0
    source = code_block(response)
    if source is None:
        return 0.0
    per_test = ref.timeout_s or timeout_s
    stdio, calls = ref.stdio[:max_tests], ref.calls[:max(0, max_tests - len(ref.stdio))]
    passed = 0
    if stdio:  # one fresh process per test, all in one sandbox
        limits = SandboxLimits(timeout_s=per_test, memory_mb=memory_mb)
        runs = run_python_many(source, [stdin for stdin, _ in stdio], limits=limits, site_packages=site_packages)
        passed += sum(r.status == "ok" and _same_output(r.stdout, want) for r, (_, want) in zip(runs, stdio))
    if calls:  # one process calls them all; the expected values stay out here
        limits = SandboxLimits(timeout_s=per_test * len(calls) + 1.0, cpu_s=int(per_test * len(calls)) + 1,
                               memory_mb=memory_mb)
        run = run_python(ct.harness(per_test), stdin=ct.call_payload(calls), files={"solution.py": source},
                         limits=limits, site_packages=site_packages)
        results = ct.read_results(run.stdout, len(calls))
        passed += sum(got is not None and ct.same(call, got[0]) for call, got in zip(calls, results))
    return passed / (len(stdio) + len(calls))


def _same_output(got: str, want: str) -> bool:
    """Output equality up to trailing whitespace on each line and trailing blank lines."""
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip("\n").splitlines()).strip()  # noqa: E731
    return norm(got) == norm(want)
