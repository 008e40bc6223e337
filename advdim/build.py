"""Spec -> ``torch.nn.Module`` with a seeded initialisation scheme.

The default scheme is He (H3 of the paper): every weight of every conv and dense layer, the
last (logit) layer included, is drawn i.i.d. ``N(0, 2 / fan_in)`` with ``fan_in`` the nominal
in-degree (``C_in * k**2`` for a conv, ``in_features`` for a dense layer); biases are 0.  The
paper's reference implementation uses gain 1 for the last layer; we keep gain sqrt(2) everywhere
so that H3 holds on every edge and ``E||d_x f_k||_2^2 = 2`` exactly (see ``docs/theory.md``).

Weights are drawn on the CPU from a ``torch.Generator`` and then moved, so the same seed gives
the same numbers on every device.  The same rule covers the weights of the blocks: the ``q``,
``k``, ``v``, ``o`` projections of an attention layer (``fan_in = D``) and the bias-free ``1x1``
projection of a residual block (``fan_in = C_in``); layer and batch norms start at weight 1, bias 0.

Batch norm follows its spec's :class:`~advdim.arch.BNMode`: ``batch`` builds a
:class:`BatchStatNorm`, which uses batch statistics in train and eval mode alike; ``running``
builds ``nn.BatchNorm2d`` / ``nn.BatchNorm1d``, which use the running statistics in eval mode
-- the mode every gradient is measured in -- and batch statistics only while a training loop
has put the net in train mode (as training must).

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
    GELU,
    Attention,
    AvgPool,
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    Layer,
    LayerNorm,
    MaxPool,
    Padding,
    ReLU,
    Residual,
    Scale,
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


#: epsilon of the layer norm (torch's default), added to the variance
LN_EPS = 1e-5


class BatchStatNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm in ``batch`` mode (:class:`~advdim.arch.BNMode`): normalises with the statistics of
    the batch it is given whatever the module's train / eval mode, so a sample's output (and its
    input gradient) depends on the other samples of its batch, as in training at initialisation.
    The running statistics are still updated while the module is in train mode.  Input ``(B, C)``
    or ``(B, C, H, W)``.  A channel with a single value in the batch (one sample of a 1x1 map)
    normalises to its bias, with a zero gradient (``F.batch_norm`` refuses that case).

        >>> bn = BatchStatNorm(2).eval()
        >>> y = bn(torch.tensor([[1.0, 0.0], [3.0, 4.0]]))
        >>> [round(v, 4) for v in y[:, 0].tolist()]  # (x - 2) / sqrt(1 + eps)
        [-1.0, 1.0]
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 4):
            raise ValueError(f"expected a (B, C) or (B, C, H, W) input, got {input.dim()} dimensions")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        # one value per channel has no unbiased variance to keep
        update = self.training and self.track_running_stats and input.numel() > input.shape[1]
        if update:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
        momentum = 0.0 if self.momentum is None else self.momentum
        return torch.batch_norm(input, self.weight, self.bias, self.running_mean if update else None,
                                self.running_var if update else None, True, momentum, self.eps,
                                torch.backends.cudnn.enabled)


class TokenLayerNorm(nn.LayerNorm):
    """Layer norm over the channels at each position of a ``(B, C, H, W)`` map (each position is a
    token, as in a vision transformer), or over the features of a ``(B, C)`` vector.

        >>> ln = TokenLayerNorm(3)
        >>> y = ln(torch.arange(24.0).reshape(2, 3, 2, 2))
        >>> bool(y.mean(dim=1).abs().max() < 1e-6)  # mean 0 over the channels at every position
        True
    """

    def __init__(self, features: int) -> None:
        super().__init__(features, eps=LN_EPS)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() == 4:
            return super().forward(input.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return super().forward(input)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the ``H*W`` positions of a ``(B, D, H, W)`` map (each position a
    token of ``D`` features): ``o(softmax(q k^T / sqrt(D/heads)) v)`` per head, with ``D x D``
    projections ``q``, ``k``, ``v``, ``o`` (``nn.Linear`` with biases).  Output ``(B, D, H, W)``, each
    token's output at its own position: permuting the positions permutes the outputs.

        >>> att = SelfAttention(4, heads=2)
        >>> tuple(att(torch.zeros(3, 4, 2, 5)).shape)
        (3, 4, 2, 5)
    """

    def __init__(self, features: int, heads: int = 1) -> None:
        super().__init__()
        if features % heads:
            raise SpecError(f"attn({heads}): {heads} heads do not divide {features} features")
        self.heads = heads
        self.q = nn.Linear(features, features)
        self.k = nn.Linear(features, features)
        self.v = nn.Linear(features, features)
        self.o = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, L, D)
        per = d // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, heads, L, D/heads)
            return t.reshape(b, h * w, self.heads, per).transpose(1, 2)

        q, k, v = split(self.q(tokens)), split(self.k(tokens)), split(self.v(tokens))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(per), dim=-1)
        out = self.o((att @ v).transpose(1, 2).reshape(b, h * w, d))
        return out.transpose(1, 2).reshape(b, d, h, w)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


