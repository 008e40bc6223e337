"""Batched Monte Carlo engine: ``||d_x f_k||_q`` (or ``||d_x L||_q``) of many He-initialised nets at once.

R nets of one spec are evaluated in one autograd call.  Their weights are stacked along a
leading net axis (a :class:`Stack`), never built as ``R`` modules.  Three batching schemes for
convolutions, chosen per device and map size (see ``docs/performance.md`` for the measurements):

- ``Scheme.GROUPED``: the nets are stacked into the channel dimension and every convolution is
  one ``conv2d`` call with ``groups=R`` (fast where per-net overhead dominates: small maps, GPU);
- ``Scheme.SPLIT``: one ``conv2d`` call per net on the whole input batch, inside one graph and one
  backward pass (fast on CPU at large maps, where grouped convolutions are slow).
- ``Scheme.UNFOLD``: maps held net-major as ``(R*B, C, H, W)``; every convolution is one
  ``unfold`` (im2col) and one broadcast batched matmul with the R weight matrices (no grouped
  convolution kernel: cuDNN runs those group by group).

Dense layers always run as one batched matmul (``einsum`` over the net axis).  The block layers
run batched too: a residual block adds its skip (identity, or its ``1x1`` projection as a batched
convolution) to ``scale`` times its branch; layer norm normalises each position's channels of every
net's map in one ``layer_norm`` call; batch norm in ``batch`` mode uses each net's own statistics,
over its ``B`` inputs and the map positions (one ``batch_norm`` call with the ``R*C`` net-channels as
channels): the ``B`` inputs of a net are its batch, and the gradient taken is that of
``sum_b f_k(x_b)`` w.r.t. each ``x_b``, cross-sample terms included (what an attack on a network
in training mode computes); attention runs its projections as matmuls over the net axis and the
attention itself as one ``scaled_dot_product_attention`` call over ``(B*R, heads, tokens, D/heads)``.

Exact shortcut (Theorem 4's setting, ``dense`` family): for a chain of dense layers with i.i.d.
``N(0, s_l^2)`` weights and zero biases, write ``e = h/||h||`` for the layer input and
``a = W e`` (i.i.d. ``N(0, s^2)``).  Then ``W h = ||h|| a`` fixes the forward pass, and
``W^T v = (a.v) e + P_perp W^T v`` where ``P_perp W^T v ~ N(0, s^2 ||v||^2 P_perp)`` is
independent of ``a`` and of everything downstream.  Sampling ``a`` forward and the projected
Gaussian backward draws ``d_x f_k`` exactly in distribution at cost ``O(d + sum_l n_l)`` per
sample instead of ``O(sum_l n_{l-1} n_l)``, each sample with its own fresh weights.

    >>> from advdim.arch import family
    >>> spec = family("dense", widths=(32,)).spec(4, channels=1)
    >>> out = sample_norms(spec, nets=3, inputs=2, seed=0)
    >>> sorted(out), out["2"].shape
    (['1', '2', 'inf', 'sq2'], (3, 2))
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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
    Shape,
    Spec,
)
from advdim.build import Init, resolve_device
from advdim.choice import Choice
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target

#: the norm orders every evaluation reports (keys of the result dicts)
Q_KEYS = ("1", "2", "inf")
_BN_EPS = 1e-5  # torch's BatchNorm eps: in eval mode at init BN is the scaling 1/sqrt(1 + eps)
_LN_EPS = 1e-5  # torch's LayerNorm eps (advdim.build.LN_EPS)


class Scheme(Choice):
    """How R nets of one spec share the convolution calls."""

    AUTO = "auto"
    GROUPED = "grouped"
    SPLIT = "split"
    UNFOLD = "unfold"

    @classmethod
    def noun(cls) -> str:
        return "batching scheme"


#: on CPU, input maps with at least this many pixels use the SPLIT scheme (measured with
#: benchmarks/bench_schemes.py, docs/performance.md: GROUPED wins up to 64x64, SPLIT 1.7-2.4x at 128x128)
SPLIT_FROM_PIXELS = 96 * 96
#: on CUDA, input maps with at least this many pixels run in NHWC layout (same benchmark)
CUDA_NHWC_FROM_PIXELS = 64 * 64


def choose_scheme(spec: Spec, device: torch.device) -> Scheme:
    """The batching scheme for ``spec`` on ``device`` (GROUPED on GPU and for small maps)."""
    if device.type != "cpu":
        return Scheme.GROUPED
    _, h, w = spec.input_shape
    return Scheme.SPLIT if h * w >= SPLIT_FROM_PIXELS else Scheme.GROUPED


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Turn off TF32 for CUDA convolutions and matmuls inside the block (restored after).

    PyTorch lets cuDNN run float32 convolutions in TF32 (10-bit mantissa) by default: ~1e-3
    relative error per product, which breaks "the engine equals the plain computation to 1e-5".
    The engine's float32 means IEEE float32 on every device.
    """
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def choose_channels_last(spec: Spec, device: torch.device) -> bool:
    """Whether to run ``spec``'s maps in NHWC layout on ``device``.

    Measured with ``benchmarks/bench_schemes.py`` (``docs/performance.md``): on CPU oneDNN's NHWC
    convolutions are 1.2-2x faster than NCHW for these 3-16 channel nets at every map size; with
    cuDNN's grouped convolutions NHWC wins from 64x64 maps (up to 2.7x at 128x128 with 64 or more
    nets) and loses below (up to 8x at 16x16 with 512 nets).  Same numbers up to float rounding.
    """
    if not any(isinstance(layer, Conv) for layer in spec.layers):
        return False
    if device.type == "cpu":
        return True
    _, h, w = spec.input_shape
    return h * w >= CUDA_NHWC_FROM_PIXELS


