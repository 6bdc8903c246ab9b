"""Pulling the final answer (or code) out of a free-form response.

Order of preference for a final answer: the last `\\boxed{...}` (or `\\fbox{...}`), then
the text after the last `####` (GSM8K style), then "the answer is ...". Braces are matched,
so `\\boxed{\\frac{1}{2}}` yields `\\frac{1}{2}`.
"""

from __future__ import annotations

import re
from typing import Optional

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+?)\s*(?:\.\s*$|\.\s+|\n|$)",
                        re.IGNORECASE)
_CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def last_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} with balanced braces; None when absent or unclosed."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def after_hashes(text: str) -> Optional[str]:
    """Text after the last '####' marker (first line of it), or None."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    return tail.splitlines()[0].strip() if tail else ""


def final_answer_text(text: str) -> Optional[str]:
    """The response's final answer by the rules above; None when it states none."""
    for finder in (last_boxed, after_hashes):
        found = finder(text)
        if found is not None:
            return found
    matches = _ANSWER_IS.findall(text)
    return matches[-1].strip().strip("$").strip() if matches else None


def code_block(text: str) -> Optional[str]:
    """The last fenced Python code block (```python ... ```), else a bare fence, else None."""
    blocks = _CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else None
