"""The `hf` engine: batched sampling with a KV cache from a transformers causal LM.

Reference engine for CPU (and one GPU). Its own decode loop (not `model.generate`) so that
it can stream finished sequences out as they finish, drop finished rows from the batch and
admit queued samples in their place (continuous admission: up to `batch_size` rows decode
together; a new row's prompt is prefilled on its own and its KV cache left-padded into the
batch's, so a long response never holds the rest back). The loop runs on a thread of its own
while there is work; every stream() call queues its samples for it and reads its own
rollouts back, so calls made while others run join the running batch at the next decode
step, each sample with its own call's sampling settings (the worker allows that in
asynchronous runs only: rollout/pool.py calls_in_flight), and swap weights
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
import queue
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from rollout.cpu_linear import use_onednn, wants_onednn
from rollout.envs.spec import EnvSpec
from rollout.envs.episode import Episode, Episodes
from rollout.types import AbortResult, EngineError, GenerationRequest, Rollout, SamplingParams, doomed, sample_seed


ENV_THREADS = 16  # multi-turn: environments answering at once (rows whose turns ended at one step)
GROWING_CACHE = True  # False: transformers' concatenating DynamicCache (bench/generation.py compares the two)


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


@dataclass(eq=False)
class _Call:
    """One stream() call. Its rollouts go to `parts` as they finish (on the decode thread); then
    None once every sample is yielded or dropped (aborted, or the caller stopped reading:
    `closed`), or the exception that ended the decode loop."""

    params: SamplingParams
    left: int  # samples neither yielded nor dropped
    parts: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    closed: bool = False

    def settle(self, rollouts: list[Rollout], dropped: int = 0) -> None:
        if rollouts:
            self.parts.put(rollouts)
        self.left -= len(rollouts) + dropped
        if self.left == 0:
            self.parts.put(None)


@dataclass(eq=False)
class _Seq:
    """One sample being generated: ids so far (observations included), per-token logprobs,
    versions and whether the model produced each, and its own sampling generator, seeded from
    (run seed, step, group, sample): a rollout does not depend on the batch, call or worker it
    ran in. Multi-turn: its episode (None: one turn) and where its current turn began."""

    req: GenerationRequest
    k: int
    call: _Call
    seed: int
    gen: torch.Generator
    episode: Episode | None
    ids: list[int]
    logprobs: list[float]
    versions: list[int]
    trains: list[int]
    turn_start: int

    @classmethod
    def start(cls, req: GenerationRequest, k: int, call: _Call, episodes: Episodes | None, version: int) -> "_Seq":
        seed = sample_seed(call.params.seed, call.params.step, req.group_id, k)
        episode = None if episodes is None else episodes.start(req.prompt, req.answer)
        first = [] if episode is None else episode.first()
        return cls(req, k, call, seed, torch.Generator().manual_seed(seed), episode, list(first),
                   [0.0] * len(first), [version] * len(first), [0] * len(first), len(first))

    @property
    def group_id(self) -> int:
        return self.req.group_id

    def append(self, token: int, logprob: float, version: int, trains: int = 1) -> None:
        self.ids.append(token)
        self.logprobs.append(logprob)
        self.versions.append(version)
        self.trains.append(trains)

    def observe(self, obs: list[int], version: int) -> None:
        """The environment's answer to a turn: never trained; the next turn starts after it."""
        for token in obs:
            self.append(token, 0.0, version, 0)
        self.turn_start = len(self.ids)

    def turn_over(self, token: int, eos_id: int) -> bool:
        """EOS, the turn's max_new_tokens, or the episode's token budget reached."""
        n = len(self.ids)
        room = None if self.episode is None else self.episode.room(n)
        return (token == eos_id or n - self.turn_start >= self.call.params.max_new_tokens
                or (room is not None and room <= 0))

    def eos_allowed(self) -> bool:
        """min_new_tokens: the turn's next token may end it."""
        return len(self.ids) - self.turn_start >= self.call.params.min_new_tokens


