"""The `python` tool: code a model wrote, run in the reward sandbox (reward/sandbox.py) under its
limits; what it prints is the result, and a failure (an exception, a timeout, the memory limit)
raises, which the environment turns into the observation (rollout/envs/tool_use.py).

It lives with the sandbox, above the rollout stage, so it reaches the environments as a plugin:
name this module in `rollout.env_plugins` (`[reward.tools]`) and `python` in the tools. Like the
code verifier it refuses to run where the sandbox cannot make namespaces, unless
`allow_unisolated: true` is among its tool options.
"""

from __future__ import annotations

from rollout.envs.base import TOOLS, ToolError
from reward.sandbox import SandboxLimits, require_isolation, run_python

MAX_RESULT_CHARS = 2000  # what the model sees of the output (its tail)


@TOOLS.register("python", "runs the code in the reward sandbox (no network, no files but its own); stdout is the "
                          "result. Options: timeout_s, memory_mb, allow_unisolated (plugin: reward.tools)")
def python(arguments: str, timeout_s: float = 5.0, memory_mb: int = 256, allow_unisolated: bool = False) -> str:
    require_isolation(allow_unisolated)
    result = run_python(arguments, limits=SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb))
    if result.status == "timeout":
        raise ToolError(f"timed out after {timeout_s:g} s")
    if result.status != "ok":  # the last line of the traceback, or what the sandbox stopped
        raise ToolError((result.stderr.strip().splitlines() or [result.status])[-1][:300])
    return result.stdout[-MAX_RESULT_CHARS:]
