"""Chunked logprobs and entropy (trainer/logprobs.py): equal to the whole-vocabulary
computation, values and gradients, and no [*, V] tensor larger than one chunk ever exists."""

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.logprobs import check_chunked_head, token_logprobs

VOCAB = 1000


def llama(vocab=VOCAB, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(config)


def batch(rows=4, width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (rows, width), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :3] = 0  # left padding on one row, as the engines' batches have
    ids[1, :3] = 0
    return ids, attn


class VocabTensors(TorchDispatchMode):
    """Watches every op output whose last dimension is the vocabulary (the output head's
    weight, [H, V] when transposed, aside): the largest, and which are still alive."""

    def __init__(self, vocab, hidden):
        super().__init__()
        self.vocab, self.weight, self.largest, self.refs = vocab, (hidden, vocab), 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.shape[-1:] == (self.vocab,) and tuple(t.shape) != self.weight:
                self.largest = max(self.largest, t.numel())
                self.refs.append(weakref.ref(t))
        return out

    def alive(self) -> int:
        gc.collect()
        return sum(ref() is not None for ref in self.refs)


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_chunked_equals_whole_values_and_gradients(chunk):
    model = llama()
    ids, attn = batch()
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for chunk_tokens in (0, chunk):
        model.zero_grad()
        logp, entropy = token_logprobs(model, ids, attn, 0.7, chunk_tokens=chunk_tokens, entropy_grad=True)
        ((logp * weights).sum() + 0.1 * (entropy * weights).sum()).backward()
        grads = torch.cat([p.grad.ravel() for p in model.parameters()])
        results.append((logp.detach(), entropy.detach(), grads))
    (lp0, en0, g0), (lp1, en1, g1) = results
    assert lp0.shape == lp1.shape == ids.shape
    assert float(lp0.abs().mean()) > 1.0 and float(en0.mean()) > 1.0  # log(1000) = 6.9: real values
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(en1, en0, atol=1e-5, rtol=1e-5)
    assert float(g0.norm()) > 0.1
    assert float((g1 - g0).norm() / g0.norm()) < 1e-5


def test_packed_rows_chunked_equal_whole():
    """Packed rows (position ids restart per example, no attention mask) chunk the same way."""
    model = llama()
    ids, _ = batch(rows=2)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]] * 2)
    whole = token_logprobs(model, ids, None, 1.0, position_ids=pos)[0]
    chunked = token_logprobs(model, ids, None, 1.0, position_ids=pos, chunk_tokens=5)[0]
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_no_vocab_tensor_larger_than_a_chunk_nor_alive_after_backward(entropy_grad):
    """Forward and backward: the whole computation makes [B, T-1, V] tensors; the chunked one
    nothing over max(chunk, B) x V (the model's own logits for its last position are B x V).
    After backward, with logprobs and entropy still held (as the learner holds them for its
    metrics), no [*, V] tensor is alive: an entropy graph nobody backpropagates through kept
    every chunk's recomputed tensors (4.8 GB at vocab 152k for 8 x 512 tokens, measured)."""
    model = llama()
    ids, attn = batch(rows=4, width=12)
    sizes = {}
    for chunk_tokens in (0, 6):
        with VocabTensors(VOCAB, 32) as seen:
            logp, entropy = token_logprobs(model, ids, attn, 1.0, chunk_tokens=chunk_tokens,
                                           entropy_grad=entropy_grad)
            loss = logp.sum() + (entropy.sum() if entropy_grad else 0)
            loss.backward()
        sizes[chunk_tokens] = seen.largest
        assert seen.alive() == 0, f"chunk_tokens={chunk_tokens}: [*, V] tensors outlive the backward"
        assert (entropy.grad_fn is not None) == entropy_grad
        del logp, entropy, loss
    assert sizes[0] >= 4 * 11 * VOCAB  # the mode sees the whole tensor when it exists
    assert sizes[6] <= 6 * VOCAB


def test_refuses_a_model_whose_logits_are_not_its_head():
    """Gemma 2 soft-caps its logits after the head: chunking it would train on wrong logprobs."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=0.5)
    model = Gemma2ForCausalLM(config).eval()
    with pytest.raises(ValueError, match=r"trainer.logprob_chunk_tokens.*Gemma2ForCausalLM.*=0"):
        check_chunked_head(model, 200, 1024)
    check_chunked_head(llama().eval(), VOCAB, 1024)  # a plain head passes
