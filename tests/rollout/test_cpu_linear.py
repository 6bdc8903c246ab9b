"""oneDNN linears (rollout/cpu_linear.py): the same outputs and gradients as F.linear, on a
layer and on a whole model; the choice's errors. Speed is bench/compute_vs_trl.py's."""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rollout import cpu_linear
from rollout.cpu_linear import use_onednn, wants_onednn

pytestmark = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="this torch has no oneDNN linear")


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> float:
    a, b = a.detach(), b.detach()
    err = float((a - b).abs().max() / b.abs().max())
    assert err < rel, err
    return err


@pytest.mark.parametrize("bias", [True, False])
def test_a_layer_matches_f_linear_forward_and_backward(bias):
    torch.manual_seed(0)
    ref = torch.nn.Linear(96, 80, bias=bias)
    mine = copy.deepcopy(ref)
    assert use_onednn(mine) == 1
    x = torch.randn(3, 7, 120)[..., 10:106]  # 3-D and not contiguous, as a sliced activation is
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ref(x1), mine(x2)
    assert y2.shape == (3, 7, 80)
    _close(y2, y1)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    _close(x2.grad, x1.grad)
    _close(mine.weight.grad, ref.weight.grad)
    if bias:
        _close(mine.bias.grad, ref.bias.grad)
    with torch.no_grad():  # no graph: the plain product
        _close(mine(x), ref(x))


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 32)
    mine = copy.deepcopy(ref)
    use_onednn(mine)
    for m in (ref, mine):
        m.requires_grad_(False)
    x1, x2 = torch.randn(5, 64, requires_grad=True), None
    x2 = x1.detach().clone().requires_grad_()
    ref(x1).sum().backward()
    mine(x2).sum().backward()
    assert mine.weight.grad is None and mine.bias.grad is None
    _close(x2.grad, x1.grad)


def test_a_model_on_onednn_gives_the_same_logits_and_gradients():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    ref = LlamaForCausalLM(config)
    mine = copy.deepcopy(ref)
    linears = use_onednn(mine)
    assert linears == 2 * 7 + 1  # q k v o gate up down per layer, and the output head
    ids = torch.randint(0, 50, (4, 24))
    out1, out2 = ref(input_ids=ids, labels=ids), mine(input_ids=ids, labels=ids)
    _close(out2.logits, out1.logits)
    out1.loss.backward()
    out2.loss.backward()
    worst = max(float((p2.grad - p1.grad).abs().max() / p1.grad.abs().max())
                for p1, p2 in zip(ref.parameters(), mine.parameters()))
    assert worst < 1e-4, worst


def test_a_tensor_that_is_not_fp32_takes_f_linear():
    layer = torch.nn.Linear(16, 8).to(torch.bfloat16)
    use_onednn(layer)
    x = torch.randn(2, 16, dtype=torch.bfloat16)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_the_choice_is_checked_and_named(monkeypatch):
    assert wants_onednn("auto") and wants_onednn("onednn") and not wants_onednn("aten")
    with pytest.raises(ValueError, match="model.cpu_linear must be one of"):
        wants_onednn("mkl")
    monkeypatch.setattr(cpu_linear, "onednn_available", lambda: False)  # a torch built without oneDNN
    assert not wants_onednn("auto")
    with pytest.raises(ValueError, match=r"model.cpu_linear=onednn: this torch .* has no oneDNN linear"):
        wants_onednn("onednn")
