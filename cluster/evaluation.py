"""`tandem eval CHECKPOINT --data FILE --verifier NAME`: pass@1 and pass@k of any Hugging Face
checkpoint (trained here or elsewhere) on a prompt set, with the run's own engines and verifiers.

Prompts are read and rendered as a run reads them (rollout/data.py: any format, column names,
chat template, system prompt); each prompt gets `samples` responses, seeded per prompt and
sample as training samples are, and a response is correct when the verifier gives it 1.0 (a
verifier error or timeout is wrong and counted), as in the run's held-out accuracy. pass@k is
the unbiased estimator of Chen et al. 2021 (Codex): per prompt with n samples of which c are
correct, 1 - C(n - c, k) / C(n, k), averaged over prompts.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from rollout.types import GenerationRequest, SamplingParams


@dataclass(frozen=True)
class EvalSpec:
    checkpoint: str
    data: str
    verifier: str
    samples: int = 1
    temperature: float = 0.0
    engine: str = "hf"  # hf | vllm
    max_new_tokens: int = 512
    limit: Optional[int] = None  # the first N prompts
    seed: int = 0
    prompt_key: str = "prompt"
    answer_key: str = "answer"
    system_prompt: Optional[str] = None
    chat_template: Optional[bool] = None  # None: the tokenizer's template when it has one
    dtype: str = "float32"
    batch_size: int = 256  # samples decoded together (the hf engine's default, as in a run's evaluation)
    timeout_s: float = 10.0  # per verifier call

    def check(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be at least 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("--samples > 1 with --temperature 0: greedy decoding gives the same response every "
                             "time, so pass@k would be pass@1; set --temperature (e.g. 1.0)")
        if self.temperature < 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if self.engine not in ("hf", "vllm"):
            raise ValueError(f"--engine must be 'hf' or 'vllm', got {self.engine!r}")


@dataclass
class EvalReport:
    spec: EvalSpec
    num_prompts: int
    pass_at: dict[int, float]  # k -> pass@k
    verifier_failures: int  # samples whose verifier raised or timed out (scored wrong)
    wall_s: float
    per_prompt: list[dict] = field(default_factory=list)  # {id, prompt, answer, correct: n correct}

    def to_json(self) -> dict:
        return {**asdict(self), "pass_at": {f"pass@{k}": v for k, v in self.pass_at.items()}}

    def table(self) -> str:
        s = self.spec
        lines = [f"{s.checkpoint} on {s.data}: {self.num_prompts} prompts x {s.samples} sample(s), temperature "
                 f"{s.temperature:g}, engine {s.engine}, verifier {s.verifier}"]
        lines += [f"  pass@{k:<4} {100 * v:6.2f}%" for k, v in self.pass_at.items()]
        lines.append(f"  verifier failures {self.verifier_failures}; {self.wall_s:.1f} s")
        return "\n".join(lines)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt: n samples, c correct (1 - C(n-c, k) / C(n, k), as a
    product so that no binomial overflows)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def reported_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks + ([n] if ks[-1] != n else [])


def _prompts(spec: EvalSpec, tokenizer):
    from rollout.data import load_prompts, render_prompts
    from rollout.render import Renderer

    renderer = Renderer(tokenizer, spec.chat_template, system_prompt=spec.system_prompt)
    prompts = load_prompts(spec.data, spec.prompt_key, spec.answer_key)[: spec.limit]
    return render_prompts(prompts, renderer.prompt_ids, spec.data)


def _engine(spec: EvalSpec):
    if spec.engine == "hf":
        import torch

        from rollout.hf_engine import HFEngine

        return HFEngine(spec.checkpoint, spec.dtype, "cuda" if torch.cuda.is_available() else "cpu")
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(spec.checkpoint, spec.dtype)


def evaluate(spec: EvalSpec) -> EvalReport:
    from reward.config import RewardConfig
    from reward.worker import RewardWorker

    spec.check()
    t0 = time.perf_counter()
    scorer = RewardWorker(RewardConfig(verifier=spec.verifier, format_weight=0.0, timeout_s=spec.timeout_s))
    engine = _engine(spec)
    try:
        prompts = _prompts(spec, engine.tokenizer)
        # Group ids -1, -2, ... as the run's held-out evaluation numbers its prompts.
        requests = [GenerationRequest(group_id=-i, prompt_id=p.id, prompt=p.text, prompt_ids=p.ids, answer=p.answer,
                                      num_samples=spec.samples) for i, p in enumerate(prompts, 1)]
        params = SamplingParams(temperature=spec.temperature, max_new_tokens=spec.max_new_tokens, seed=spec.seed,
                                step=-1)
        rollouts = engine.generate(requests, params, 0, spec.batch_size)
    finally:
        if hasattr(engine, "shutdown"):
            engine.shutdown()
    scores = scorer.score(rollouts).scores
    correct: dict[int, int] = {}
    failures = 0
    for rollout, components in zip(rollouts, scores, strict=True):
        score = next(c for c in components if c.name == spec.verifier)
        failures += score.failure is not None
        correct[rollout.group_id] = correct.get(rollout.group_id, 0) + int(score.value == 1.0 and not score.failure)
    n = spec.samples
    per_prompt = [{"id": p.id, "prompt": p.text, "answer": p.answer, "correct": correct.get(-i, 0)}
                  for i, p in enumerate(prompts, 1)]
    pass_at = {k: sum(pass_at_k(n, row["correct"], k) for row in per_prompt) / len(per_prompt)
               for k in reported_ks(n)}
    return EvalReport(spec, len(prompts), pass_at, failures, time.perf_counter() - t0, per_prompt)


def write_results(report: EvalReport, out: Optional[str | Path] = None) -> Path:
    """The report's JSON at `out` (default: CHECKPOINT/eval/<data file stem>.json)."""
    path = Path(out) if out else Path(report.spec.checkpoint) / "eval" / f"{Path(report.spec.data).stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return path
