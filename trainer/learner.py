"""One learner rank: a DeepSpeed engine (ZeRO 0-3; gloo on CPU, NCCL on GPU) inside a Ray actor.

Algorithm-blind: it runs its model (a policy's token logprobs, a critic's values, or a
reward model's sequence scores),
calls the registered loss named in the LossSpec, weighs per-token losses by the
batch's loss_weights (the controller's aggregation over the whole optimizer step)
and steps.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import ray
import torch

from rollout.cpu_linear import use_onednn, wants_onednn
from rollout.devices import freeze_setup_objects
from rollout.lora import LoraSpec, adapter_names
from rollout.transfer.buckets import Layout, PackRing, TensorSpec, pack, plan_layout
from rollout.transfer.collective import TransferGroup
from rollout.transfer.object_store import StoredUpdate, put_packed
from trainer.logprobs import shift_to_tokens, check_chunked_head, token_logprobs
from trainer.losses import LOSSES, LossInputs, prioritise_tokens
from trainer.schedules import Schedule
from trainer.types import LossSpec, StepStats, TrainBatch

# Metrics whose step maximum over response tokens is reported next to the token mean: one
# extreme importance weight or stale token is the signal, and a mean over thousands hides it.
MAX_METRICS = ("is_weight", "logprob_diff")


@dataclass(frozen=True)
class OffloadStats:
    offloaded: tuple[str, ...]  # the DeepSpeed states off the device now (OffloadStateTypeEnum values)
    freed_bytes: int  # device bytes released by this call (negative: taken back by a reload)


@dataclass(frozen=True)
class LearnerOptions:
    zero_stage: int = 2
    lr: float = 1e-4
    schedule: Schedule = Schedule()  # the rate's multiplier per optimizer step (trainer/schedules.py)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    micro_batch_size: int = 64
    grad_accum_steps: int = 1  # micro-batches per optimizer step on each rank
    dtype: str = "float32"
    use_reference: bool = False  # keep a frozen copy of the initial policy for KL
    # "policy": causal LM; "value": critic (token-level scalar head); "reward": reward model
    # (AutoModelForSequenceClassification, one label, read at the last token).
    model_kind: str = "policy"
    gradient_checkpointing: bool = False  # recompute activations in backward: memory for compute
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    logprob_chunk_tokens: int = 0  # > 0: the output head over this many positions at a time (trainer/logprobs.py)
    seed: int = 0
    collective_timeout_s: float = 600.0  # the learners' process group: a collective waits no longer
    # LoRA (rollout/lora.py): only the adapter (and a critic's or reward model's head) trains; the
    # KL reference is the same model with the adapter switched off; updates carry the adapter.
    lora: Optional[LoraSpec] = None
    cpu_linear: str = "auto"  # model.cpu_linear: the Linear layers' kernel on CPU (rollout/cpu_linear.py)


def token_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Critic value [B, T] of the state before each token (column 0 is 0)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()
    return shift_to_tokens(out[:, :-1])


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward model's scalar [B] for right-padded rows, read at each row's last token."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def resolve_attention(name: str) -> str:
    """`auto`: flash attention on a GPU that has it installed, else PyTorch's SDPA. Asking for
    flash attention where it cannot run is an error, not a silent fallback."""
    import importlib.util

    has_flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        return "flash_attention_2" if has_flash else "sdpa"
    if name == "flash_attention_2" and not has_flash:
        raise ValueError("trainer.attn_implementation 'flash_attention_2' needs a CUDA GPU and the "
                         "flash-attn package; use 'auto' or 'sdpa'")
    return name


def load_model(path: str, kind: str, dtype: torch.dtype, attn_implementation: str = "auto"):
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer)

    attn = resolve_attention(attn_implementation)
    if kind == "policy":
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    if kind == "value":
        # A scalar head on every token; from a policy or a reward-model checkpoint (the
        # backbone loads, a missing head starts fresh). No dropout: values must be deterministic.
        config = AutoConfig.from_pretrained(path, num_labels=1)
        config.classifier_dropout = 0.0
        return AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=dtype,
                                                               attn_implementation=attn)
    if kind == "reward":
        # The classifier pools the last non-padding token, so it must know the pad id; the saved
        # checkpoint keeps it, which is what reward/reward_model.py serves.
        config = AutoConfig.from_pretrained(path, num_labels=1)
        if config.pad_token_id is None:
            tok = AutoTokenizer.from_pretrained(path)
            config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return AutoModelForSequenceClassification.from_pretrained(path, config=config, dtype=dtype,
                                                                  attn_implementation=attn)
    raise ValueError(f"learner model_kind must be 'policy', 'value' or 'reward', got {kind!r}")


def _skip_cpu_shm_comm() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory allreduce op (~35 s, needs a
    compiler) at init_distributed, although only its own launcher (LOCAL_SIZE set) uses it.
    Marking the op incompatible makes DeepSpeed use plain gloo collectives."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class _AdamW(torch.optim.AdamW):
    """AdamW that can be told to skip its next step: moments and step count stay as they were.
    ZeRO-0 needs it (DeepSpeed checks non-finite gradients only in its ZeRO optimizers). DeepSpeed
    reads `overflow` after a step: a skipped step counts as skipped and does not advance the
    learning-rate schedule, as in the ZeRO optimizers."""

    skip_next = False
    overflow = False

    def step(self, closure=None):
        self.overflow, self.skip_next = self.skip_next, False
        if self.overflow:
            return None
        return super().step(closure)


class Learner:
    """Ray actor body for one data-parallel rank."""

    def __init__(self, model_path: str, threads: int):
        torch.set_num_threads(threads)
        self.model_path = model_path
        self.engine = None
        self.transfer: Optional[TransferGroup] = None  # rank 0, with rollout.weight_transfer 'collective'
        self.ring = PackRing()  # rank 0's pack buffers for the weight sync

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the rendezvous."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def setup(self, rank: int, world_size: int, master_addr: str, master_port: int, opts: LearnerOptions) -> int:
        import deepspeed

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        self.rank, self.world_size, self.opts = rank, world_size, opts
        torch.manual_seed(opts.seed)
        on_gpu = torch.cuda.is_available()
        if not on_gpu:
            _skip_cpu_shm_comm()
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo",
                                   timeout=datetime.timedelta(seconds=opts.collective_timeout_s))
        dtype = getattr(torch, opts.dtype)
        model = load_model(self.model_path, opts.model_kind, dtype, opts.attn_implementation)
        if opts.lora is not None:
            model = opts.lora.wrap(model, opts.model_kind)
        if opts.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        onednn = wants_onednn(opts.cpu_linear)  # model.cpu_linear, for the policy and its reference
        if onednn:
            use_onednn(model)
        trained = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapter only
        optimizer = self.optimizer = _AdamW(trained, lr=opts.lr, weight_decay=opts.weight_decay)
        # DeepSpeed steps the scheduler at each applied optimizer step and checkpoints its state.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, opts.schedule)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                               config=self._ds_config())
        self.ref = None
        if opts.use_reference and opts.lora is None:  # with LoRA the reference is the model, adapter off
            self.ref = load_model(self.model_path, "policy", dtype, opts.attn_implementation).eval()
            self.ref.requires_grad_(False)
            if onednn:
                use_onednn(self.ref)
            if on_gpu:
                self.ref.cuda()
        if opts.model_kind == "policy" and opts.logprob_chunk_tokens > 0:
            self.engine.eval()
            check_chunked_head(self.engine, model.config.vocab_size, opts.logprob_chunk_tokens)
        freeze_setup_objects()
        return rank

    def _logprobs(self, model, t: dict[str, torch.Tensor], temperature: float, entropy_grad: bool = False):
        return token_logprobs(model, t["input_ids"], t["attention_mask"], temperature, t.get("position_ids"),
                              self.opts.logprob_chunk_tokens, entropy_grad)

    def _ds_config(self) -> dict:
        o = self.opts
        return {
            "train_micro_batch_size_per_gpu": o.micro_batch_size,
            "gradient_accumulation_steps": o.grad_accum_steps,
            "train_batch_size": o.micro_batch_size * o.grad_accum_steps * self.world_size,
            "gradient_clipping": o.max_grad_norm,
            "zero_optimization": {"stage": o.zero_stage},
            # check_grad_overflow: a bf16 step whose gradient is not finite is skipped, as in fp32
            "bf16": {"enabled": o.dtype == "bfloat16", "check_grad_overflow": True},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
        }

    def _tensors(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        # Arrays from the object store are read-only views; torch wants its own copy.
        return {k: torch.tensor(v, device=self.engine.device) for k, v in batch.arrays().items()}

    def _loss_inputs(self, t: dict[str, torch.Tensor], spec: LossSpec) -> LossInputs:
        x = LossInputs(mask=t["loss_mask"], behaviour_logprobs=t.get("behaviour_logprobs"),
                       proximal_logprobs=t.get("proximal_logprobs"), advantages=t.get("advantages"),
                       old_values=t.get("old_values"), returns=t.get("returns"),
                       ref_logprobs=t.get("ref_logprobs"), margins=t.get("margins"))
        if self.opts.model_kind == "value":
            x.values = token_values(self.engine, t["input_ids"], t["attention_mask"])
        elif self.opts.model_kind == "reward":
            x.scores = sequence_scores(self.engine, t["input_ids"], t["attention_mask"])
        else:
            x.logprobs, x.entropy = self._logprobs(self.engine, t, spec.temperature, spec.entropy_coef > 0)
            if spec.kl_coef > 0 and x.ref_logprobs is None:
                x.ref_logprobs = self._ref_logprobs(t, spec)
        return x

    def train_step(self, shard: TrainBatch, spec: LossSpec) -> StepStats:
        """One optimizer step over this rank's shard, in grad_accum_steps micro-batches."""
        self.engine.train()
        loss_fn = LOSSES.get(spec.name)
        n, micro = len(shard), self.opts.micro_batch_size
        if n != micro * self.opts.grad_accum_steps:
            raise ValueError(f"rank {self.rank} got {n} rows; expected micro_batch_size {micro} x "
                             f"grad_accum_steps {self.opts.grad_accum_steps}")
        sums: dict[str, float] = {}
        row_sums: dict[str, float] = {}
        maxes: dict[str, float] = {}
        loss_total, tokens, rows, norm = 0.0, 0, 0, None
        lr = float(self.engine.get_lr()[0])  # the rate this step applies (the schedule moves after it)
        for start in range(0, n, micro):
            t = self._tensors(shard.rows(slice(start, start + micro)))
            x = self._loss_inputs(t, spec)
            per_token, metrics = loss_fn(x, spec)
            weights = t["loss_weights"]
            if spec.token_keep_frac < 1:  # D3S: only the tokens of largest |advantage| x entropy train
                weights = prioritise_tokens(weights, x, spec.token_keep_frac)
                metrics = {**metrics, "token_kept": (weights != 0).float()}
            loss = (per_token * weights).sum()
            # DeepSpeed averages gradients over ranks; the weights already sum over the whole step.
            self.engine.backward(loss * self.world_size, scale_wrt_gas=False)
            if self.opts.zero_stage == 0 and start + micro >= n:
                norm = self._grad_norm()  # DeepSpeed keeps no norm without ZeRO; grads are reduced by now
                if not math.isfinite(norm):  # no update: zero gradients (clipping must see a number), no step
                    for p in self.engine.module.parameters():
                        if p.grad is not None:
                            p.grad.zero_()
                    self.optimizer.skip_next = True
            self.engine.step()
            loss_total += float(loss.detach())
            tokens += int(x.mask.sum())
            if x.logprobs is not None:
                metrics = {**metrics, "entropy": x.entropy.detach()}
                if x.behaviour_logprobs is not None:
                    metrics["logprob_diff"] = (x.logprobs.detach() - x.behaviour_logprobs).abs()
            live = (x.mask.sum(dim=1) > 0).float()  # rows that train (preference filler rows do not)
            rows += int(live.sum())
            for key, value in metrics.items():
                if value.dim() == 1:  # per-sequence metric
                    row_sums[key] = row_sums.get(key, 0.0) + float((value * live).sum())
                else:
                    sums[key] = sums.get(key, 0.0) + float((value * x.mask).sum())
                    if key in MAX_METRICS and bool((x.mask == 1).any()):
                        maxes[key] = max(maxes.get(key, -float("inf")), float(value[x.mask == 1].max()))
        if norm is None:
            norm = self.engine.get_global_grad_norm()
        # ZeRO-1/2/3 skip a step whose global gradient norm is not finite (DeepSpeed's overflow
        # check; on for bf16 in _ds_config) and report the norm as inf; ZeRO-0 is skipped above.
        skipped = norm is not None and not math.isfinite(float(norm))
        return StepStats(loss_total, tokens, sums, None if norm is None else float(norm), row_sums, rows, maxes,
                         skipped, lr)

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0

    @torch.no_grad()
    def _ref_logprobs(self, t: dict[str, torch.Tensor], spec: LossSpec) -> torch.Tensor:
        if self.opts.lora is not None and self.opts.use_reference:
            with self.engine.module.disable_adapter():  # the base model: the initial policy, no second copy
                return self._logprobs(self.engine, t, spec.temperature)[0]
        if self.ref is None:
            raise ValueError("kl_coef > 0 but the learners were started without a reference model")
        return self._logprobs(self.ref, t, spec.temperature)[0]

    @torch.no_grad()
    def logprobs(self, batch: TrainBatch, temperature: float) -> np.ndarray:
        """Current-policy token logprobs [B, T] for `batch` (no update)."""
        self.engine.eval()
        t = self._tensors(batch)
        return self._logprobs(self.engine, t, temperature)[0].cpu().numpy()

    @torch.no_grad()
    def reference_logprobs(self, batch: TrainBatch, temperature: float) -> np.ndarray:
        """Frozen reference policy's token logprobs [B, T] (for a KL penalty in the reward)."""
        return self._ref_logprobs(self._tensors(batch), LossSpec(temperature=temperature)).cpu().numpy()

    @torch.no_grad()
    def values(self, batch: TrainBatch) -> np.ndarray:
        """Critic values [B, T] for `batch` (no update)."""
        self.engine.eval()
        t = self._tensors(batch)
        return token_values(self.engine, t["input_ids"], t["attention_mask"]).cpu().numpy()

    @torch.no_grad()
    def scores(self, batch: TrainBatch) -> np.ndarray:
        """Reward model's scalar per row [B] (no update)."""
        self.engine.eval()
        t = self._tensors(batch)
        return sequence_scores(self.engine, t["input_ids"], t["attention_mask"]).cpu().numpy()

    def _gathered_state(self, trained_only: bool = False) -> Optional[dict[str, np.ndarray]]:
        """Full parameters (`trained_only`: those that train) as fp32 numpy on rank 0 (None
        elsewhere); all ranks must call it."""
        import deepspeed

        params = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad or not trained_only]
        with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=self.opts.zero_stage == 3):
            if self.rank != 0:
                return None
            return {name: p.detach().to("cpu", torch.float32).numpy().copy() for name, p in params}

    def _packed_buckets(self, version: int, layout: Layout,
                        every_rank: bool = False) -> Iterator[tuple[int, Optional[torch.Tensor]]]:
        """(index, packed bucket) in layout order; every rank must iterate to the end (ZeRO-3
        gathers each bucket's parameters, and only those, across ranks). Rank 0 (every rank with
        `every_rank`) packs each bucket in the training dtype on its device; the others get None."""
        import deepspeed

        params = dict(self.engine.module.named_parameters())
        device = next(iter(params.values())).device
        for index, bucket in enumerate(layout.buckets):
            with deepspeed.zero.GatheredParameters([params[s.name] for s in bucket], enabled=self.opts.zero_stage == 3):
                # The packed copy outlives the gathered parameters. `every_rank` (ipc) keeps every
                # bucket until the engine has copied it: fresh buffers, not the ring's two.
                buffer = None
                if every_rank or self.rank == 0:
                    out = None if every_rank else self.ring.out(layout, index, device)
                    buffer = pack(layout, index, {s.name: params[s.name].data for s in bucket}, version, out)
            yield index, buffer

    def export_weights(self, version: int, layout: Layout) -> Optional[StoredUpdate]:
        """All ranks: rank 0 puts each packed bucket in the object store once."""
        refs = tuple(put_packed(buffer) for _, buffer in self._packed_buckets(version, layout) if buffer is not None)
        return StoredUpdate(version, refs) if self.rank == 0 else None

    # ---- bucketed weight transfer (rollout/transfer/) ----------------------------------------

    def transfer_layout(self, bucket_bytes: int) -> Layout:
        """The buckets an update travels in: every parameter (with LoRA, the adapter's), in the
        training dtype, full shape."""
        names = set(adapter_names(self.engine.module)) if self.opts.lora is not None else None
        specs = [TensorSpec(name, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
                 for name, p in self.engine.module.named_parameters() if names is None or name in names]
        return plan_layout(specs, bucket_bytes)

    def model_bytes(self) -> int:
        """Bytes of the whole model in its training dtype (what a full update would move): with
        LoRA, the frozen base's (the size of the merged model)."""
        return sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in self.engine.module.parameters()
                   if self.opts.lora is None or not p.requires_grad)

    def open_transfer(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 joins (and hosts) the sender-to-engines group as its rank 0; other ranks only
        gather their shards for it during send_weights."""
        if self.rank == 0:
            if self.transfer is not None:  # formed again (an engine was replaced)
                self.transfer.close()
            self.transfer = TransferGroup(host, port, 0, world_size, backend, timeout_s, bind_host=host)

    def export_ipc(self, version: int, layout: Layout) -> tuple:
        """`ipc` (colocated on GPUs, ZeRO-1/2: every rank holds the whole model): this rank's
        update packed on its GPU, as CUDA IPC handles for the engine on the same GPU; the packed
        copy lives until release_ipc()."""
        from rollout.transfer.ipc import share

        self._shared = [buffer for _, buffer in self._packed_buckets(version, layout, every_rank=True)]
        return tuple(share(buffer) for buffer in self._shared)

    def release_ipc(self) -> None:
        self._shared = []
        torch.cuda.ipc_collect()  # memory the engine mapped goes back once it has let go

    def send_weights(self, version: int, layout: Layout) -> None:
        """All ranks: rank 0 broadcasts each packed bucket to the engines, packing the next one
        while this one travels (at most two packed buckets exist)."""
        buckets = self._packed_buckets(version, layout)
        if self.rank == 0:
            self.transfer.send(buckets, layout, version)
        else:
            for _ in buckets:  # gather this rank's shards for each bucket (ZeRO-3)
                pass

    # ---- colocated placement: the device is handed to the engine between training phases ----

    def offload(self, keep_params: bool = False) -> OffloadStats:
        """Move this rank's optimizer states, gradients and fp32 master weights off the device
        (and, unless `keep_params`, the model's own parameters and the reference model): the
        engine generates on the memory this frees. DeepSpeed ZeRO-1/2's offload_states does the
        moving (its ZeRO-3 version needs DeepSpeed's FusedAdam; cluster/config.py refuses that
        stage when colocated). On a CPU-only rank the states are already in host memory: the
        same calls run and move nothing."""
        from deepspeed.runtime.zero.offload_config import OffloadStateTypeEnum as S

        include = [S.optim_states, S.hp_params, S.lp_grads]
        if not keep_params:
            include.append(S.lp_params)
        before = self._device_bytes()
        on_gpu = self.engine.device.type == "cuda"
        self.engine.offload_states(include=include, pin_memory=on_gpu)
        if not keep_params and self.ref is not None and on_gpu:
            self.ref.to("cpu")
        return OffloadStats(tuple(sorted(s.value for s in self.engine.optimizer.offloaded_states)),
                            before - self._device_bytes())

    def reload(self) -> OffloadStats:
        """Everything offload() moved comes back to the device, before the next training phase."""
        before = self._device_bytes()
        self.engine.reload_states()
        if self.ref is not None and self.engine.device.type == "cuda":
            self.ref.to(self.engine.device)
        return OffloadStats(tuple(sorted(s.value for s in self.engine.optimizer.offloaded_states)),
                            before - self._device_bytes())

    def _device_bytes(self) -> int:
        """Bytes this rank holds on its GPU (0 on CPU, where offloading frees nothing)."""
        return torch.cuda.memory_allocated() if self.engine.device.type == "cuda" else 0

    # ---- full-state checkpoints (resume) ----------------------------------------------------

    def save_state(self, path: str) -> None:
        """All ranks: this rank's DeepSpeed state (weights, optimizer moments and step, ZeRO
        partitions) and its random-number generators, under `path` (shared by the ranks). With
        LoRA the frozen base is left out: it is model.path's, loaded again on resume."""
        self.engine.save_checkpoint(path, tag="state", exclude_frozen_parameters=self.opts.lora is not None)
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
        torch.save(rng, os.path.join(path, "state", f"rng_rank{self.rank}.pt"))

    def load_state(self, path: str) -> None:
        """All ranks: what save_state wrote, so that the next step is the one that would have come."""
        loaded, _ = self.engine.load_checkpoint(path, tag="state", load_optimizer_states=True,
                                                load_module_strict=self.opts.lora is None,
                                                load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"no learner state under {path} (rank {self.rank})")
        rng = torch.load(os.path.join(path, "state", f"rng_rank{self.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_hf(self, path: str, merge: bool = False) -> Optional[str]:
        """A loadable Hugging Face checkpoint (weights, config, tokenizer) written by rank 0. With
        LoRA: the adapter (PEFT's layout; transformers and `tandem eval` load it on its base), and,
        with `merge`, path/merged: the adapter merged into the base, a plain checkpoint."""
        from transformers import AutoTokenizer

        arrays = self._gathered_state(trained_only=self.opts.lora is not None)
        if arrays is None:
            return None
        state = {k: torch.from_numpy(v) for k, v in arrays.items()}
        self.engine.module.save_pretrained(path, state_dict=state)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        tokenizer.save_pretrained(path)
        if self.opts.lora is not None:
            self._point_adapter_at_base(path)
            if merge:
                self._save_merged(path, tokenizer)
        return path

    def _point_adapter_at_base(self, path: str) -> None:
        """The adapter names its base by absolute path, so it loads from any directory."""
        import json

        config = os.path.join(path, "adapter_config.json")
        with open(config) as fh:
            data = json.load(fh)
        data["base_model_name_or_path"] = os.path.abspath(self.model_path)
        with open(config, "w") as fh:
            json.dump(data, fh, indent=2)

    def _save_merged(self, path: str, tokenizer) -> None:
        """Base + adapter merged into plain weights, from the files just written (the training
        model stays as it is)."""
        base = load_model(self.model_path, self.opts.model_kind, getattr(torch, self.opts.dtype), "sdpa")
        merged = self.opts.lora.wrap(base, self.opts.model_kind, adapter=path).merge_and_unload()
        merged.save_pretrained(os.path.join(path, "merged"))
        tokenizer.save_pretrained(os.path.join(path, "merged"))

    def shutdown(self) -> None:
        if self.transfer is not None:
            self.transfer.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
