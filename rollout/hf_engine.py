"""The `hf` engine: batched sampling with a KV cache from a transformers causal LM.

Reference engine for CPU (and one GPU). Its own decode loop (not `model.generate`) so that
it can stream finished sequences out as they finish, drop finished rows from the batch and
admit the call's next samples in their place (continuous admission: up to `batch_size` rows
decode together; a new row's prompt is prefilled on its own and its KV cache left-padded into
the batch's, so a long response never holds the rest of the call back), and swap weights
between two decode steps: a *partial rollout* re-encodes its tokens so far under the new weights and
continues, each token keeping the version that produced it. Per-token logprobs are those of
the temperature-scaled sampling distribution (log_softmax(logits / T), before top-p),
computed in fp32 from the raw logits. `abort()` (from the worker's control thread) drops the
rows of doomed groups at the next decode step and skips their samples not started yet.

Multi-turn (rollout.env, rollout/envs/): a row whose turn ends goes to its episode's
environment; unless the episode is over, the observation's ids are appended (never trained)
and the sequence waits to be admitted again like a new row, its prompt now the whole
trajectory so far. The environments of the rows whose turns ended at one decode step answer
together, each on a thread of its own (a slow tool costs the batch its time once, not once per
row), and the decode step after waits for all of them: which rows decode together never
depends on how long a tool took, so a seed's rollouts stay the same run after run.
"""

from __future__ import annotations

import concurrent.futures as cf
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from rollout.envs.spec import EnvSpec
from rollout.envs.episode import Episode, Episodes
from rollout.types import AbortResult, EngineError, GenerationRequest, Rollout, SamplingParams, doomed, sample_seed


ENV_THREADS = 16  # multi-turn: environments answering at once (rows whose turns ended at one step)