class ScaleBy(nn.Module):
    """``x -> factor * x`` (the spec layer ``scale(a)``).

        >>> ScaleBy(0.5)(torch.ones(2)).tolist()
        [0.5, 0.5]
    """

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = float(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor!r}"


class ResidualBlock(nn.Module):
    """``skip(x) + scale * branch(x)``: ``skip`` is the identity (None), the projection of
    :meth:`advdim.arch.Residual.projection`, or (``projbn``) ``nn.Sequential(projection, BatchNorm)``
    as torchvision's ``downsample``; ``branch`` an ``nn.Sequential``."""

    def __init__(self, branch: nn.Sequential, skip: nn.Module | None, scale: float) -> None:
        super().__init__()
        self.branch = branch  # registered first: its weights come before the projection's, as in the spec
        self.skip = skip
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.scale != 1.0:
            out = out * self.scale
        return (x if self.skip is None else self.skip(x)) + out

    def extra_repr(self) -> str:
        return f"scale={self.scale!r}"


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
        return nn.MaxPool2d(layer.size, layer.step, layer.pad)
    if isinstance(layer, Scale):
        return ScaleBy(layer.factor)
    if isinstance(layer, GlobalAvgPool):
        return GlobalPool(maximum=False)
    if isinstance(layer, GlobalMaxPool):
        return GlobalPool(maximum=True)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, BatchNorm):
        if layer.mode is BNMode.BATCH:
            return BatchStatNorm(in_shape[0])
        return nn.BatchNorm2d(in_shape[0]) if len(in_shape) == 3 else nn.BatchNorm1d(in_shape[0])
    if isinstance(layer, LayerNorm):
        return TokenLayerNorm(in_shape[0])
    if isinstance(layer, GELU):
        return nn.GELU()
    if isinstance(layer, Attention):
        return SelfAttention(in_shape[0], layer.heads)
    if isinstance(layer, Residual):
        shapes = layer.branch_shapes(in_shape)
        skip = layer.skip_layers(in_shape)
        skip_shapes = [in_shape, shapes[-1]]  # the projection reads the block's input, its norm the output shape
        skip_module = (None if not skip else _module(skip[0], in_shape) if len(skip) == 1
                       else nn.Sequential(*(_module(x, s) for x, s in zip(skip, skip_shapes))))
        return ResidualBlock(nn.Sequential(*(_module(x, s) for x, s in zip(layer.branch, shapes))), skip_module,
                             layer.scale)
    raise SpecError(f"no torch module for layer {layer!r}")


def init_weights(module: nn.Module, init: Init, generator: torch.Generator) -> None:
    """Initialise every Conv2d / Linear weight of ``module`` in place (CPU draw, then copy), nested
    ones included (residual branches and projections, attention projections), in module order."""
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