@dataclass(frozen=True)
class Stack:
    """The weights of R nets of one spec, stacked along a leading net axis.

    Entries follow the spec's *slots* (:func:`slots`): one per layer, except that a residual block
    holds its branch's slots then one for its projection (``None`` for the identity skip) and an
    attention layer holds four (query, key, value, output).  This is the order in which
    :func:`advdim.build.build` registers and draws the weights.

    Attributes:
        spec: the architecture.
        weights: per slot, ``(R, out, in)`` (dense, attention projections), ``(R, out, in, k, k)``
            (conv) or ``None`` (no weights: activations, pools, norms at initialisation).
        biases: per slot, ``(R, out)`` or ``None``.
    """

    spec: Spec
    weights: tuple[torch.Tensor | None, ...]
    biases: tuple[torch.Tensor | None, ...]

    @property
    def nets(self) -> int:
        return next(w.shape[0] for w in self.weights if w is not None)


@functools.lru_cache(maxsize=512)
def _shapes(layers: tuple[Layer, ...], shape: Shape) -> tuple[Shape, ...]:
    """Shapes before each of ``layers`` and after the last (cached: the engine walks a spec on every
    call, and the validating ``out_shape`` of residual blocks costs milliseconds per walk)."""
    out = [shape]
    for layer in layers:
        out.append(layer.out_shape(out[-1]))
    return tuple(out)


@functools.lru_cache(maxsize=512)
def _projection(layer: Residual, shape: Shape) -> Conv | Dense | None:
    proj = layer.projection(shape)
    assert proj is None or isinstance(proj, (Conv, Dense))
    return proj


@functools.lru_cache(maxsize=512)
def _slots(layers: tuple[Layer, ...], shape: Shape) -> tuple[tuple[Conv | Dense | None, Shape], ...]:
    """Each slot of :func:`slots` with its input shape."""
    out: list[tuple[Conv | Dense | None, Shape]] = []
    for layer, s in zip(layers, _shapes(layers, shape)):
        if isinstance(layer, Residual):
            out += _slots(layer.branch, s)
            out.append((_projection(layer, s), s))
        elif isinstance(layer, Attention):
            out += [(Dense(s[0]), (s[0],))] * 4
        elif isinstance(layer, (Conv, Dense)):
            out.append((layer, s))
        else:
            out.append((None, s))
    return tuple(out)


def slots(layers: Sequence[Layer], shape: Shape) -> list[Conv | Dense | None]:
    """The weighted units of ``layers`` on input ``shape``, in the engine's (and the builder's) order.

    One entry per layer (``None`` for a layer without weights), except: a :class:`Residual` gives
    its branch's entries then its projection (``None``: identity skip), an :class:`Attention` gives
    four ``Dense(D)`` entries (``q``, ``k``, ``v``, ``o``, each ``D x D`` with a bias).

    >>> from advdim.arch import family
    >>> [type(x).__name__ for x in slots(family("vit", depth=1).spec(8).layers, (3, 8, 8))][:6]
    ['Conv', 'NoneType', 'Dense', 'Dense', 'Dense', 'Dense']
    """
    return [unit for unit, _ in _slots(tuple(layers), tuple(shape))]


