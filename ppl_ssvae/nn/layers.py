"""Layers shared by every network: activations by name, the dense stack (``mlp``), the
small-normal initialisation of App. B and the full-precision cast of distribution
parameters under bf16 autocast."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UserError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}
MIN_SCALE = 1e-4


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """``t`` in at least float32. Under bf16/fp16 autocast (``fit(precision="bf16")``) the
    layers run in half precision, but log-densities summed over hundreds of pixels and
    enumerated classes would lose their digits, so every distribution is built from
    parameters cast back here. A no-op for float32/float64 tensors."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """``module`` in eval mode (no dropout, batch norm's running statistics) for the block,
    then back in the mode it was in, also when the block raises: evaluation inside a
    training loop must not leave the model in eval mode. ``None`` is a no-op."""
    if module is None:
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def activation(name: str, inplace: bool = False) -> nn.Module:
    """The activation module ``name``; ``inplace`` where torch offers it (ReLU, ELU), for
    inputs that no other operation keeps for its backward pass."""
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    module = ACTIVATIONS[name]()
    if inplace and hasattr(module, "inplace"):
        module.inplace = True
    return module


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
# What init_normal_ draws small: every kernel, or the output layers only.
INIT_LAYERS = ("all", "heads")


def head(layer: nn.Module) -> nn.Module:
    """Mark ``layer`` as an output layer: one whose outputs are a distribution's parameters
    (logits, loc, scale). ``init_normal_(..., layers="heads")`` draws only these small."""
    layer.is_head = True
    return layer


def keep_init(layer: nn.Module) -> nn.Module:
    """Mark ``layer`` as one whose initial values define its family (a flow's last layer,
    which starts the flow at the identity): ``init_normal_`` leaves it as it is."""
    layer.keep_init = True
    return layer


def check_init_layers(layers: str) -> None:
    """One-line error for an ``init_layers`` value that is not in :data:`INIT_LAYERS`."""
    if layers not in INIT_LAYERS:
        raise UserError(f"unknown init_layers {layers!r}; choose one of {', '.join(INIT_LAYERS)}")


def init_normal_(module: nn.Module, std: float, layers: str = "all") -> None:
    """Willetts et al.'s initialisation (App. B): kernels ~ N(0, std^2), biases 0.

    ``layers="all"`` applies N(0, std^2) to every kernel, as App. B's text reads.
    ``layers="heads"`` applies it to the output layers only (those marked by :func:`head`)
    and draws every other kernel Glorot-normal, as the authors' released code does; with
    std 0.001 on every layer the hidden activations start almost constant and learning is
    slow. Normalisation layers keep their identity initialisation either way, and so do
    layers marked by :func:`keep_init`.
    """
    check_init_layers(layers)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _NORMS) or getattr(m, "keep_init", False):
                continue
            small = layers == "all" or getattr(m, "is_head", False)
            for name, p in m.named_parameters(recurse=False):
                if name.startswith("bias"):
                    p.zero_()
                elif small or p.dim() < 2:
                    p.normal_(0.0, std)
                else:
                    nn.init.xavier_normal_(p)


def mlp(sizes: Sequence[int], act: str = "relu", final_activation: bool = True) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with ``act`` after each (and after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if final_activation or i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


def output_width(input_dim: int, hidden: Sequence[int]) -> int:
    """The width of what ``mlp([input_dim, *hidden])`` returns."""
    return hidden[-1] if hidden else input_dim