def load_causal_lm(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Model + tokenizer from a local HF checkpoint; a clear error when it is not one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise EngineError(f"model.path '{path}' is not a Hugging Face checkpoint (no config.json there, nor a "
                          f"LoRA adapter's adapter_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    model.eval()
    return model, tokenizer


class _Batch:
    """The sequences of one decode loop: ids so far, per-token logprobs and versions, and each
    one's sampling generator. Sequences are appended as they are admitted; `active` lists the
    rows decoding now (batch row -> sequence index), replaced whole, never mutated in place."""

    def __init__(self):
        self.flat: list[tuple[GenerationRequest, int]] = []
        self.prompt_ids: list[list[int]] = []
        self.seeds: list[int] = []
        self.gens: list[torch.Generator] = []
        self.ids: list[list[int]] = []
        self.logprobs: list[list[float]] = []
        self.versions: list[list[int]] = []
        self.active: list[int] = []
        # Multi-turn: each sequence's episode (None: one turn), 1/0 per token (the model's / an
        # observation's), where its current turn began, and the sequences waiting to rejoin.
        self.episodes: list[Episode | None] = []
        self.trains: list[list[int]] = []
        self.turn_start: list[int] = []
        self.pending: list[int] = []

    def add(self, items: list[tuple[GenerationRequest, int]], params: SamplingParams,
            episodes: Episodes | None = None, version: int = 0) -> list[int]:
        """Append samples; their sequence indices. One generator per sample, seeded from (run seed,
        step, group, sample): a rollout does not depend on the batch, shard or worker it ran in."""
        first = len(self.flat)
        for req, k in items:
            seed = sample_seed(params.seed, params.step, req.group_id, k)
            self.seeds.append(seed)
            self.gens.append(torch.Generator().manual_seed(seed))
            self.prompt_ids.append(list(req.prompt_ids))
            episode = None if episodes is None else episodes.start(req.prompt, req.answer)
            first_obs = [] if episode is None else episode.first()
            self.episodes.append(episode)
            self.ids.append(list(first_obs))
            self.logprobs.append([0.0] * len(first_obs))
            self.versions.append([version] * len(first_obs))
            self.trains.append([0] * len(first_obs))
            self.turn_start.append(len(first_obs))
            self.flat.append((req, k))  # last: abort() reads the lists up to len(flat)
        return list(range(first, len(self.flat)))

    def observe(self, seqs: list[int], version: int, pool: cf.ThreadPoolExecutor | None) -> list[bool]:
        """These sequences ended a turn: for each, its episode's next observation appended (True),
        or the episode is over (False; always, without an environment). The environments answer
        at once, on the pool's threads."""
        asking = [seq for seq in seqs if self.episodes[seq] is not None]
        if not asking:  # one-turn rollouts: nothing to ask
            return [False] * len(seqs)

        def ask(seq: int):
            return self.episodes[seq].step(self.ids[seq][self.turn_start[seq]:], len(self.ids[seq]))

        answers = dict(zip(asking, pool.map(ask, asking) if len(asking) > 1 else map(ask, asking)))
        return [answers.get(seq) is not None and self._append(seq, answers[seq], version) for seq in seqs]

    def _append(self, seq: int, obs: list[int], version: int) -> bool:
        ids = self.ids[seq]
        ids += obs
        self.logprobs[seq] += [0.0] * len(obs)
        self.versions[seq] += [version] * len(obs)
        self.trains[seq] += [0] * len(obs)
        self.turn_start[seq] = len(ids)
        return True

    def turn_over(self, seq: int, token: int, eos_id: int, max_new_tokens: int) -> bool:
        """EOS, the turn's max_new_tokens, or the episode's token budget reached."""
        n = len(self.ids[seq])
        episode = self.episodes[seq]
        room = None if episode is None else episode.room(n)
        return token == eos_id or n - self.turn_start[seq] >= max_new_tokens or (room is not None and room <= 0)


def _mergeable(cache) -> bool:
    """Whether rows can join this cache: plain per-layer key/value tensors (a sliding-window or
    quantized cache keeps other state; such a model admits new rows when its batch runs dry)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(cache, attn: torch.Tensor, width: int) -> torch.Tensor:
    """Pad every layer's keys and values, and the attention mask, on the left to `width` positions."""
    extra = width - attn.shape[1]
    if extra:
        for layer in cache.layers:
            layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, extra, 0))
            layer.values = torch.nn.functional.pad(layer.values, (0, 0, extra, 0))
    return torch.nn.functional.pad(attn, (extra, 0))


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", lora=None,
                 adapter: str | None = None, env: EnvSpec | None = None):
        # device: "cuda" in a rollout worker Ray gave a GPU (rollout/devices.py), else "cpu".
        # lora (rollout/lora.py LoraSpec): the policy is this base model + an adapter, and an
        # update carries the adapter's tensors only; `adapter`: a saved adapter to start from.
        self.device = torch.device(device)
        self.model, self.tokenizer = load_causal_lm(model_path, dtype, device)
        if lora is not None:
            from rollout.lora import adapter_names

            self.model = lora.wrap(self.model, "policy", adapter).to(self.device).eval()
        self.update_names = adapter_names(self.model) if lora is not None else None  # None: every parameter
        self.eos_id = self.tokenizer.eos_token_id
        self.episodes = None if env is None else Episodes(env, self.tokenizer)  # rollout.env: multi-turn
        self._env_threads = None if env is None else cf.ThreadPoolExecutor(ENV_THREADS, thread_name_prefix="env")
        self.pad_id = self.tokenizer.pad_token_id
        self.asleep = 0  # sleep level while asleep (colocated placement), else 0
        # Shared with abort() on the worker's control thread; each is replaced whole, never
        # mutated in place, so the decode loop always reads a consistent value.
        self._aborted: frozenset[int] = frozenset()  # group ids whose samples are dropped
        self._batch: _Batch | None = None  # the decode batch running now
        self._queued: tuple[tuple[GenerationRequest, int], ...] = ()  # samples of this call not started

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int,
                 batch_size: int = 256) -> list[Rollout]:
        return [r for part in self.stream(requests, params, lambda: version, batch_size) for r in part]

    @torch.no_grad()
    def stream(self, requests: list[GenerationRequest], params: SamplingParams, safe_point: Callable[[], int],
               batch_size: int = 256) -> Iterator[list[Rollout]]:
        """Rollouts as they finish. `safe_point()` is called before every decode step and returns
        the policy version of the weights loaded now (the caller may swap weights inside it)."""
        self._queued = tuple((req, k) for req in requests for k in req.indices())
        try:
            yield from self._decode(params, safe_point, batch_size)
        finally:
            self._batch, self._queued = None, ()

    def _take_queued(self, n: int) -> list[tuple[GenerationRequest, int]]:
        """Up to n queued samples, in order, those of aborted groups skipped; off the queue."""
        queued, out, i = self._queued, [], 0
        while len(out) < n and i < len(queued):
            if queued[i][0].group_id not in self._aborted:
                out.append(queued[i])
            i += 1
        self._queued = queued[i:]
        return out

    def abort(self, floor: int | None, group_ids: tuple[int, ...] = ()) -> AbortResult:
        """Abort the groups named, and those with a sample in flight whose first token came from a
        version below `floor` (rollout/types.py: doomed): their rows leave the batch at the next
        decode step, their queued samples never start, and none of their rollouts is yielded."""
        b, queued = self._batch, self._queued
        active = [] if b is None else [(b.flat[seq][0].group_id, seq) for seq in list(b.active) + list(b.pending)]
        started: dict[int, int] = {}
        for g, seq in active:
            if b.versions[seq]:
                started[g] = min(started.get(g, b.versions[seq][0]), b.versions[seq][0])
        hit = (doomed(started, floor) | set(group_ids)) & ({g for g, _ in active} | {r.group_id for r, _ in queued})
        self._aborted = self._aborted | hit | set(group_ids)  # named: also in a call not started yet
        return AbortResult(tuple(sorted(hit)), sum(len(b.ids[seq]) for g, seq in active if g in hit))

    def _decode(self, params: SamplingParams, safe_point, batch_size: int) -> Iterator[list[Rollout]]:
        b = self._batch = _Batch()
        version = safe_point()
        b.active = self._next_rows(b, batch_size, params, version)
        if not b.active:
            return
        logits, cache, attn, pos = self._prefill(b, b.active)
        while True:
            now = safe_point()
            if now != version:  # new weights: re-encode every in-flight sequence under them
                version = now
                logits, cache, attn, pos = self._prefill(b, b.active)
            token, logp = self._sample(logits, params, [b.gens[seq] for seq in b.active])
            finished, keep, turned = [], [], []
            tokens, logps = token.tolist(), logp.tolist()  # one device-to-host copy per step
            aborted = self._aborted
            for row, seq in enumerate(b.active):
                b.ids[seq].append(tokens[row])
                b.logprobs[seq].append(logps[row])
                b.versions[seq].append(version)
                b.trains[seq].append(1)
                if b.flat[seq][0].group_id in aborted:
                    continue  # dropped, finished or not
                if not b.turn_over(seq, tokens[row], self.eos_id, params.max_new_tokens):
                    keep.append(row)
                else:
                    turned.append(seq)
            for seq, goes_on in zip(turned, b.observe(turned, version, self._env_threads)):
                if goes_on:
                    b.pending = b.pending + [seq]  # the next turn: admitted again, as a new row
                else:
                    finished.append(seq)
            if finished:
                yield [self._rollout(b, seq) for seq in finished]
            if not keep:  # the batch ran dry: start afresh with what is queued, if anything
                b.active = self._next_rows(b, batch_size, params, version)
                if not b.active:
                    return
                logits, cache, attn, pos = self._prefill(b, b.active)
                continue
            if len(keep) < len(b.active):  # drop finished (and aborted) rows
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attn, pos, token = attn[index], pos[index], token[index]
                b.active = [b.active[row] for row in keep]
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            out = self.model(input_ids=token[:, None], attention_mask=attn, position_ids=pos[:, None],
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            room = batch_size - len(b.active)
            if room and (self._queued or b.pending) and _mergeable(cache):  # freed rows go to the next samples
                new = self._next_rows(b, room, params, version)
                if new:
                    logits, cache, attn, pos = self._admit(b, new, (logits, cache, attn, pos))

    def _next_rows(self, b: _Batch, n: int, params: SamplingParams, version: int) -> list[int]:
        """Up to n sequences to decode next: episodes' next turns first, then samples not started."""
        aborted = self._aborted
        pending = [seq for seq in b.pending if b.flat[seq][0].group_id not in aborted]
        b.pending = pending[n:]
        return pending[:n] + b.add(self._take_queued(n - len(pending[:n])), params, self.episodes, version)

    def _admit(self, b: _Batch, new: list[int], running: tuple):
        """Prefill `new` on their own and join them to the running batch: both caches left-padded
        to one length (padding is masked out, positions are explicit), then stacked."""
        logits, cache, attn, pos = running
        n_logits, n_cache, n_attn, n_pos = self._prefill(b, new)
        width = max(attn.shape[1], n_attn.shape[1])
        attn, n_attn = _pad_left(cache, attn, width), _pad_left(n_cache, n_attn, width)
        for layer, joining in zip(cache.layers, n_cache.layers):
            layer.keys = torch.cat([layer.keys, joining.keys])
            layer.values = torch.cat([layer.values, joining.values])
        b.active = b.active + new
        return torch.cat([logits, n_logits]), cache, torch.cat([attn, n_attn]), torch.cat([pos, n_pos])

    def _prefill(self, b: _Batch, seqs: list[int]):
        """Left-padded forward over prompt + tokens so far of these sequences."""
        rows = [b.prompt_ids[s] + b.ids[s] for s in seqs]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            attn[i, width - len(r):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache()
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        return out.logits[:, -1], cache, attn, positions[:, -1]

    @staticmethod
    def _sample(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]):
        """A token per row (row i drawn with gens[i]) and its logprob under log_softmax(logits / T)."""
        if params.temperature == 0:
            token = logits.argmax(dim=-1)
            logp = torch.log_softmax(logits.float(), dim=-1)
        else:
            logp = torch.log_softmax(logits.float() / params.temperature, dim=-1)
            # Inverse-CDF sampling with one uniform per row from the row's own generator.
            # The generators live on the CPU (the same draws on any device): only [rows] uniforms move.
            u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in gens]).to(logp.device)
            cdf = logp.double().exp().cumsum(dim=-1)
            token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(max=logp.shape[-1] - 1)
        return token, logp.gather(-1, token[:, None]).squeeze(1)

    def _rollout(self, b: _Batch, seq: int) -> Rollout:
        req, k = b.flat[seq]
        ids, ep = b.ids[seq], b.episodes[seq]
        stopped = bool(ids) and ids[-1] == self.eos_id and not (ep is not None and ep.truncated)
        return Rollout(
            group_id=req.group_id, prompt_id=req.prompt_id, sample_index=k, prompt=req.prompt, answer=req.answer,
            prompt_ids=tuple(b.prompt_ids[seq]), response_ids=tuple(ids),
            response_text=self.tokenizer.decode(ids, skip_special_tokens=True) if ep is None else ep.final_text,
            logprobs=tuple(b.logprobs[seq]), versions=tuple(b.versions[seq]),
            finish_reason="stop" if stopped else "length", seed=b.seeds[seq],
            trains=() if ep is None else tuple(b.trains[seq]),
            episode=None if ep is None else ep.stats(),
        )

    # ---- colocated placement: the device goes to the learner while it trains ----
    # The KV cache lives only inside a generation call (a DynamicCache per batch), so between
    # calls the weights are all the engine holds. Levels as vLLM's: 1 moves the weights to
    # host memory (on a CPU engine they are there already: nothing is released), 2 drops them
    # and the next weight update refills them (rollout/pool.py refuses to generate until then).

    def sleep(self, level: int) -> int:
        """Release the weights as `level` says; returns the bytes that left the device."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        params = dict(self.model.named_parameters())  # tied weights once
        moved = level == 2 or self.device.type != "cpu"
        released = sum(p.numel() * p.element_size() for p in params.values()) if moved else 0
        self._shapes = {name: p.shape for name, p in params.items()}
        with torch.no_grad():
            for p in params.values():
                p.data = p.data.to("cpu") if level == 1 else torch.empty(0, dtype=p.dtype, device=self.device)
        self.asleep = level
        return released

    def wake_up(self) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                p.data = p.data.to(self.device) if self.asleep == 1 else \
                    torch.empty(self._shapes[name], dtype=p.dtype, device=self.device)
        self.asleep = 0

    def load_weights(self, arrays: dict[str, np.ndarray], version: int | None = None) -> None:
        """Copy every named parameter an update carries (all of them; with LoRA the adapter's);
        the name sets must match exactly. (Versions are kept by the rollout worker, which passes
        `version` to every engine alike.)"""
        params = dict(self.model.named_parameters())
        if self.update_names is not None:
            params = {name: params[name] for name in self.update_names}
        missing, extra = set(params) - set(arrays), set(arrays) - set(params)
        if missing or extra:
            raise EngineError(f"weight names differ from the engine's model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(extra)[:5]}")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; we only read them
            for name, p in params.items():
                p.copy_(torch.as_tensor(arrays[name]))  # numpy (object store) or torch (buckets)