def draw_stack(spec: Spec, nets: int, generator: torch.Generator, init: Init = Init.HE,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Stack:
    """Draw the weights of ``nets`` independent nets by ``init``, the laws of :func:`advdim.build.init_weights`:

    - ``he``, ``lecun``, ``glorot``: i.i.d. ``N(0, Var)``, biases 0;
    - ``torch`` (PyTorch's default): weights and biases i.i.d. uniform on ``[-b, b]``, ``b = 1/sqrt(fan_in)``;
    - ``orthogonal``: per net, the Q factor of a Gaussian matrix (sign-fixed), (semi-)orthogonal rows
      scaled by ``sqrt(2)``, biases 0.

    Every weighted slot (:func:`slots`) is drawn so: convolutions, dense layers, the bias-free
    ``1x1`` projections of residual blocks (``fan_in = C_in``) and the four ``D x D`` projections of
    attention (``fan_in = fan_out = D``).  Batch and layer norms hold weight 1 and bias 0 at
    initialisation and have no slot weights.  Drawn on the CPU from ``generator``, in ``dtype``
    (so the same seed gives the same nets on every device).
    """
    if nets < 1:
        raise AdvdimError(f"nets must be positive, got {nets}")
    dev = torch.device(device)
    weights: list[torch.Tensor | None] = []
    biases: list[torch.Tensor | None] = []
    for layer, shape in _slots(spec.layers, spec.input_shape):
        if isinstance(layer, Conv):
            wshape: tuple[int, ...] = (layer.out_channels, shape[0], layer.kernel, layer.kernel)
            fan_in, fan_out = shape[0] * layer.kernel**2, layer.out_channels * layer.kernel**2
        elif isinstance(layer, Dense):
            wshape = (layer.out_features, shape[0])
            fan_in, fan_out = shape[0], layer.out_features
        else:
            weights.append(None)
            biases.append(None)
            continue
        b: torch.Tensor | None = None
        if init is Init.TORCH:
            bound = 1.0 / math.sqrt(fan_in)
            w = (torch.rand((nets, *wshape), generator=generator, dtype=dtype) * 2 - 1) * bound
            if layer.bias:
                b = (torch.rand((nets, wshape[0]), generator=generator, dtype=dtype) * 2 - 1) * bound
        elif init is Init.ORTHOGONAL:
            w = _orthogonal(nets, wshape[0], fan_in, generator).to(dtype).reshape(nets, *wshape)
        else:
            std = math.sqrt(init.weight_variance(fan_in, fan_out))
            w = torch.randn((nets, *wshape), generator=generator, dtype=dtype) * std  # float32 draws: ~5x faster
        weights.append(w.to(device=dev))
        if layer.bias and b is None:
            b = torch.zeros(nets, wshape[0], dtype=dtype)
        biases.append(None if b is None else b.to(device=dev))
    return Stack(spec, tuple(weights), tuple(biases))


def _orthogonal(nets: int, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """``nets`` (semi-)orthogonal ``rows x cols`` matrices times ``sqrt(2)`` (float64, batched QR)."""
    flat = torch.randn(nets, max(rows, cols), min(rows, cols), dtype=torch.float64, generator=generator)
    q, r = torch.linalg.qr(flat)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if rows < cols:
        q = q.transpose(-2, -1)
    return math.sqrt(2.0) * q


def stack_modules(nets: Sequence[nn.Module], spec: Spec) -> Stack:
    """Stack the weights of modules built by :func:`advdim.build.build` from ``spec``.

    The ``Conv2d`` / ``Linear`` modules of each net, in module order, fill the weighted slots of
    :func:`slots` (shapes checked).  The engine models batch and layer norms at initialisation
    (weight 1, bias 0, running mean 0 and variance 1): other values are refused.
    """
    layout = slots(spec.layers, spec.input_shape)
    inputs = [shape for _, shape in _slots(spec.layers, spec.input_shape)]
    per_net = []
    for net in nets:
        _check_norms_at_init(net)
        params = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if len(params) != sum(x is not None for x in layout):
            raise AdvdimError(f"the module has {len(params)} conv/linear layers; {spec.to_text()} has "
                              f"{sum(x is not None for x in layout)} weighted slots")
        per_net.append(params)
    weights: list[torch.Tensor | None] = []
    biases: list[torch.Tensor | None] = []
    i = 0
    for unit, shape in zip(layout, inputs):
        if unit is None:
            weights.append(None)
            biases.append(None)
            continue
        want = ((unit.out_channels, shape[0], unit.kernel, unit.kernel) if isinstance(unit, Conv)
                else (unit.out_features, shape[0]))
        w = torch.stack([p[i].weight.detach() for p in per_net])
        if tuple(w.shape[1:]) != want:
            raise AdvdimError(f"weighted slot {i}: module weight {tuple(w.shape[1:])}, spec expects {want}")
        weights.append(w)
        bs = [p[i].bias for p in per_net]
        biases.append(None if any(b is None for b in bs) else torch.stack([b.detach() for b in bs if b is not None]))
        i += 1
    return Stack(spec, tuple(weights), tuple(biases))


def _check_norms_at_init(net: nn.Module) -> None:
    for m in net.modules():
        if not isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm)):
            continue
        at_init = ((m.weight is None or bool((m.weight == 1).all())) and (m.bias is None or not m.bias.any()))
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            assert m.running_var is not None
            at_init = at_init and not m.running_mean.any() and bool((m.running_var == 1).all())
        if not at_init:
            raise AdvdimError(f"the engine models {type(m).__name__} at initialisation (weight 1, bias 0, "
                              "running mean 0, variance 1); this module's differ")


# --------------------------------------------------------------------------------------------
# Plain batched forward + autograd
# --------------------------------------------------------------------------------------------

_PAD_MODE = {Padding.CIRCULAR: "circular", Padding.REFLECT: "reflect", Padding.ZEROS: "constant"}


