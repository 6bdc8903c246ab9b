"""Runs inside vLLM's worker process: Tandem's backend for vLLM's native weight-transfer API.

vLLM imports this module in each of its workers because the engine names
`TandemWorkerExtension` as its `worker_extension_cls`; importing it registers the
`tandem_file` backend with vLLM's `WeightTransferEngineFactory` before the worker
builds its weight-transfer engine (vLLM spawns its workers, so a registration made
in the rollout worker's own process would not be seen there).

`tandem_file`: the rollout worker writes a verified update as one safetensors file
(in /dev/shm where there is one) and sends its path and manifest; the vLLM worker
checks every tensor's checksum against the manifest, then loads the tensors through
vLLM's layerwise reload (`initialize_layerwise_reload` / `model.load_weights` /
`finalize_layerwise_reload`), the supported way to load checkpoint-format weights
into a model whose layers were post-processed at load time (on CPU, vLLM prepacks
linear weights, which a plain `load_weights` would break). It is the transport for
an engine on the same host as its rollout worker (CPU, or one GPU).

`tandem_collective` (rollout.weight_transfer 'collective'): the vLLM worker itself joins
learner rank 0's weight-transfer group (rollout/transfer/collective.py: gloo on CPU, NCCL
on GPUs) and receives the fingerprinted buckets straight from the broadcast; no file, no
hop through the rollout worker's process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

BACKEND = "tandem_file"
COLLECTIVE = "tandem_collective"


@dataclass
class FileInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: sender and receiver share a filesystem."""


@dataclass
class FileUpdateInfo(WeightTransferUpdateInfo):
    path: str  # a safetensors file holding every tensor of the update
    names: list[str]  # in manifest order
    checksums: list[str]  # tensor_digest of each tensor, computed by the rollout worker


def tensor_digest(tensor: torch.Tensor) -> str:
    """blake2b-128 of a tensor's bytes, any dtype (bf16 included). The file hop inside one host
    is checked again in vLLM's worker: this module imports there with nothing else of Tandem's."""
    raw = tensor.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
    return hashlib.blake2b(raw.tobytes(), digest_size=16).hexdigest()


def read_checked(info: FileUpdateInfo) -> dict[str, torch.Tensor]:
    """The file's tensors, or an error naming the first that does not match the manifest."""
    from safetensors.torch import load_file

    arrays = load_file(info.path)
    if sorted(arrays) != sorted(info.names):
        missing, extra = set(info.names) - set(arrays), set(arrays) - set(info.names)
        raise ValueError(f"weight file {info.path}: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    for name, expected in zip(info.names, info.checksums):
        if tensor_digest(arrays[name]) != expected:
            raise ValueError(f"weight file {info.path}: checksum mismatch for '{name}'")
    return arrays


class FileWeightTransferEngine(WeightTransferEngine[FileInitInfo, FileUpdateInfo]):
    init_info_cls = FileInitInfo
    update_info_cls = FileUpdateInfo

    def init_transfer_engine(self, init_info: FileInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict) -> None:
        # The base class ends with torch.accelerator.synchronize(), which has nothing to
        # wait for on CPU; on a GPU the copies are synchronous host-to-device loads.
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def receive_weights(self, update_info: FileUpdateInfo) -> None:
        arrays = read_checked(update_info)
        self.model.load_weights((name, arrays[name]) for name in update_info.names)
        self._load_tied_head(arrays)

    def _load_tied_head(self, arrays: dict[str, torch.Tensor]) -> None:
        """With tied word embeddings, vLLM's `load_weights` skips `lm_head.*`, so layerwise
        reload would put the OLD output head back (measured: logprobs off by ~1.2 after an
        update); load the head from the new input embedding explicitly."""
        config = getattr(self.model_config, "hf_text_config", self.model_config.hf_config)
        if not getattr(config, "tie_word_embeddings", False):
            return
        head = getattr(getattr(self.model, "lm_head", None), "weight", None)
        sources = [n for n in arrays if n.endswith("embed_tokens.weight")]
        if head is None or not hasattr(head, "weight_loader") or len(sources) != 1:
            raise ValueError(f"tied word embeddings: cannot tell which tensor is the input embedding "
                             f"(candidates {sources}) or load the output head of {type(self.model).__name__}")
        head.weight_loader(head, arrays[sources[0]])

    def shutdown(self) -> None:
        pass


@dataclass
class CollectiveInitInfo(WeightTransferInitInfo):
    """Where learner rank 0's weight-transfer group is (rollout/transfer/collective.py)."""

    host: str
    port: int
    rank: int
    world_size: int
    backend: str  # gloo | nccl
    timeout_s: float
    bind_host: str
    layout: list  # rollout.transfer.buckets.Layout.to_rows()


@dataclass
class CollectiveUpdateInfo(WeightTransferUpdateInfo):
    version: int


class CollectiveWeightTransferEngine(FileWeightTransferEngine):
    """`tandem_collective`: this vLLM worker is a member of the learners' weight-transfer group.
    An update arrives in two moves, so that nothing touches the model before every bucket is in
    and checked: `tandem_receive_update` (an RPC) receives and checks update v while learner
    rank 0 broadcasts it and keeps it; vLLM's update_weights({"version": v}) then loads what was
    kept through layerwise reload, as `tandem_file` does."""

    init_info_cls = CollectiveInitInfo
    update_info_cls = CollectiveUpdateInfo

    def init_transfer_engine(self, init_info: CollectiveInitInfo) -> None:
        from rollout.transfer.buckets import Layout
        from rollout.transfer.collective import TransferGroup

        i = init_info
        self.layout = Layout.from_rows(i.layout)
        self.group = TransferGroup(i.host, i.port, i.rank, i.world_size, i.backend, i.timeout_s, i.bind_host)
        self.received: tuple[int, dict[str, torch.Tensor]] | None = None

    def receive(self, version: int) -> int:
        device = next(self.model.parameters()).device
        self.received = None
        self.received = (version, self.group.receive(self.layout, version, device))
        return len(self.received[1])

    def update_weights(self, update_info: dict) -> None:
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def receive_weights(self, update_info: CollectiveUpdateInfo) -> None:
        if self.received is None or self.received[0] != update_info.version:
            have = None if self.received is None else self.received[0]
            raise ValueError(f"load of weight update v{update_info.version}: the update received is v{have}")
        arrays = self.received[1]
        self.received = None
        self.model.load_weights(arrays.items())
        self._load_tied_head(arrays)

    def shutdown(self) -> None:
        if getattr(self, "group", None) is not None:
            self.group.close()


class TandemWorkerExtension:
    """Mixed into vLLM's worker class (vLLM's `worker_extension_cls`); callable via collective_rpc."""

    def tandem_check_weight_file(self, update_info: dict) -> int:
        """Verify an update's file against its manifest before anything touches the model."""
        return len(read_checked(FileUpdateInfo(**update_info)))

    def tandem_receive_update(self, version: int) -> int:
        """`tandem_collective`: receive and check update `version` from the learners' broadcast."""
        return self.weight_transfer_engine.receive(version)


for _name, _engine in ((BACKEND, FileWeightTransferEngine), (COLLECTIVE, CollectiveWeightTransferEngine)):
    try:
        WeightTransferEngineFactory.register_engine(_name, _engine)
    except ValueError:  # already registered: this module was imported before in this process
        pass
