"""The `tool_use` environment: the model answers, or calls a tool and sees its result first.

A turn that calls a tool gets the tool's result (or its error) as the next observation; the
first turn that calls none is the answer, and the episode ends (the outcome verifier scores
that turn's text). Two call formats:
- `hash`, for the quickstart's character tokenizer (digits, + - * = # and space): a turn that
  starts with '#' calls the first of the env's tools with the rest of the turn as arguments;
  the observation is the result followed by '=' ("#1234+5678" -> "6912="), or '#=' on an error
  (the tokenizer has no letters to say more).
- `json`, for chat models: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` in the
  turn (the Hermes / Qwen convention); the observation is the result or "error: ...", rendered
  as a `tool` message by the chat template.
A tool that raises or runs past `tool_timeout_s` is a failed call, never a crash.
"""

from __future__ import annotations

import ast
import inspect
import json
import operator
import re
import threading
import time
from typing import Any

from rollout.envs.base import ENVS, TOOLS, EnvTraits, Step, ToolError

# Tools that ship with Tandem above the rollout stage, registered by a plugin module.
PLUGIN_TOOLS = {"python": "reward.tools"}
MAX_DIGITS = 40  # the calculator refuses numbers (and results) longer than this


@TOOLS.register("calculator", "integer arithmetic: + - * and parentheses (e.g. '1234+5678')")
def calculator(arguments: str) -> str:
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.USub: operator.neg}

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            out = node.value
        elif isinstance(node, ast.BinOp) and type(node.op) in ops:
            out = ops[type(node.op)](value(node.left), value(node.right))
        elif isinstance(node, ast.UnaryOp) and type(node.op) in ops:
            out = ops[type(node.op)](value(node.operand))
        else:
            raise ValueError(f"not integer arithmetic: {ast.dump(node)[:60]}")
        if len(str(abs(out))) > MAX_DIGITS:
            raise ValueError(f"a number longer than {MAX_DIGITS} digits")
        return out

    if len(arguments) > 200:
        raise ValueError("expression longer than 200 characters")
    return str(value(ast.parse(arguments.strip(), mode="eval").body))


JSON_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


def run_tool(name: str, arguments: str, timeout_s: float, options: dict[str, Any]) -> tuple[str, bool, float]:
    """(result or error text, failed, seconds). Each call runs on a thread of its own, so the time
    limit counts the tool's time only, however many environments call at once. A tool that
    overruns is abandoned (a thread cannot be killed; a tool that may run long must bound itself,
    as the sandboxed one does)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}

    def call() -> None:
        try:
            out["result"] = str(TOOLS.get(name)(arguments, **options.get(name, {})))
        except Exception as exc:  # a ToolError says what went wrong itself; anything else is named
            out["error"] = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=call, name=f"tool-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return f"{name} timed out after {timeout_s:g} s", True, time.perf_counter() - t0
    if "error" in out:
        return out["error"][:300], True, time.perf_counter() - t0
    return out["result"], False, time.perf_counter() - t0


class ToolUse:
    def __init__(self, tools: list[str], call_format: str, tool_timeout_s: float, tool_options: dict):
        self.tools, self.format, self.timeout_s, self.options = tools, call_format, tool_timeout_s, tool_options

    def reset(self) -> str:
        return ""

    def _call(self, action: str) -> tuple[str, str] | None:
        """(tool, arguments) when the turn calls one."""
        if self.format == "hash":
            return (self.tools[0], action.strip()[1:]) if action.lstrip().startswith("#") else None
        found = JSON_CALL.search(action)
        if found is None:
            return None
        try:
            call = json.loads(found.group(1))
            args = call.get("arguments", {})
            if isinstance(args, dict):
                args = next(iter(args.values())) if len(args) == 1 else json.dumps(args)
            return str(call["name"]), str(args)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return "", f"a malformed tool call ({type(exc).__name__}: {exc})"

    def step(self, action: str) -> Step:
        call = self._call(action)
        if call is None:
            return Step(done=True)
        name, arguments = call
        if name not in self.tools:
            text, failed, seconds = (arguments if not name else f"unknown tool '{name}' (tools: "
                                     f"{', '.join(self.tools)})"), True, 0.0
        else:
            text, failed, seconds = run_tool(name, arguments, self.timeout_s, self.options)
        if self.format == "hash":
            text = "#=" if failed else f"{text}="
        elif failed:
            text = f"error: {text}"
        return Step(observation=text, role="tool", tool_calls=1, tool_failures=int(failed), tool_seconds=seconds)


def check(options: dict[str, Any], plugins: tuple[str, ...] = ()) -> None:
    """The call format, every tool registered (a plugin's tool: its module among the plugins, so
    that every worker registers it too) and every tool option its tool's."""
    call_format, tools = options.get("call_format", "hash"), options.get("tools", DEFAULT_TOOLS)
    if call_format not in ("hash", "json"):
        raise ValueError(f"rollout.env_options.call_format '{call_format}' is not a format (valid: hash, json)")
    for name in tools:
        if name in PLUGIN_TOOLS and PLUGIN_TOOLS[name] not in plugins:
            raise ValueError(f"rollout.env_options.tools: '{name}' is registered by the module {PLUGIN_TOOLS[name]}: "
                             f"add it to rollout.env_plugins")
        if name not in TOOLS:
            raise ValueError(f"rollout.env_options.tools: unknown tool '{name}'; valid names: {', '.join(TOOLS.names())}")
    for name, opts in (options.get("tool_options") or {}).items():
        if name not in tools:
            raise ValueError(f"rollout.env_options.tool_options.{name}: '{name}' is not among the tools ({', '.join(tools)})")
        takes = list(inspect.signature(TOOLS.get(name)).parameters)[1:]
        for key in opts:
            if key not in takes:
                raise ValueError(f"rollout.env_options.tool_options.{name}.{key}: {name} takes {', '.join(takes) or 'none'}")


DEFAULT_TOOLS = ("calculator",)


@ENVS.register("tool_use", "answer, or call a tool (calculator, python, ...) and answer after its result",
               traits=EnvTraits(check=check))
def tool_use(prompt: str, answer: str, tools: list[str] = DEFAULT_TOOLS, call_format: str = "hash",
             tool_timeout_s: float = 5.0, tool_options: dict[str, dict] = None) -> ToolUse:
    # The options were checked once, when the spec was loaded (`check`), not per trajectory.
    return ToolUse(list(tools), call_format, tool_timeout_s, dict(tool_options or {}))