def _observe(seqs: list[_Seq], version: int, pool: cf.ThreadPoolExecutor | None) -> list[bool]:
    """These sequences ended a turn: for each, its episode's next observation appended (True),
    or the episode is over (False; always, without an environment). The environments answer
    at once, on the pool's threads."""
    asking = [s for s in seqs if s.episode is not None]
    if not asking:  # one-turn rollouts: nothing to ask
        return [False] * len(seqs)

    def ask(s: _Seq):
        return s.episode.step(s.ids[s.turn_start:], len(s.ids))

    answers = dict(zip(asking, pool.map(ask, asking) if len(asking) > 1 else map(ask, asking)))
    out = []
    for s in seqs:
        obs = answers.get(s)
        if obs is not None:
            s.observe(obs, version)
        out.append(obs is not None)
    return out


class _GrowingLayer(DynamicLayer):
    """A transformers DynamicLayer whose keys and values live in a buffer with room to spare, so
    a decode step writes its one new position in place instead of concatenating the whole cache
    into a new tensor (transformers' DynamicLayer: every step copies every layer's keys and
    values, O(length^2) over a response). `keys` / `values` are views of the filled part; code
    that assigns them whole (row selection, left padding, joining rows) gets a new buffer at the
    next update."""

    _kbuf = _vbuf = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self.get_seq_length(), key_states.shape[-2]
        if not self._buffered(n) or n + add > self._kbuf.shape[-2] or key_states.shape[0] != self._kbuf.shape[0]:
            self._rebuffer(key_states, value_states, n, n + add + max(n + add, 32))  # capacity doubles
        self._kbuf[:, :, n:n + add] = key_states
        self._vbuf[:, :, n:n + add] = value_states
        self.keys, self.values = self._kbuf[:, :, :n + add], self._vbuf[:, :, :n + add]
        return self.keys, self.values

    def _rebuffer(self, key_states, value_states, n: int, capacity: int) -> None:
        kbuf = key_states.new_zeros(key_states.shape[:2] + (capacity,) + key_states.shape[3:])
        vbuf = value_states.new_zeros(value_states.shape[:2] + (capacity,) + value_states.shape[3:])
        if n:
            kbuf[:, :, :n], vbuf[:, :, :n] = self.keys, self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def _buffered(self, n: int) -> bool:
        """keys / values are still the views of the buffer (nothing assigned them since)."""
        return self._kbuf is not None and (n == 0 or self.keys.data_ptr() == self._kbuf.data_ptr()
                                           and self.keys.shape[0] == self._kbuf.shape[0])

    def batch_select_indices(self, indices) -> None:
        n = self.get_seq_length()
        if n and self._buffered(n):  # the buffer's rows, room included: one copy, no rebuffering after
            self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
            self.keys, self.values = self._kbuf[:, :, :n], self._vbuf[:, :, :n]
        else:
            super().batch_select_indices(indices)


def _new_cache() -> DynamicCache:
    """An empty cache (one layer per decoder layer, made as the model first writes): growing
    layers, or transformers' own with GROWING_CACHE off."""
    cache = DynamicCache()
    if GROWING_CACHE:
        cache.layer_class_to_replicate = _GrowingLayer
    return cache


