"""Spec -> ``torch.nn.Module`` with a seeded initialisation scheme.

The default scheme is He (H3 of the paper): every weight of every conv and dense layer, the
last (logit) layer included, is drawn i.i.d. ``N(0, 2 / fan_in)`` with ``fan_in`` the nominal
in-degree (``C_in * k**2`` for a conv, ``in_features`` for a dense layer); biases are 0.  The
paper's reference implementation uses gain 1 for the last layer; we keep gain sqrt(2) everywhere
so that H3 holds on every edge and ``E||d_x f_k||_2^2 = 2`` exactly (see ``docs/theory.md``).

Weights are drawn on the CPU from a ``torch.Generator`` and then moved, so the same seed gives
the same numbers on every device.

    >>> from advdim.arch import family
    >>> net = build(family("dense", widths=(16,)).spec(4, channels=1), seed=0)
    >>> tuple(net(torch.zeros(2, 1, 4, 4)).shape)
    (2, 10)
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from advdim.arch import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    MaxPool,
    Padding,
    ReLU,
    Spec,
)
from advdim.errors import AdvdimError, SpecError
from advdim.inits import Init


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AdvdimError(f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdvdimError("device cuda was asked for but no CUDA GPU is available")
    return dev


class GlobalPool(nn.Module):
    """(B, C, H, W) -> (B, C): mean or maximum over the map."""

    def __init__(self, maximum: bool) -> None:
        super().__init__()
        self.maximum = maximum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3)) if self.maximum else x.mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return "max" if self.maximum else "mean"


def _module(layer: Layer, in_shape: tuple[int, ...]) -> nn.Module:
    if isinstance(layer, Conv):
        mode: Literal["zeros", "reflect", "circular"] = (
            "circular" if layer.padding is Padding.CIRCULAR else "reflect" if layer.padding is Padding.REFLECT
            else "zeros")
        return nn.Conv2d(in_shape[0], layer.out_channels, layer.kernel, stride=layer.stride,
                         padding=layer.pad, dilation=layer.dilation, bias=layer.bias, padding_mode=mode)
    if isinstance(layer, Dense):
        return nn.Linear(in_shape[0], layer.out_features, bias=layer.bias)
    if isinstance(layer, AvgPool):
        return nn.AvgPool2d(layer.size)
    if isinstance(layer, MaxPool):
        return nn.MaxPool2d(layer.size)
    if isinstance(layer, GlobalAvgPool):
        return GlobalPool(maximum=False)
    if isinstance(layer, GlobalMaxPool):
        return GlobalPool(maximum=True)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, BatchNorm):
        return nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0])
    raise SpecError(f"no torch module for layer {layer!r}")


def init_weights(module: nn.Module, init: Init, generator: torch.Generator) -> None:
    """Initialise every Conv2d / Linear weight of ``module`` in place (CPU draw, then copy)."""
    for sub in module.modules():
        if not isinstance(sub, (nn.Conv2d, nn.Linear)):
            continue
        w = sub.weight
        fan_out_rows = w.shape[0]
        fan_in = int(w[0].numel())
        fan_out = fan_out_rows * int(w[0, 0].numel()) if w.dim() == 4 else fan_out_rows
        cpu = torch.empty(w.shape, dtype=torch.float64)
        if init is Init.TORCH:
            bound = 1.0 / math.sqrt(fan_in)
            cpu.uniform_(-bound, bound, generator=generator)
            bias = torch.empty(fan_out_rows, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
        elif init is Init.ORTHOGONAL:
            flat = torch.randn(max(fan_out_rows, fan_in), min(fan_out_rows, fan_in), dtype=torch.float64,
                               generator=generator)
            qm, r = torch.linalg.qr(flat)
            qm = qm * torch.sign(torch.diagonal(r)).unsqueeze(0)
            if fan_out_rows < fan_in:
                qm = qm.T
            cpu = (math.sqrt(2.0) * qm).reshape(w.shape)
            bias = torch.zeros(fan_out_rows, dtype=torch.float64)
        else:
            std = math.sqrt(init.weight_variance(fan_in, fan_out))
            cpu.normal_(0.0, std, generator=generator)
            bias = torch.zeros(fan_out_rows, dtype=torch.float64)
        with torch.no_grad():
            w.copy_(cpu.to(w.dtype))
            if sub.bias is not None:
                sub.bias.copy_(bias.to(sub.bias.dtype))


class SpecNet(nn.Sequential):
    """An ``nn.Sequential`` built from a :class:`~advdim.arch.Spec`; keeps the spec as ``.spec``."""

    def __init__(self, spec: Spec, modules: list[nn.Module]) -> None:
        super().__init__(*modules)
        self.spec = spec


def build(
    spec: Spec,
    init: Init | str = Init.HE,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SpecNet:
    """Build ``spec`` as a module, initialised by ``init`` from ``seed`` (or ``generator``).

    Args:
        spec: the architecture.
        init: an :class:`Init` or its name.
        seed: seed of a fresh CPU generator (ignored when ``generator`` is given).
        generator: a CPU ``torch.Generator`` to draw from (advanced by the draw).
        device: ``auto``, ``cpu``, ``cuda`` or a ``torch.device``.
        dtype: parameter dtype.
    Returns:
        A :class:`SpecNet` mapping ``(B, C, H, W)`` to ``(B, K)`` logits.
    """
    init = Init.parse(init)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    shapes = spec.shapes()
    modules: list[nn.Module] = []
    for layer, shape in zip(spec.layers, shapes):
        modules.append(_module(layer, shape))
    net = SpecNet(spec, modules).to(dtype=dtype)
    init_weights(net, init, generator)
    return net.to(resolve_device(device))
