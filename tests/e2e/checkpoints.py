"""Comparing saved Hugging Face checkpoints in the end-to-end tests."""

import torch
from safetensors.torch import load_file


def same_weights(a, b) -> bool:
    """True when the checkpoint directories a and b hold bitwise the same tensors under the same names."""
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