def _mergeable(cache) -> bool:
    """Whether rows can join this cache: plain per-layer key/value tensors (a sliding-window or
    quantized cache keeps other state; such a model admits new rows when its batch runs dry)."""
    return all(type(layer) in (DynamicLayer, _GrowingLayer) for layer in cache.layers)


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
                 adapter: str | None = None, env: EnvSpec | None = None, cpu_linear: str = "auto"):
        # device: "cuda" in a rollout worker Ray gave a GPU (rollout/devices.py), else "cpu".
        # lora (rollout/lora.py LoraSpec): the policy is this base model + an adapter, and an
        # update carries the adapter's tensors only; `adapter`: a saved adapter to start from.
        self.device = torch.device(device)
        self.model, self.tokenizer = load_causal_lm(model_path, dtype, device)
        if lora is not None:
            from rollout.lora import adapter_names

            self.model = lora.wrap(self.model, "policy", adapter).to(self.device).eval()
        if wants_onednn(cpu_linear):  # model.cpu_linear: oneDNN's Linear kernels on CPU
            use_onednn(self.model)
        self.update_names = adapter_names(self.model) if lora is not None else None  # None: every parameter
        self.eos_id = self.tokenizer.eos_token_id
        self.episodes = None if env is None else Episodes(env, self.tokenizer)  # rollout.env: multi-turn
        self._env_threads = None if env is None else cf.ThreadPoolExecutor(ENV_THREADS, thread_name_prefix="env")
        self.pad_id = self.tokenizer.pad_token_id
        self.asleep = 0  # sleep level while asleep (colocated placement), else 0
        # Shared between the callers' threads, abort() on the worker's control thread and the
        # decode thread; each is replaced whole, never mutated in place, so a reader always sees
        # a consistent value. `_lock` orders stream()'s queueing with the decode thread's exit.
        self._lock = threading.Lock()
        self._aborted: frozenset[int] = frozenset()  # group ids whose samples are dropped
        self._queued: tuple[tuple[GenerationRequest, int, _Call], ...] = ()  # samples not started
        self._active: tuple[_Seq, ...] = ()  # decoding now
        self._pending: tuple[_Seq, ...] = ()  # multi-turn: waiting to rejoin for their next turn
        self._loop: threading.Thread | None = None  # the decode thread while there is work
        self._live: frozenset[_Call] = frozenset()  # calls with samples neither yielded nor dropped
        self._safe_point: Callable[[], int] = lambda: 0
        self._batch_size = 256

    def generate(self, requests: list[GenerationRequest], params: SamplingParams, version: int,
                 batch_size: int = 256) -> list[Rollout]:
        return [r for part in self.stream(requests, params, lambda: version, batch_size) for r in part]

    def stream(self, requests: list[GenerationRequest], params: SamplingParams, safe_point: Callable[[], int],
               batch_size: int = 256) -> Iterator[list[Rollout]]:
        """This call's rollouts as they finish. The call is queued at once (here, not at the first
        read): calls made while others run join the same decode batch (one decode thread per
        engine), their samples behind the earlier calls'. `safe_point()` is called before every
        decode step and returns the policy version of the weights loaded now (the caller may
        swap weights inside it)."""
        call = _Call(params, sum(len(req.indices()) for req in requests))
        if not call.left:
            return iter(())
        with self._lock:
            self._queued = self._queued + tuple((req, k, call) for req in requests for k in req.indices())
            self._live = self._live | {call}
            self._safe_point, self._batch_size = safe_point, batch_size
            if self._loop is None:
                # Not a daemon: a process that exits right after a call waits for the loop to wind
                # down (a daemon thread killed inside a torch op aborts the process: exit code 134).
                self._loop = threading.Thread(target=self._run, name="hf-decode")
                self._loop.start()
        return self._parts(call)

    @staticmethod
    def _parts(call: _Call) -> Iterator[list[Rollout]]:
        try:
            while (part := call.parts.get()) is not None:
                if isinstance(part, BaseException):
                    raise part
                yield part
        finally:
            call.closed = True  # read no further: its rows leave the batch, its queue never starts

    def _run(self) -> None:
        try:
            with torch.no_grad():
                self._decode()
        except BaseException as err:  # every call still waiting gets the error, none hangs
            with self._lock:
                live, self._live, self._queued, self._loop = self._live, frozenset(), (), None
            self._active = self._pending = ()
            for call in live:
                call.parts.put(err)

    def _dropped(self, group_id: int, call: _Call) -> bool:
        """An aborted group's sample, or one whose caller stopped reading."""
        return group_id in self._aborted or call.closed

    def _settle(self, finished: list[_Seq], dropped: list[_Seq] = ()) -> None:
        """Hand finished rollouts to their calls, count dropped samples; a call settled whole ends."""
        rollouts: dict[_Call, list[Rollout]] = {s.call: [] for s in [*finished, *dropped]}
        for s in finished:
            rollouts[s.call].append(self._rollout(s))
        gone = Counter(s.call for s in dropped)
        for call, done in rollouts.items():
            self._count(call, done, gone[call])

    def _count(self, call: _Call, rollouts: list[Rollout], dropped: int) -> None:
        call.settle(rollouts, dropped)
        if call.left == 0:
            with self._lock:
                self._live = self._live - {call}

    def _take_queued(self, n: int, version: int) -> list[_Seq]:
        """Up to n queued samples started, in order; those of aborted groups or closed calls are
        dropped on the way."""
        with self._lock:
            queued, take, i = self._queued, [], 0
            while len(take) < n and i < len(queued):
                take.append(queued[i])
                i += 1
            self._queued = queued[i:]
        seqs = []
        for req, k, call in take:
            if self._dropped(req.group_id, call):
                self._count(call, [], 1)
            else:
                seqs.append(_Seq.start(req, k, call, self.episodes, version))
        if len(seqs) < len(take):  # some were dropped: take as many more
            seqs += self._take_queued(n - len(seqs), version)
        return seqs

    def abort(self, floor: int | None, group_ids: tuple[int, ...] = ()) -> AbortResult:
        """Abort the groups named, and those with a sample in flight whose first token came from a
        version below `floor` (rollout/types.py: doomed): their rows leave the batch at the next
        decode step, their queued samples never start, and none of their rollouts is yielded."""
        running, queued = self._active + self._pending, self._queued
        started: dict[int, int] = {}
        for s in running:
            if s.versions:
                started[s.group_id] = min(started.get(s.group_id, s.versions[0]), s.versions[0])
        present = {s.group_id for s in running} | {req.group_id for req, _, _ in queued}
        hit = (doomed(started, floor) | set(group_ids)) & present
        self._aborted = self._aborted | hit | set(group_ids)  # named: also in a call not started yet
        return AbortResult(tuple(sorted(hit)), sum(len(s.ids) for s in running if s.group_id in hit))

    def _decode(self) -> None:
        """The decode loop, on its own thread while any call has work: each time the batch runs
        dry it starts afresh with what is queued, and it ends once nothing is."""
        while True:
            with self._lock:
                if not self._queued and not self._pending:
                    self._loop, self._active = None, ()
                    return
            version = self._safe_point()
            self._active = tuple(self._next_rows(self._batch_size, version))
            if self._active:
                self._decode_batch(version)

    def _decode_batch(self, version: int) -> None:
        """Decode until the batch runs dry, refilling freed rows with queued samples as it goes."""
        logits, cache, attn, pos = self._prefill(self._active)
        while True:
            now = self._safe_point()
            if now != version:  # new weights: re-encode every in-flight sequence under them
                version = now
                logits, cache, attn, pos = self._prefill(self._active)
            active = self._active
            token, logp = self._sample(logits, active)
            tokens, logps = token.tolist(), logp.tolist()  # one device-to-host copy per step
            keep, turned, dropped = [], [], []
            for row, s in enumerate(active):
                s.append(tokens[row], logps[row], version)
                if self._dropped(s.group_id, s.call):
                    dropped.append(s)  # aborted or unread, finished or not
                elif s.turn_over(tokens[row], self.eos_id):
                    turned.append(s)
                else:
                    keep.append(row)
            finished = []
            for s, goes_on in zip(turned, _observe(turned, version, self._env_threads)):
                if goes_on:
                    self._pending = self._pending + (s,)  # the next turn: admitted again, as a new row
                else:
                    finished.append(s)
            self._settle(finished, dropped)
            if not keep:  # the batch ran dry
                self._active = ()
                return
            if len(keep) < len(active):  # drop finished (and aborted) rows
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attn, pos, token = attn[index], pos[index], token[index]
                self._active = tuple(active[row] for row in keep)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            out = self.model(input_ids=token[:, None], attention_mask=attn, position_ids=pos[:, None],
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
            room = self._batch_size - len(self._active)
            if room and (self._queued or self._pending) and _mergeable(cache):  # freed rows go to the next samples
                new = self._next_rows(room, version)
                if new:
                    logits, cache, attn, pos = self._admit(new, (logits, cache, attn, pos))

    def _next_rows(self, n: int, version: int) -> list[_Seq]:
        """Up to n sequences to decode next: episodes' next turns first, then samples not started."""
        pending, gone = [], []
        for s in self._pending:
            (gone if self._dropped(s.group_id, s.call) else pending).append(s)
        self._settle([], gone)
        self._pending = tuple(pending[n:])
        return pending[:n] + self._take_queued(n - len(pending[:n]), version)

    def _admit(self, new: list[_Seq], running: tuple):
        """Prefill `new` on their own and join them to the running batch: both caches left-padded
        to one length (padding is masked out, positions are explicit), then stacked."""
        logits, cache, attn, pos = running
        n_logits, n_cache, n_attn, n_pos = self._prefill(new)
        width = max(attn.shape[1], n_attn.shape[1])
        attn, n_attn = _pad_left(cache, attn, width), _pad_left(n_cache, n_attn, width)
        for layer, joining in zip(cache.layers, n_cache.layers):
            layer.keys = torch.cat([layer.keys, joining.keys])
            layer.values = torch.cat([layer.values, joining.values])
        self._active = self._active + tuple(new)
        return torch.cat([logits, n_logits]), cache, torch.cat([attn, n_attn]), torch.cat([pos, n_pos])

    def _prefill(self, seqs):
        """Left-padded forward over prompt + tokens so far of these sequences."""
        rows = [list(s.req.prompt_ids) + s.ids for s in seqs]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r)
            attn[i, width - len(r):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
        cache = _new_cache()
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache,
                         use_cache=True)
        return out.logits[:, -1], cache, attn, positions[:, -1]

    def _sample(self, logits: torch.Tensor, seqs):
        """A token per row (row i drawn with its sequence's generator, at its call's temperature)
        and its logprob under log_softmax(logits / T); greedy rows (T = 0) under log_softmax(logits).
        A row short of its min_new_tokens cannot draw EOS, but its logprob stays the model's own
        (what the learner computes: rollout/config.py min_new_tokens)."""
        temps = [s.call.params.temperature for s in seqs]
        if len(set(temps)) == 1:
            scale = temps[0] if temps[0] > 0 else 1.0
        else:  # calls at different temperatures share the batch
            scale = torch.tensor([t if t > 0 else 1.0 for t in temps], device=logits.device)[:, None]
        logp = torch.log_softmax(logits.float() / scale, dim=-1)
        no_eos = [not s.eos_allowed() for s in seqs]
        masked = torch.tensor(no_eos, device=logits.device) if any(no_eos) else None
        if 0 in temps:
            choice = logits if masked is None else logits.masked_fill(
                masked[:, None] & (torch.arange(logits.shape[-1], device=logits.device) == self.eos_id), float("-inf"))
            token = choice.argmax(dim=-1)
        if any(t > 0 for t in temps):
            # Inverse-CDF sampling with one uniform per row from the row's own generator.
            # The generators live on the CPU (the same draws on any device): only [rows] uniforms move.
            u = torch.cat([torch.rand(1, generator=s.gen, dtype=torch.float64) for s in seqs]).to(logp.device)
            probs = logp.double().exp()
            if masked is not None:
                probs[masked, self.eos_id] = 0.0
            cdf = probs.cumsum(dim=-1)
            drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(max=logp.shape[-1] - 1)
            token = drawn if 0 not in temps else torch.where(torch.tensor([t == 0 for t in temps],
                                                                         device=logits.device), token, drawn)
        return token, logp.gather(-1, token[:, None]).squeeze(1)

    def _rollout(self, s: _Seq) -> Rollout:
        req, ids, ep = s.req, s.ids, s.episode
        stopped = bool(ids) and ids[-1] == self.eos_id and not (ep is not None and ep.truncated)
        return Rollout(
            group_id=req.group_id, prompt_id=req.prompt_id, sample_index=s.k, prompt=req.prompt, answer=req.answer,
            prompt_ids=tuple(req.prompt_ids), response_ids=tuple(ids),
            response_text=self.tokenizer.decode(ids, skip_special_tokens=True) if ep is None else ep.final_text,
            logprobs=tuple(s.logprobs), versions=tuple(s.versions),
            finish_reason="stop" if stopped else "length", seed=s.seed,
            trains=() if ep is None else tuple(s.trains),
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
