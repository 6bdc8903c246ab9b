"""Per-token logprobs and entropy of a causal LM under log_softmax(logits / T), in chunks.

The plain computation materialises fp32 [B, T, V] tensors (the logits, their log_softmax,
its exp, and the gradients of each): at a 152k vocabulary one of them is 3.4 GB for 8 x 700
tokens, the out-of-memory error the peers' users report most. With `chunk_tokens` > 0 the
model returns its last hidden states (and logits for one position only), and its output head
runs over `chunk_tokens` positions at a time. Under autograd each chunk is recomputed in
backward (activation checkpointing), so no [*, V] tensor larger than one chunk is alive at
any time; the result equals the plain computation (tests/trainer/test_logprobs.py).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def shift_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Per-position outputs [B, T-1] of positions 0..T-2 -> aligned with the token they predict."""
    return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)


def _forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None, **kwargs):
    if position_ids is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    # Packed rows: no 2D mask and no cache, so transformers derives a block-diagonal causal mask
    # from the restarting position ids (each example attends only to itself).
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kwargs)


def _logprob_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float, entropy_grad: bool):
    """The entropy keeps a graph only when asked: a graph nobody backpropagates through would
    hold its [*, V] tensors (and, under checkpointing, their recomputed copies) for as long as
    the entropy lives, which is the whole micro-batch in the learner."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _head_chunk(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, entropy_grad: bool):
    return _logprob_entropy(head(hidden), targets, temperature, entropy_grad)


def _chunked(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float, chunk_tokens: int,
             entropy_grad: bool):
    """hidden [B, N, H], targets [B, N] -> logprob and entropy [B, N], `chunk_tokens` rows of
    the flattened [B * N, H] at a time. The head is called as a module (not its weight in a
    matmul) so ZeRO-3 gathers its partitioned weight, in forward and in the recompute."""
    shape = targets.shape
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    recompute = torch.is_grad_enabled() and flat_h.requires_grad
    logps, entropies = [], []
    for start in range(0, flat_y.numel(), chunk_tokens):
        h, y = flat_h[start:start + chunk_tokens], flat_y[start:start + chunk_tokens]
        if recompute:
            logp, entropy = checkpoint(_head_chunk, head, h, y, temperature, entropy_grad, use_reentrant=False)
        else:
            logp, entropy = _head_chunk(head, h, y, temperature, entropy_grad)
        logps.append(logp)
        entropies.append(entropy)
    return torch.cat(logps).view(shape), torch.cat(entropies).view(shape)


def output_head(model):
    """The LM head of a transformers model, or of the one a DeepSpeed engine wraps."""
    return getattr(model, "module", model).get_output_embeddings()


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                   position_ids=None, chunk_tokens: int = 0,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprob [B, T] of each token given its prefix (column 0 is 0) and entropy [B, T].
    chunk_tokens 0: the model's own logits, whole; > 0: the output head in chunks.
    entropy_grad: the entropy carries a gradient (an entropy bonus in the loss); else it is
    a metric, without a graph."""
    targets = input_ids[:, 1:]
    if chunk_tokens <= 0:
        logits = _forward(model, input_ids, attention_mask, position_ids).logits[:, :-1]
        logp, entropy = _logprob_entropy(logits, targets, temperature, entropy_grad)
    else:
        out = _forward(model, input_ids, attention_mask, position_ids, output_hidden_states=True, logits_to_keep=1)
        logp, entropy = _chunked(output_head(model), out.hidden_states[-1][:, :-1], targets, temperature,
                                 chunk_tokens, entropy_grad)
    return shift_to_tokens(logp), shift_to_tokens(entropy)


@torch.no_grad()
def check_chunked_head(model, vocab_size: int, chunk_tokens: int, field: str = "trainer.logprob_chunk_tokens") -> None:
    """Refuse a model whose logits are not its output head applied to its last hidden state
    (a final soft-cap or logit scale, a head outside get_output_embeddings): chunking it would
    train on wrong logprobs. Compared on one short row, both ways; all ZeRO-3 ranks call it."""
    name = type(getattr(model, "module", model)).__name__
    head = output_head(model)
    ids = torch.arange(8, device=head.weight.device).remainder(vocab_size).view(1, -1)
    mask = torch.ones_like(ids)
    try:
        token_logprobs(model, ids, mask, 1.0, chunk_tokens=min(chunk_tokens, 3))
        out = _forward(model, ids, mask, output_hidden_states=True)
    except (TypeError, AttributeError) as err:
        raise ValueError(f"{field}: {name} cannot return its last hidden states for chunked logprobs "
                         f"({err}); set {field}=0") from err
    logits, mine = out.logits.float(), head(out.hidden_states[-1]).float()
    # Relative to the logits' own scale: a random model's logits are small, a soft-cap's effect too.
    tol = 1e-4 if head.weight.dtype == torch.float32 else 2e-2
    if not torch.allclose(mine, logits, rtol=tol, atol=tol * float(logits.abs().max())):
        raise ValueError(f"{field}: {name}'s logits are not its output head applied to its last hidden state "
                         f"(max difference {float((mine - logits).abs().max()):.3g}); set {field}=0 to use the "
                         f"model's own logits")
