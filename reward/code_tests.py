"""The `code` verifier's tests, checked where the solution cannot reach them.

A code reference (the row's `answer`, JSON) holds stdin/stdout `tests`, function `calls`,
or `asserts` (parsed here into calls):

    {"tests":   [{"input": "1 2\\n", "output": "3\\n"}],
     "calls":   [{"fn": "add", "args": [1, 2], "kwargs": {}, "expected": 3}],
     "asserts": ["assert add(1, 2) == 3", "assert math.isclose(area(1), 3.14159, rel_tol=1e-4)"],
     "timeout_s": 2}

Why: RL optimises whatever the reward measures, and a checker that runs in the solution's
interpreter can be fooled (patch `exec` or the exception classes, return an object whose
`__eq__` is always true, read a secret from the checker's frame). So the expected values
never enter the sandbox. Inside it a small harness only *calls* the function with the
arguments and writes each result in a typed JSON encoding that accepts exact built-in
types alone (an `int` subclass is refused, not compared); out here `same()` compares it
with the expected value by exact type and value, with a tolerance only where a test says
so. A solution that forges the harness's output gains nothing: it would have to know the
expected values, which it never sees.

Asserts are parsed with `ast`: `assert CALL == LITERAL` (either side), `assert CALL`,
`assert not CALL` and `assert math.isclose(CALL, LITERAL, rel_tol=.., abs_tol=..)`, where
CALL is `name(literal, ..., key=literal)`. Anything else is refused with an error naming
the assert, never run.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

Compare = Literal["exact", "truthy", "falsy", "isclose"]


@dataclass(frozen=True)
class Call:
    fn: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    compare: Compare = "exact"
    rel_tol: float = 1e-9
    abs_tol: float = 0.0


@dataclass(frozen=True)
class CodeReference:
    stdio: tuple = ()  # ((stdin, expected stdout), ...)
    calls: tuple = ()  # (Call, ...)
    timeout_s: Optional[float] = None  # per test


# --- typed encoding (also embedded in the harness: keep the two in step) ------------------

def encode(value, depth: int = 0):
    """A JSON-ready form that keeps exact built-in types; anything else raises TypeError."""
    t = type(value)
    if depth > 64:
        raise TypeError("nested deeper than 64")
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -(1 << 53) < value < (1 << 53) else {"int": str(value)}
    if t is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if t is list:
        return [encode(v, depth + 1) for v in value]
    if t is tuple:
        return {"tuple": [encode(v, depth + 1) for v in value]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if t is set or t is frozenset:
        return {t.__name__: [encode(v, depth + 1) for v in value]}
    raise TypeError(f"cannot encode a {t.__name__}")


def decode(obj):
    """The inverse of encode(), for JSON the checker parsed (so the types are plain already)."""
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) != 1:
        raise ValueError(f"malformed encoded value {obj!r:.80}")
    (tag, body), = obj.items()
    if tag == "int":
        return int(body)
    if tag == "float":
        return float(body)
    if tag == "tuple":
        return tuple(decode(v) for v in body)
    if tag == "dict":
        return {_hashable(decode(k)): decode(v) for k, v in body}
    if tag in ("set", "frozenset"):
        items = (_hashable(decode(v)) for v in body)
        return set(items) if tag == "set" else frozenset(items)
    raise ValueError(f"unknown encoded type {tag!r}")


def _hashable(value):
    hash(value)  # a list as a dict key or set member: the encoding was forged
    return value


def canon(value):
    """A hashable form that carries every type, so `canon(a) == canon(b)` is exact-type equality
    (1, 1.0 and True differ; nan equals nan)."""
    t = type(value)
    if t is float:
        return ("float", "nan") if math.isnan(value) else ("float", value)
    if t in (list, tuple):
        return (t.__name__, tuple(canon(v) for v in value))
    if t is dict:
        return ("dict", frozenset((canon(k), canon(v)) for k, v in value.items()))
    if t in (set, frozenset):
        return (t.__name__, frozenset(canon(v) for v in value))
    return (t.__name__, value)


def _close(want, got, rel_tol: float, abs_tol: float) -> bool:
    number = (int, float)
    if type(want) in number and type(got) in number:
        return math.isclose(got, want, rel_tol=rel_tol, abs_tol=abs_tol)
    if type(want) is type(got) and type(want) in (list, tuple):
        return len(want) == len(got) and all(_close(w, g, rel_tol, abs_tol) for w, g in zip(want, got))
    return canon(want) == canon(got)


def same(call: Call, got) -> bool:
    """Does `got` (decoded from the harness) pass `call`?"""
    if call.compare == "truthy":
        return bool(got)
    if call.compare == "falsy":
        return not got
    if call.compare == "isclose":
        return _close(call.expected, got, call.rel_tol, call.abs_tol)
    return canon(call.expected) == canon(got)


# --- parsing references -------------------------------------------------------------------

def parse_reference(answer: str) -> CodeReference:
    try:
        spec = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise ValueError(f"code reference is not JSON: {exc}") from None
    if not isinstance(spec, dict) or not (spec.get("tests") or spec.get("calls") or spec.get("asserts")):
        raise ValueError("code reference must be a JSON object with 'tests' ([{input, output}]), "
                         "'calls' ([{fn, args, kwargs, expected}]) or 'asserts' ([str])")
    stdio = tuple((str(t.get("input", "")), str(t["output"])) for t in spec.get("tests") or ())
    calls = tuple(_json_call(c, i) for i, c in enumerate(spec.get("calls") or ()))
    calls += tuple(parse_assert(a, i) for i, a in enumerate(spec.get("asserts") or ()))
    timeout = spec.get("timeout_s")
    return CodeReference(stdio, calls, float(timeout) if timeout is not None else None)


def _json_call(c: dict, i: int) -> Call:
    if not isinstance(c, dict) or not isinstance(c.get("fn"), str) or "expected" not in c:
        raise ValueError(f"code reference calls[{i}] needs 'fn' (a name) and 'expected'")
    tol = {k: float(c[k]) for k in ("rel_tol", "abs_tol") if k in c}
    return Call(c["fn"], tuple(c.get("args", ())), dict(c.get("kwargs", {})), c["expected"],
                "isclose" if tol else "exact", **tol)


def parse_assert(text: str, i: int = 0) -> Call:
    """`assert f(1, x=2) == 3` -> Call('f', (1,), {'x': 2}, 3); anything else raises ValueError."""
    where = f"code reference asserts[{i}] ({text!r:.120})"
    try:
        tree = ast.parse(text.strip())
    except SyntaxError as exc:
        raise ValueError(f"{where} is not Python: {exc.msg}") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"{where} must be a single assert statement")
    test = tree.body[0].test
    try:
        if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
                and (_is_call(test.left) or _is_call(test.comparators[0]))):
            left, right = test.left, test.comparators[0]
            call_node, lit = (left, right) if _is_call(left) else (right, left)
            return _call(call_node, where, expected=ast.literal_eval(lit))
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _is_call(test.operand):
            return _call(test.operand, where, compare="falsy")
        if _is_isclose(test):
            a, b = test.args
            call_node, lit = (a, b) if _is_call(a) else (b, a)
            tol = {k.arg: float(ast.literal_eval(k.value)) for k in test.keywords}
            return _call(call_node, where, expected=ast.literal_eval(lit), compare="isclose", **tol)
        if _is_call(test):
            return _call(test, where, compare="truthy")
    except (ValueError, TypeError) as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: arguments and expected values must be Python literals ({exc})") from None
    raise ValueError(f"{where} is not a supported form: use 'assert f(literals) == literal', 'assert f(...)', "
                     "'assert not f(...)' or 'assert math.isclose(f(...), literal, rel_tol=..)'")


def _is_call(node) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name)


def _is_isclose(node) -> bool:
    f = getattr(node, "func", None)
    named = (isinstance(f, ast.Attribute) and f.attr == "isclose" and isinstance(f.value, ast.Name)
             and f.value.id == "math") or (isinstance(f, ast.Name) and f.id == "isclose")
    return (named and len(node.args) == 2 and any(_is_call(a) for a in node.args)
            and all(k.arg in ("rel_tol", "abs_tol") for k in node.keywords))


def _call(node: ast.Call, where: str, expected=None, compare: Compare = "exact", **tol) -> Call:
    if not _is_call(node):
        raise ValueError(f"{where}: one side must call a function by name")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ValueError(f"{where}: *args and **kwargs are not supported")
    args = tuple(ast.literal_eval(a) for a in node.args)  # ValueError names a non-literal
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    encode(args), encode(kwargs), encode(expected)  # every value must cross the boundary as itself
    return Call(node.func.id, args, kwargs, expected, compare, **tol)


# --- the harness (runs inside the sandbox, beside solution.py) ----------------------------

HARNESS = r'''
import json, math, os, signal, sys
_out = os.fdopen(os.dup(1), "w")  # results go here; the solution's prints go to stderr
os.dup2(2, 1)
_type, _repr, _list, _len = type, repr, list, len

def _enc(v, d=0):
    t = _type(v)
    if d > 64: raise TypeError("nested deeper than 64")
    if v is None or t is bool or t is str: return v
    if t is int: return v if -(1 << 53) < v < (1 << 53) else {"int": _repr(v)}
    if t is float: return v if math.isfinite(v) else {"float": _repr(v)}
    if t is list: return [_enc(x, d + 1) for x in v]
    if t is tuple: return {"tuple": [_enc(x, d + 1) for x in v]}
    if t is dict: return {"dict": [[_enc(k, d + 1), _enc(x, d + 1)] for k, x in _list(v.items())]}
    if t is set or t is frozenset: return {t.__name__: [_enc(x, d + 1) for x in v]}
    raise TypeError("cannot encode a " + t.__name__)

def _dec(o):
    if _type(o) is _list: return [_dec(x) for x in o]
    if _type(o) is not dict: return o
    (tag, body), = o.items()
    if tag == "int": return int(body)
    if tag == "float": return float(body)
    if tag == "tuple": return tuple(_dec(x) for x in body)
    if tag == "dict": return {_dec(k): _dec(x) for k, x in body}
    return (set if tag == "set" else frozenset)(_dec(x) for x in body)

class _Late(BaseException): pass
def _alarm(*_): raise _Late()

def _main(calls, per_test_s, dumps=json.dumps, write=_out.write, flush=_out.flush):
    ns = {"__name__": "solution"}
    try:
        exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
    except BaseException as exc:
        print("solution raised " + _type(exc).__name__, file=sys.stderr)
    signal.signal(signal.SIGALRM, _alarm)
    for i, (fn, args, kwargs) in enumerate(calls):
        try:
            signal.setitimer(signal.ITIMER_REAL, per_test_s)
            f = ns.get(fn)
            if f is None: raise NameError(fn + " is not defined")
            line = dumps({"i": i, "ok": _enc(f(*_dec(args), **_dec(kwargs)))})
        except BaseException as exc:
            line = dumps({"i": i, "error": _type(exc).__name__})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        write(line + "\n")
        flush()

_main(json.loads(sys.stdin.read()), PER_TEST_S)
'''


def harness(per_test_s: float) -> str:
    return HARNESS.replace("PER_TEST_S", repr(float(per_test_s)))


def call_payload(calls) -> str:
    """The harness's stdin: (fn, args, kwargs) per call, encoded. No expected values."""
    return json.dumps([[c.fn, encode(list(c.args)), encode(dict(c.kwargs))] for c in calls])


def read_results(stdout: str, n: int) -> list:
    """Per call index: (decoded value,) or None where the call raised, timed out or wrote no
    well-formed line."""
    out, seen = [None] * n, set()
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
            i = rec["i"]
            if type(i) is not int or not 0 <= i < n or i in seen:
                continue  # the first line for a call counts; later ones cannot overwrite it
            seen.add(i)
            if "ok" in rec:
                out[i] = (decode(rec["ok"]),)
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return out
