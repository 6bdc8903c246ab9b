"""`tandem submit --backend ray`: Ray's job API (what `ray job submit` talks to).

The project directory is uploaded as the job's working dir, so the cluster runs exactly this
checkout; the entrypoint is `python -m cluster.cli run RECIPE ... cluster.address=auto`.

Authentication, deliberately: Ray 2.5x+ clusters may require a token (`RAY_AUTH_MODE=token`,
the default for clusters Ray starts itself). The client sends one whenever it can find one,
in Ray's own order: `$RAY_AUTH_TOKEN`, the file `$RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token`.
It does not rely on the client's own `RAY_AUTH_MODE` (Ray's client only attaches the token
when that is `token`, which made submissions fail with "Missing authentication token").
`RAY_AUTH_MODE=disabled` on the client sends none. A cluster that refuses the request gives an
error that says where the token is read from and how to get it (`ray get-auth-token` on the
head). A token-less cluster ignores the header.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from cluster.launch import PROJECT_ROOT, Job, LaunchError, run_args

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: the environment, caches, outputs, VCS data (the upload limit is ~500 MB).
EXCLUDES = [".venv", ".git", ".cache", "runs", "**/__pycache__", "*.pyc", ".pytest_cache", "bench/out"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_api_address(address: Optional[str]) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS or an http $RAY_ADDRESS (Ray's conventions), else local."""
    if address:
        return address if "://" in address else f"http://{address}"
    env = os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith("http") else DEFAULT_ADDRESS


def auth_token() -> Optional[str]:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def client(address: Optional[str]):
    from ray.job_submission import JobSubmissionClient

    url = job_api_address(address)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return JobSubmissionClient(url, headers=headers)
    except Exception as exc:  # connection refused, 401/403, version mismatch: say which
        raise LaunchError(_explain(url, exc, token is not None)) from None


def _explain(url: str, exc: Exception, sent_token: bool) -> str:
    text = str(exc)
    if any(s in text for s in ("401", "403", "Unauthorized", "Forbidden", "authentication")):
        where = "sent one from $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token, which it refused" \
            if sent_token else "found none in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"
        return (f"the Ray cluster at {url} requires an authentication token; tandem {where}. Get the cluster's "
                "token (`ray get-auth-token` on the head node) and export RAY_AUTH_TOKEN=<token>")
    return (f"cannot reach the Ray job API at {url}: {text.splitlines()[0] if text else type(exc).__name__}\n"
            "(is a cluster running there with its dashboard? `ray start --head --include-dashboard=true`; "
            "pass --address http://HEAD:8265)")


def submit(job: Job, address: Optional[str], working_dir: Optional[str] = None,
           job_id: Optional[str] = None) -> str:
    """Submit `job` and return its submission id (the id `status`/`logs`/`stop` take)."""
    root = Path(working_dir or PROJECT_ROOT).resolve()
    if not (root / "cluster" / "cli.py").is_file():
        raise LaunchError(f"working dir {root} does not hold Tandem's sources (cluster/cli.py); pass --working-dir")
    try:
        recipe = job.recipe.resolve().relative_to(root)
    except ValueError:
        raise LaunchError(f"recipe {job.recipe} is outside the working dir {root} that is uploaded to the "
                          "cluster; move it inside (e.g. recipes/) or pass --working-dir") from None
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES}
    c = client(address)
    try:
        return c.submit_job(entrypoint=f"python {run_args(str(recipe), job.overrides)} cluster.address=auto",
                            runtime_env=runtime_env, submission_id=job_id,
                            metadata={"tandem_recipe": str(recipe), "tandem_run": job.cfg.run.name})
    except Exception as exc:
        raise LaunchError(f"the Ray job API at {job_api_address(address)} refused the job: {exc}") from None


def status(job_id: str, address: Optional[str]) -> str:
    return str(_call(address, "get_job_status", job_id).value)


def logs(job_id: str, address: Optional[str], follow: bool = False) -> str:
    if not follow:
        return _call(address, "get_job_logs", job_id)
    import asyncio

    async def tail() -> None:
        async for lines in client(address).tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return ""


def stop(job_id: str, address: Optional[str]) -> bool:
    return bool(_call(address, "stop_job", job_id))


def wait(job_id: str, address: Optional[str], timeout_s: float, poll_s: float = 1.0) -> str:
    """Poll until the job ends; returns its final status (TimeoutError past `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = status(job_id, address)
        if state in TERMINAL:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {state} after {timeout_s:g} s")
        time.sleep(poll_s)


def _call(address: Optional[str], method: str, job_id: str):
    c = client(address)
    try:
        return getattr(c, method)(job_id)
    except RuntimeError as exc:  # the SDK raises RuntimeError for an unknown id
        raise LaunchError(f"{method.replace('_', ' ')} {job_id}: {exc}") from None
