"""LLM-as-judge through an OpenAI-compatible `/chat/completions` endpoint.

The judge is asked for a score from 0 to 10 and the reward is score / 10. Requests are
rate limited (a token bucket shared by all of the actor's threads), run `concurrency` at a
time, and retried with exponential backoff on connection errors, timeouts, 429 and 5xx
(honouring Retry-After, capped). An API key, if the endpoint needs one, is read from the
environment variable TANDEM_JUDGE_API_KEY — never from the recipe.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from reward.config import RewardConfig
from reward.types import ComponentScore
from reward.types import WorkerReply
from rollout.types import Rollout

NAME = "judge"
SYSTEM = ("You grade answers. Compare the response with the reference answer and reply with one line "
          "'Score: N' where N is an integer from 0 (wrong) to 10 (fully correct).")
_SCORE = re.compile(r"score\s*[:=]\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    pass


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int = 1):
        if rate <= 0:
            raise ValueError(f"reward.judge_requests_per_s must be > 0, got {rate}")
        self.rate, self.burst = rate, max(1, burst)
        self.tokens, self.stamp = float(self.burst), time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class JudgeClient:
    def __init__(self, url: str, model: str, requests_per_s: float = 5.0, max_retries: int = 3,
                 timeout_s: float = 30.0, burst: int = 1):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model, self.max_retries, self.timeout_s = model, max_retries, timeout_s
        self.bucket = TokenBucket(requests_per_s, burst)
        self.requests = 0  # HTTP requests sent, retries included
        host = urllib.parse.urlsplit(self.endpoint).hostname
        # A loopback judge is reached directly, never through an *_proxy from the environment.
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self.opener = urllib.request.build_opener(*handlers)

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("TANDEM_JUDGE_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, json.dumps(payload).encode(), headers, method="POST")
        last = None
        for attempt in range(self.max_retries + 1):
            self.bucket.acquire()
            self.requests += 1
            delay = min(0.05 * 2 ** attempt, 2.0)
            try:
                with self.opener.open(request, timeout=self.timeout_s) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS:
                    raise JudgeError(f"judge returned HTTP {exc.code}: {exc.read()[:200]!r}") from None
                last = f"HTTP {exc.code}"
                delay = min(float(exc.headers.get("Retry-After") or delay), 5.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                time.sleep(delay)
        raise JudgeError(f"judge failed after {self.max_retries + 1} attempts: {last}")

    def score(self, prompt: str, response: str, answer: str) -> float:
        user = f"Question:\n{prompt}\n\nReference answer:\n{answer}\n\nResponse:\n{response}"
        body = self._post({"model": self.model, "temperature": 0.0, "max_tokens": 16,
                           "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]})
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge reply has no choices[0].message.content: {str(body)[:200]}") from None
        found = _SCORE.findall(text or "")
        if not found:
            raise JudgeError(f"judge reply states no 'Score: N': {text[:200]!r}")
        return min(max(float(found[-1]), 0.0), 10.0) / 10.0


class JudgeWorker:
    """Ray actor body: `concurrency` requests in flight, one rate limit for all of them."""

    def __init__(self, spec: RewardConfig):
        self.client = JudgeClient(spec.judge_url, spec.judge_model, spec.judge_requests_per_s,
                                  spec.judge_max_retries, spec.judge_timeout_s, burst=spec.judge_concurrency)
        self.threads = cf.ThreadPoolExecutor(max_workers=spec.judge_concurrency)

    def _one(self, r: Rollout) -> tuple[ComponentScore]:
        t0 = time.perf_counter()
        try:
            value = self.client.score(r.prompt, r.response_text, r.answer)
        except Exception as exc:  # recorded per sample; the run goes on with the fallback
            return (ComponentScore(NAME, None, f"error: {NAME}: {exc}"[:500], time.perf_counter() - t0),)
        return (ComponentScore(NAME, value, None, time.perf_counter() - t0),)

    def score(self, rollouts: list[Rollout]) -> WorkerReply:
        return WorkerReply(list(self.threads.map(self._one, rollouts)), False, os.getpid())

    def requests_sent(self) -> int:
        return self.client.requests