class _CircularPad(torch.autograd.Function):
    """Circular padding of the last two dimensions by ``p``, with a backward that folds in place.

    ``F.pad(mode="circular")`` differentiates through slices, whose backward fills a zero tensor
    per slice and adds them up: 3-4x the cost of the convolutions it serves at 128x128 on a
    2-core CPU (``docs/performance.md``).  Here the backward is one copy of the interior rows and
    four in-place additions of the wrapped strips.  Equal to ``F.pad`` (tests/simulate/test_engine.py).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, p: int) -> torch.Tensor:
        ctx.p = p
        hh, ww = h.shape[-2:]
        fmt = torch.channels_last if _is_channels_last(h) else torch.contiguous_format
        out = torch.empty((*h.shape[:-2], hh + 2 * p, ww + 2 * p), dtype=h.dtype, device=h.device,
                          memory_format=fmt)
        out[..., p:p + hh, p:p + ww] = h
        out[..., :p, p:p + ww] = h[..., hh - p:, :]
        out[..., hh + p:, p:p + ww] = h[..., :p, :]
        out[..., :, :p] = out[..., :, ww:ww + p]
        out[..., :, ww + p:] = out[..., :, p:2 * p]
        return out

    @staticmethod
    def backward(ctx, go: torch.Tensor) -> tuple[torch.Tensor, None]:
        p = ctx.p
        hh, ww = go.shape[-2] - 2 * p, go.shape[-1] - 2 * p
        g = go[..., p:p + hh, :].clone(memory_format=torch.preserve_format)
        g[..., :p, :] += go[..., hh + p:, :]
        g[..., hh - p:, :] += go[..., :p, :]
        g[..., p:2 * p] += g[..., ww + p:]
        g[..., ww:ww + p] += g[..., :p]
        return g[..., p:p + ww], None


def _is_channels_last(h: torch.Tensor) -> bool:
    return h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last)


def circular_pad(h: torch.Tensor, p: int) -> torch.Tensor:
    """``F.pad(h, (p, p, p, p), mode="circular")`` with a cheap backward (see :class:`_CircularPad`)."""
    if p == 0:
        return h
    if p > min(h.shape[-2:]):
        raise AdvdimError(f"circular padding {p} exceeds the map {h.shape[-2]}x{h.shape[-1]}")
    return _CircularPad.apply(h, p)


def _pad(h: torch.Tensor, layer: Conv) -> torch.Tensor:
    """Pad for ``layer``; zero padding is left to the convolution itself (see :func:`_conv_padding`)."""
    if layer.pad == 0 or layer.padding is Padding.ZEROS:
        return h
    if layer.padding is Padding.CIRCULAR:
        return circular_pad(h, layer.pad)
    p = layer.pad
    return F.pad(h, (p, p, p, p), mode=_PAD_MODE[layer.padding])


def _conv_padding(layer: Conv) -> int:
    return layer.pad if layer.padding is Padding.ZEROS else 0


def _conv(h: torch.Tensor | list[torch.Tensor], layer: Conv, w: torch.Tensor, b: torch.Tensor | None,
          scheme: Scheme) -> torch.Tensor | list[torch.Tensor]:
    r = w.shape[0]
    pad = _conv_padding(layer)
    if scheme is Scheme.UNFOLD:
        assert isinstance(h, torch.Tensor)
        return _conv_unfold(h, layer, w, b)
    if scheme is Scheme.GROUPED:
        assert isinstance(h, torch.Tensor)
        wf = w.reshape(r * w.shape[1], *w.shape[2:])
        bf = None if b is None else b.reshape(-1)
        return F.conv2d(_pad(h, layer), wf, bf, stride=layer.stride, padding=pad, dilation=layer.dilation, groups=r)
    assert isinstance(h, list)
    return [F.conv2d(_pad(hi, layer), w[i], None if b is None else b[i], stride=layer.stride, padding=pad,
                     dilation=layer.dilation) for i, hi in enumerate(h)]


def _conv_unfold(h: torch.Tensor, layer: Conv, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``h`` ``(R*B, C, H, W)`` net-major -> ``(R*B, O, H', W')``: im2col, then one batched matmul per net."""
    r, o = w.shape[0], w.shape[1]
    hp = _pad(h, layer)
    pad, k, dil, st = _conv_padding(layer), layer.kernel, layer.dilation, layer.stride
    cols = F.unfold(hp, k, dilation=dil, padding=pad, stride=st)  # (R*B, C*k*k, L)
    ho = (hp.shape[-2] + 2 * pad - dil * (k - 1) - 1) // st + 1
    wo = (hp.shape[-1] + 2 * pad - dil * (k - 1) - 1) // st + 1
    rb = h.shape[0]
    out = torch.matmul(w.reshape(r, 1, o, -1), cols.reshape(r, rb // r, cols.shape[1], -1))  # (R, B, O, L)
    if b is not None:
        out = out + b.reshape(r, 1, o, 1)
    return out.reshape(rb, o, ho, wo)


def _map(h: torch.Tensor | list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | list[
        torch.Tensor]:
    return [fn(x) for x in h] if isinstance(h, list) else fn(h)


def _to_flat(h: torch.Tensor | list[torch.Tensor], r: int, how: str, scheme: Scheme) -> torch.Tensor:
    """Map representation -> (B, R, n): flatten, global average or global max."""
    if isinstance(h, list):
        t = torch.stack(h, dim=1)  # (B, R, C, H, W)
    elif scheme is Scheme.UNFOLD:
        t = h.reshape(r, -1, *h.shape[1:]).transpose(0, 1)
    else:
        t = h.reshape(h.shape[0], r, -1, *h.shape[2:])
    if how == "flatten":
        return t.reshape(t.shape[0], r, -1)
    if how == "avg":
        return t.mean(dim=(3, 4))
    return t.amax(dim=(3, 4))


@dataclass(frozen=True)
class _Batch:
    """How a forward pass holds its maps: ``r`` nets, ``b`` inputs each, under ``scheme``."""

    r: int
    b: int
    scheme: Scheme


Rep = torch.Tensor | list[torch.Tensor]


def _nets5(h: torch.Tensor, at: _Batch) -> torch.Tensor:
    """A map representation as a ``(B, R, C, H, W)`` view (GROUPED or UNFOLD)."""
    if at.scheme is Scheme.UNFOLD:
        return h.reshape(at.r, at.b, *h.shape[1:]).transpose(0, 1)
    return h.reshape(at.b, at.r, -1, *h.shape[2:])


def _from5(t: torch.Tensor, at: _Batch) -> torch.Tensor:
    if at.scheme is Scheme.UNFOLD:
        return t.transpose(0, 1).reshape(at.r * at.b, *t.shape[2:])
    return t.reshape(at.b, -1, *t.shape[3:])


def _per_net(h: Rep, at: _Batch, fn: Callable[..., torch.Tensor], *params: torch.Tensor | None) -> Rep:
    """Apply ``fn(t, *params)`` with ``t`` the ``(B, R, C, H, W)`` maps and ``params`` ``(R, ...)``;
    under SPLIT, once per net (``R = 1``, the net's slice of ``params``)."""
    if isinstance(h, list):
        return [_like(fn(x.unsqueeze(1), *(None if p is None else p[i:i + 1] for p in params)).squeeze(1), x)
                for i, x in enumerate(h)]
    return _like(_from5(fn(_nets5(h, at), *params), at), h)


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` in ``ref``'s memory format (NHWC maps stay NHWC: convolutions on other layouts take slow paths)."""
    return t.contiguous(memory_format=torch.channels_last if _is_channels_last(ref) else torch.contiguous_format)


def _layer_norm5(t: torch.Tensor) -> torch.Tensor:
    """Layer norm over the channels at each position of ``(B, R, C, H, W)`` maps (``nn.LayerNorm`` at
    init: ``(t - mean) / sqrt(var + eps)``, biased variance).  Run on the ``(B, H, W, R, C)``
    permutation, which is contiguous for NHWC maps of the GROUPED scheme (no copy)."""
    return F.layer_norm(t.permute(0, 3, 4, 1, 2), t.shape[2:3], eps=_LN_EPS).permute(0, 3, 4, 1, 2)


def _batch_norm5(t: torch.Tensor) -> torch.Tensor:
    """Batch norm with batch statistics of ``(B, R, C, H, W)`` maps: per net and channel, the mean and
    biased variance over the ``B`` inputs and the positions (``nn.BatchNorm2d`` in training mode at
    init), the ``R*C`` net-channels as channels.  The statistics are reduced in float64, so that the
    result does not depend on how many threads reduce them (in-process, local workers and Dask
    workers give the same cells bit for bit; ``F.batch_norm``'s float32 reduction did not)."""
    x = t.flatten(1, 2)
    x64 = x.double()
    mean = x64.mean(dim=(0, 2, 3), keepdim=True)
    var = x64.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    out = ((x64 - mean) * torch.rsqrt(var + _BN_EPS)).to(t.dtype)
    return out.unflatten(1, t.shape[1:3])


def _attention(t: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
               bq: torch.Tensor, bk: torch.Tensor, bv: torch.Tensor, bo: torch.Tensor, *, heads: int) -> torch.Tensor:
    """Self-attention of every net over the positions of its maps: ``t`` ``(B, R, D, H, W)``, weights
    ``(R, D, D)``, biases ``(R, D)`` -> ``(B, R, D, H, W)``.  The projections are batched matmuls
    over the net axis; the attention itself one ``scaled_dot_product_attention`` call over
    ``(B, R, heads, tokens, D/heads)`` (softmax of ``q k^T / sqrt(D/heads)``)."""
    b, r, d, hh, ww = t.shape
    x = t.reshape(b, r, d, hh * ww).transpose(2, 3)  # (B, R, N, D): token n = row-major position
    w_qkv = torch.cat([wq, wk, wv], dim=1).transpose(1, 2)  # (R, D, 3D)
    qkv = torch.matmul(x, w_qkv) + torch.cat([bq, bk, bv], dim=1).unsqueeze(1)  # (B, R, N, 3D)
    q, k, v = (z.unflatten(-1, (heads, d // heads)).transpose(2, 3).flatten(0, 1) for z in qkv.split(d, dim=-1))
    o = F.scaled_dot_product_attention(q, k, v)  # (B*R, heads, N, D/heads): 4-D, CPU's fused kernel
    y = torch.matmul(o.transpose(1, 2).reshape(b, r, hh * ww, d), wo.transpose(1, 2)) + bo.unsqueeze(1)
    return y.transpose(2, 3).reshape(b, r, d, hh, ww)


def _linear(layer: Conv | Dense, h: Rep, flat: bool, w: torch.Tensor | None, bias: torch.Tensor | None,
            at: _Batch) -> Rep:
    assert w is not None
    if isinstance(layer, Conv):
        return _conv(h, layer, w, bias, at.scheme)
    assert isinstance(h, torch.Tensor) and flat
    out = torch.einsum("brn,rmn->brm", h, w)
    return out if bias is None else out + bias


def _add(a: Rep, b: Rep, scale: float) -> Rep:
    """``a + scale * b`` in either representation."""
    if isinstance(a, list):
        assert isinstance(b, list)
        return [x + y if scale == 1.0 else torch.add(x, y, alpha=scale) for x, y in zip(a, b)]
    assert isinstance(b, torch.Tensor)
    return a + b if scale == 1.0 else torch.add(a, b, alpha=scale)


def _run(layers: Sequence[Layer], in_shape: Shape, h: Rep, flat: bool, params: Iterator[tuple[torch.Tensor | None,
         torch.Tensor | None]], at: _Batch) -> tuple[Rep, bool]:
    """``layers`` on ``h`` (input ``in_shape`` per net and sample), consuming their slots from ``params``."""
    for layer, shape in zip(layers, _shapes(tuple(layers), in_shape)):
        if isinstance(layer, (Conv, Dense)):
            w, bias = next(params)
            h = _linear(layer, h, flat, w, bias, at)
        elif isinstance(layer, Residual):
            out, out_flat = _run(layer.branch, shape, h, flat, params, at)
            w, bias = next(params)
            proj = _projection(layer, shape)
            assert out_flat == flat
            skip = h if proj is None else _linear(proj, h, flat, w, bias, at)
            if proj is not None and layer.projbn:  # its batch norm at init, running statistics: 1 / sqrt(1 + eps)
                skip = _map(skip, lambda t: t / math.sqrt(1.0 + _BN_EPS))
            h = _add(skip, out, layer.scale)
        elif isinstance(layer, Attention):
            ws, bs = zip(*(next(params) for _ in range(4)))
            if flat:
                raise SpecError("the engine runs attention over the positions of a map, not on flat features")
            h = _per_net(h, at, functools.partial(_attention, heads=layer.heads), *ws, *bs)
        elif isinstance(layer, LayerNorm):
            next(params)
            if flat:
                assert isinstance(h, torch.Tensor)
                h = F.layer_norm(h, h.shape[-1:], eps=_LN_EPS)
            else:
                h = _per_net(h, at, _layer_norm5)
        elif isinstance(layer, BatchNorm):
            next(params)
            if layer.mode is BNMode.RUNNING:
                h = _map(h, lambda t: t / math.sqrt(1.0 + _BN_EPS))
            elif flat:  # (B, R, n): per net and feature, over the B inputs
                assert isinstance(h, torch.Tensor)
                h = F.batch_norm(h.flatten(1), None, None, training=True, eps=_BN_EPS).unflatten(1, h.shape[1:])
            else:
                h = _per_net(h, at, _batch_norm5)
        else:
            next(params)
            h, flat = _pointwise(layer, h, flat, at)
    return h, flat


def _pointwise(layer: Layer, h: Rep, flat: bool, at: _Batch) -> tuple[Rep, bool]:
    """Layers without weights or statistics: activations, pools, flatten."""
    if isinstance(layer, ReLU):
        return _map(h, F.relu), flat
    if isinstance(layer, GELU):
        return _map(h, F.gelu), flat  # the exact erf form, as nn.GELU()
    if isinstance(layer, AvgPool):
        return _map(h, functools.partial(F.avg_pool2d, kernel_size=layer.size)), flat
    if isinstance(layer, MaxPool):
        return _map(h, functools.partial(F.max_pool2d, kernel_size=layer.size, stride=layer.step,
                                         padding=layer.pad)), flat
    if isinstance(layer, Scale):
        return _map(h, lambda t: t * layer.factor), flat
    if isinstance(layer, (Flatten, GlobalAvgPool, GlobalMaxPool)):
        if flat:
            return h, flat
        how = "flatten" if isinstance(layer, Flatten) else "avg" if isinstance(layer, GlobalAvgPool) else "max"
        return _to_flat(h, at.r, how, at.scheme), True
    raise SpecError(f"the engine has no rule for layer {layer!r}")


def memory_entries(spec: Spec) -> tuple[int, int]:
    """``(A, P)``: the activation entries one sample's forward pass keeps for the backward pass, and
    the weight entries of one net (biases not counted), for the memory estimate of a cell.

    ``A`` counts the input, every layer's output, every circularly or reflect padded copy, inside
    residual branches too (each branch's layers, the projection's output and the sum), and for an
    attention layer over ``N`` tokens of ``D`` features the projections and head views ``6 D N``,
    the output and its projection ``3 D N`` and ``heads N`` row log-sum-exps: the fused
    ``scaled_dot_product_attention`` kernels (CPU flash attention, float32 and float64) keep no
    ``N x N`` score matrix for the backward pass.

    >>> from advdim.arch import family
    >>> memory_entries(family("strided", channels=4).spec(8, channels=1))
    (1278, 820)
    """
    acts, weights = _memory(spec.layers, spec.input_shape)
    return acts + math.prod(spec.input_shape), weights


def _memory(layers: Sequence[Layer], shape: Shape) -> tuple[int, int]:
    acts = weights = 0
    for layer, s, out in zip(layers, _shapes(tuple(layers), shape), _shapes(tuple(layers), shape)[1:]):
        acts += math.prod(out)
        if isinstance(layer, Conv):
            weights += layer.out_channels * s[0] * layer.kernel**2
            if layer.pad and layer.padding in (Padding.CIRCULAR, Padding.REFLECT):
                acts += s[0] * (s[1] + 2 * layer.pad) * (s[2] + 2 * layer.pad)
        elif isinstance(layer, Dense):
            weights += layer.out_features * s[0]
        elif isinstance(layer, Attention):
            d, n = s[0], math.prod(s[1:])
            acts += 9 * d * n + layer.heads * n  # fused attention keeps no N x N scores, only row log-sum-exps
            weights += 4 * d * d
        elif isinstance(layer, Residual):
            a, w = _memory(layer.branch, s)
            proj = _projection(layer, s)
            acts += a + (0 if proj is None else math.prod(out))
            weights += w + (0 if proj is None else _memory((proj,), s)[1])
    return acts, weights


def batch_statistics(layers: Sequence[Layer]) -> bool:
    """True when some layer (residual branches included) normalises with its batch's statistics."""
    return any((isinstance(x, BatchNorm) and x.mode is BNMode.BATCH)
               or (isinstance(x, Residual) and batch_statistics(x.branch)) for x in layers)


def forward(stack: Stack, x: torch.Tensor, scheme: Scheme = Scheme.GROUPED,
            channels_last: bool = False) -> torch.Tensor:
    """Logits of every net on its own inputs: ``x`` of shape ``(B, R, C, H, W)`` -> ``(B, R, K)``.

    ``channels_last`` runs the maps in NHWC layout (faster oneDNN convolutions on CPU; same numbers).
    A batch norm in ``batch`` mode normalises each net's maps with the mean and (biased) variance
    over that net's ``B`` inputs (and the map positions), as ``nn.BatchNorm2d`` in training mode:
    the ``B`` inputs of a net are its batch, and ``B >= 2`` is required.
    """
    spec = stack.spec
    r = stack.nets
    if x.dim() != 5 or x.shape[1] != r or tuple(x.shape[2:]) != spec.input_shape:
        raise AdvdimError(f"x must have shape (B, {r}, {', '.join(map(str, spec.input_shape))}), "
                          f"got {tuple(x.shape)}")
    b = x.shape[0]
    if b < 2 and batch_statistics(spec.layers):
        raise AdvdimError(f"batch norm in batch mode normalises over each net's batch of inputs: needs at least "
                          f"2 inputs per net, got {b}")
    if len(stack.weights) != len(_slots(spec.layers, spec.input_shape)):
        raise AdvdimError(f"the stack holds {len(stack.weights)} slots, {spec.to_text()} has "
                          f"{len(_slots(spec.layers, spec.input_shape))}")
    h: Rep
    if scheme is Scheme.GROUPED:
        h = x.reshape(b, r * x.shape[2], *x.shape[3:])
    elif scheme is Scheme.UNFOLD:
        h = x.transpose(0, 1).reshape(r * b, *x.shape[2:])
        channels_last = False  # im2col reads NCHW
    else:
        h = list(x.unbind(1))
    if channels_last:
        h = _map(h, lambda t: t.contiguous(memory_format=torch.channels_last))
    out, _ = _run(spec.layers, spec.input_shape, h, False, zip(stack.weights, stack.biases), _Batch(r, b, scheme))
    assert isinstance(out, torch.Tensor)
    return out


def input_gradients(stack: Stack, x: torch.Tensor, target: Target = Target.LOGIT, logit: int = 0,
                    labels: torch.Tensor | None = None, scheme: Scheme = Scheme.GROUPED,
                    channels_last: bool = False) -> torch.Tensor:
    """Per (input, net) gradient ``d f_logit / d x`` or ``d L / d x``; shape of ``x`` ``(B, R, C, H, W)``.

    One forward and one backward pass for all R nets (the nets do not interact, so the gradient
    of the summed output is each net's own gradient).
    """
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), ieee_float32():
        out = forward(stack, xg, scheme, channels_last)
        if target is Target.LOGIT:
            if not 0 <= logit < out.shape[2]:
                raise AdvdimError(f"logit index {logit} out of range for {out.shape[2]} logits")
            scalar = out[..., logit].sum()
        else:
            if labels is None or labels.shape != out.shape[:2]:
                raise AdvdimError(f"the loss gradient needs labels of shape {tuple(out.shape[:2])}")
            scalar = F.cross_entropy(out.reshape(-1, out.shape[2]), labels.reshape(-1), reduction="sum")
        (g,) = torch.autograd.grad(scalar, xg)
    return g


# --------------------------------------------------------------------------------------------
# Exact shortcut for dense chains
# --------------------------------------------------------------------------------------------


def shortcut_applies(spec: Spec, init: Init = Init.HE) -> bool:
    """True when ``spec`` is ``flatten > (dense > relu)* > dense`` with Gaussian i.i.d. weights."""
    layers = spec.layers
    if init not in (Init.HE, Init.LECUN, Init.GLOROT) or not layers or not isinstance(layers[0], Flatten):
        return False
    body = layers[1:]
    if not body or not isinstance(body[-1], Dense):
        return False
    pairs = body[:-1]
    if len(pairs) % 2:
        return False
    return all(isinstance(a, Dense) and isinstance(b, ReLU) for a, b in zip(pairs[::2], pairs[1::2]))


def shortcut_gradients(spec: Spec, x: torch.Tensor, generator: torch.Generator, target: Target = Target.LOGIT,
                       logit: int = 0, labels: torch.Tensor | None = None, init: Init = Init.HE) -> torch.Tensor:
    """Exact-in-distribution draw of ``d_x f_logit`` (or ``d_x L``), one fresh net per sample.

    Args:
        spec: a dense chain (see :func:`shortcut_applies`).
        x: inputs ``(S, C, H, W)``; sample ``i`` gets its own independent weights.
        generator: the generator all weight-related draws come from (on ``x``'s device).
    Returns:
        ``(S, C, H, W)``.  Cost ``O(d + sum_l n_l)`` per sample.
    """
    if not shortcut_applies(spec, init):
        raise AdvdimError(f"the dense shortcut does not apply to {spec.to_text()}")
    h = x.reshape(x.shape[0], -1)
    r0 = torch.linalg.vector_norm(h, dim=1)
    e = h / torch.where(r0 > 0, r0, torch.ones_like(r0))[:, None]
    alpha, beta = _dense_chain(spec, r0, generator, target, logit, labels, init)
    xi = torch.randn(h.shape, generator=generator, dtype=x.dtype, device=x.device)
    xi = xi - (xi * e).sum(dim=1, keepdim=True) * e
    return (alpha[:, None] * e + beta[:, None] * xi).reshape(x.shape)


def gaussian_input_norms(spec: Spec, n: int, generator: torch.Generator, rng: np.random.Generator,
                         target: Target = Target.LOGIT, logit: int = 0, labels: torch.Tensor | None = None,
                         init: Init = Init.HE, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Exact-in-distribution norms of ``d_x f`` for a dense chain on i.i.d. ``N(0, 1)`` inputs, O(d) per sample.

    With a Gaussian input the first layer sees only ``r = ||x||`` (``r^2 ~ chi^2_d``) and a uniform
    direction ``e``; :func:`shortcut_gradients` gives ``g = alpha e + beta xi_perp`` with ``alpha``,
    ``beta`` functions of ``r`` and the rest of the net, and ``xi_perp`` a standard Gaussian
    orthogonal to ``e``.  Given ``(alpha, beta)`` that law is rotation invariant, so ``g`` is its
    norm ``sqrt(alpha^2 + beta^2 K)`` (``K ~ chi^2_{d-1}``, independent) times a uniform direction
    ``zeta / ||zeta||_2``, ``zeta ~ N(0, I_d)``: one Gaussian vector of length ``d`` per sample
    instead of the input, a second vector and a projection.

    Returns:
        ``{"1", "2", "inf", "sq2"}`` -> ``(n,)`` float64 tensors on ``generator``'s device.
    """
    if not shortcut_applies(spec, init):
        raise AdvdimError(f"the dense shortcut does not apply to {spec.to_text()}")
    dev = generator.device
    r0 = torch.from_numpy(np.sqrt(rng.chisquare(spec.d, size=n))).to(device=dev, dtype=dtype)
    alpha, beta = _dense_chain(spec, r0, generator, target, logit, labels, init)
    k = torch.from_numpy(rng.chisquare(spec.d - 1, size=n) if spec.d > 1 else np.zeros(n)).to(dev, torch.float64)
    size = torch.sqrt(alpha.double() ** 2 + beta.double() ** 2 * k)
    zeta = torch.randn((n, spec.d), generator=generator, dtype=dtype, device=dev)
    l2 = torch.linalg.vector_norm(zeta, dim=1).double()
    return {"1": size * zeta.abs().sum(dim=1).double() / l2, "2": size,
            "inf": size * zeta.abs().amax(dim=1).double() / l2, "sq2": size**2}


def _dense_chain(spec: Spec, r0: torch.Tensor, generator: torch.Generator, target: Target, logit: int,
                 labels: torch.Tensor | None, init: Init) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha, beta)`` of the first layer for inputs of norm ``r0``: ``g = alpha e + beta xi_perp``."""
    dense = [layer for layer in spec.layers if isinstance(layer, Dense)]
    dims = [spec.d] + [layer.out_features for layer in dense]
    s, dt, dev = r0.shape[0], r0.dtype, r0.device
    stds = [math.sqrt(init.weight_variance(dims[i], dims[i + 1])) for i in range(len(dense))]
    r = r0[:, None]
    es: list[torch.Tensor] = []
    avecs, zs = [], []
    for i in range(len(dense)):
        a = torch.randn((s, dims[i + 1]), generator=generator, dtype=dt, device=dev) * stds[i]
        z = r * a
        avecs.append(a)
        zs.append(z)
        h = F.relu(z)
        r = torch.linalg.vector_norm(h, dim=1, keepdim=True)
        es.append(h / torch.where(r > 0, r, torch.ones_like(r)))
    v = _output_gradient(zs[-1], target, logit, labels)
    for i in reversed(range(1, len(dense))):
        e = es[i - 1]
        xi = torch.randn((s, dims[i]), generator=generator, dtype=dt, device=dev)
        xi = xi - (xi * e).sum(dim=1, keepdim=True) * e
        v_norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        u = (avecs[i] * v).sum(dim=1, keepdim=True) * e + stds[i] * v_norm * xi
        v = u * (zs[i - 1] > 0).to(dt)
    return (avecs[0] * v).sum(dim=1), stds[0] * torch.linalg.vector_norm(v, dim=1)


def _output_gradient(out: torch.Tensor, target: Target, logit: int, labels: torch.Tensor | None) -> torch.Tensor:
    """``d f_logit / d out`` (a one-hot row) or ``d L / d out`` (softmax minus one-hot)."""
    if target is Target.LOGIT:
        v = torch.zeros_like(out)
        v[:, logit] = 1.0
        return v
    s = out.shape[0]
    if labels is None or labels.shape != (s,):
        raise AdvdimError(f"the loss gradient needs labels of shape ({s},)")
    return torch.softmax(out, dim=1) - F.one_hot(labels.to(out.device), out.shape[1]).to(out.dtype)


# --------------------------------------------------------------------------------------------
# The one entry point of a simulation cell
# --------------------------------------------------------------------------------------------


def _norms(g: torch.Tensor) -> dict[str, torch.Tensor]:
    """``||g||_1, ||g||_2, ||g||_inf, ||g||_2^2`` per sample, float64; two passes over ``|g|`` in its own dtype.

    Sums accumulate in float64 (``sum(dtype=...)``) without a float64 copy of ``g``: float32
    squares are exact to 2^-24 relative, far below the Monte Carlo error.
    """
    a = g.reshape(g.shape[0], -1).abs()
    sq = (a * a).sum(dim=1, dtype=torch.float64)
    return {"1": a.sum(dim=1, dtype=torch.float64), "2": sq.sqrt(), "inf": a.amax(dim=1).to(torch.float64),
            "sq2": sq}


def sample_norms(
    spec: Spec,
    nets: int,
    inputs: int,
    seed: int | np.random.SeedSequence = 0,
    target: Target | str = Target.LOGIT,
    logit: int = 0,
    exact_shortcuts: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    scheme: Scheme | str = Scheme.AUTO,
    images: torch.Tensor | None = None,
    init: Init = Init.HE,
) -> dict[str, np.ndarray]:
    """Gradient norms of ``nets`` random nets of ``spec`` on ``inputs`` inputs each.

    Inputs are i.i.d. ``N(0, 1)`` per coordinate unless ``images`` ``(M, C, H, W)`` is given (then
    each net gets ``inputs`` images drawn from it with replacement); loss labels are uniform.

    Returns:
        ``{"1", "2", "inf", "sq2"}`` -> float64 arrays of shape ``(nets, inputs)`` holding
        ``||g||_1, ||g||_2, ||g||_inf, ||g||_2^2``.  With the dense shortcut every entry comes
        from its own independent net (same marginal law, see :func:`shortcut_gradients`).
    """
    target = Target.parse(target)
    dev = resolve_device(device)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
    s_w, s_x, s_y, s_sc = (int(c.generate_state(1)[0]) for c in ss.spawn(4))
    gx = torch.Generator().manual_seed(s_x)
    n = nets * inputs
    k = _shapes(spec.layers, spec.input_shape)[-1][0]  # spec.n_classes, without re-validating the spec
    labels = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(s_y)).to(dev)
    if images is None and exact_shortcuts and shortcut_applies(spec, init):
        gen = torch.Generator(device=dev).manual_seed(s_sc)
        norms = gaussian_input_norms(spec, n, gen, np.random.default_rng(s_x), target, logit, labels, init, dtype)
        return {key: v.reshape(nets, inputs).cpu().numpy() for key, v in norms.items()}
    if images is None:  # drawn in the working precision: float32 draws are ~5x faster than float64 ones
        x = torch.randn((n, *spec.input_shape), generator=gx, dtype=dtype)
    else:
        if tuple(images.shape[1:]) != spec.input_shape:
            raise AdvdimError(f"images of shape {tuple(images.shape[1:])} do not fit {spec.input_shape}")
        idx = torch.randint(0, images.shape[0], (n,), generator=gx)
        x = images[idx].to(torch.float64)
    x = x.to(device=dev, dtype=dtype)
    if exact_shortcuts and shortcut_applies(spec, init):
        gen = torch.Generator(device=dev).manual_seed(s_sc)
        g = shortcut_gradients(spec, x, gen, target, logit, labels, init)
        norms = _norms(g)
    else:
        stack = draw_stack(spec, nets, torch.Generator().manual_seed(s_w), init, dtype, dev)
        sch = Scheme.parse(scheme)
        if sch is Scheme.AUTO:
            sch = choose_scheme(spec, dev)
        xb = x.reshape(nets, inputs, *spec.input_shape).transpose(0, 1)  # (B, R, ...)
        yb = labels.reshape(nets, inputs).transpose(0, 1)
        g = input_gradients(stack, xb, target, logit, yb, sch, choose_channels_last(spec, dev))
        norms = {key: v.reshape(inputs, nets).T for key, v in _norms(g.reshape(n, -1)).items()}  # (B, R) -> (R, B)
    return {key: v.reshape(nets, inputs).cpu().numpy() for key, v in norms.items()}
