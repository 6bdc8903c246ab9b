"""Comparing saved Hugging Face checkpoints in the end-to-end tests."""

import torch
from safetensors.torch import load_file


def same_weights(a, b) -> bool:
    """True when the checkpoint directories a and b hold bitwise the same tensors under the same names."""
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def max_weight_diff(a, b) -> float:
    """The largest absolute difference between same-named tensors of two checkpoints (names must match)."""
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert x.keys() == y.keys()
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)
