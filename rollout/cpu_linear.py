"""oneDNN for a model's Linear layers on CPU (`model.cpu_linear`).

PyTorch's CPU `F.linear` calls MKL's sgemm. On AMD EPYC (this project's machines) MKL takes
its AVX2 path and runs at half the speed of oneDNN's AVX-512 kernels, which PyTorch also
ships: measured here (one thread, fp32), oneDNN's linear does 200-210 GFLOP/s where MKL does
100, forward and backward, at a learner's shapes (4352 x 512 x 1376) and at a decode step's
(32 x 512 x 1536). The same arithmetic (one sum of products per output, a different order),
so results equal F.linear's to float rounding (tests/rollout/test_cpu_linear.py).

`use_onednn(model)` points every nn.Linear of a model at oneDNN through
`torch.ops.mkldnn._linear_pointwise` (dense tensors in and out, the weight read at every
call: an updated or swapped weight is used as is). A call whose tensors are not fp32 on the
CPU (a GPU, bf16) goes to F.linear as before; that is the kernel for that device, not a
fallback. Under autograd the three products (output, input gradient, weight gradient) are
all oneDNN's; a frozen weight (LoRA's base) gets no gradient product at all.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

CHOICES = ("auto", "onednn", "aten")


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def wants_onednn(choice: str, field: str = "model.cpu_linear") -> bool:
    """auto: oneDNN where this torch has it; onednn: required (an error naming the field
    where it is missing); aten: PyTorch's own F.linear."""
    if choice not in CHOICES:
        raise ValueError(f"{field} must be one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "aten":
        return False
    if choice == "onednn" and not onednn_available():
        raise ValueError(f"{field}=onednn: this torch {torch.__version__} has no oneDNN linear "
                         f"(torch.ops.mkldnn._linear_pointwise); set {field}=aten or auto")
    return onednn_available()


def _mm(x: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """x [M, K] @ weight [N, K]^T (+ bias) -> [M, N]."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        # The weight's data as of now (as aten's linear keeps it): ZeRO-3 may swap the
        # parameter's storage after the forward.
        ctx.save_for_backward(x, weight.detach())
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        dx = _mm(grad, weight.t().contiguous()) if ctx.needs_input_grad[0] else None
        dw = _mm(grad.t().contiguous(), x.t().contiguous()) if ctx.needs_input_grad[1] else None
        db = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def _forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    w, b = self.weight, self.bias
    if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32 or x.numel() == 0:
        return F.linear(x, w, b)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad or (b is not None and b.requires_grad)):
        out = _Linear.apply(flat, w, b)
    else:
        out = _mm(flat, w, b)
    return out.view(*x.shape[:-1], w.shape[0])


def use_onednn(model: torch.nn.Module) -> int:
    """Every nn.Linear of `model` (its instances, nothing global) on oneDNN; how many."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for m in linears:
        m.forward = types.MethodType(_forward, m)
    return len(linears)
