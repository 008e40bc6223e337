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

Dense layers always run as one batched matmul (``einsum`` over the net axis).

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from advdim.arch import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalMaxPool,
    MaxPool,
    Padding,
    ReLU,
    Spec,
)
from advdim.build import Init, resolve_device
from advdim.choice import Choice
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target

#: the norm orders every evaluation reports (keys of the result dicts)
Q_KEYS = ("1", "2", "inf")
_BN_EPS = 1e-5  # torch's BatchNorm eps: in eval mode at init BN is the scaling 1/sqrt(1 + eps)


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

    Attributes:
        spec: the architecture.
        weights: per layer, ``(R, out, in)`` (dense), ``(R, out, in, k, k)`` (conv) or ``None``.
        biases: per layer, ``(R, out)`` or ``None``.
    """

    spec: Spec
    weights: tuple[torch.Tensor | None, ...]
    biases: tuple[torch.Tensor | None, ...]

    @property
    def nets(self) -> int:
        return next(w.shape[0] for w in self.weights if w is not None)


def draw_stack(spec: Spec, nets: int, generator: torch.Generator, init: Init = Init.HE,
               dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Stack:
    """Draw the weights of ``nets`` independent nets by ``init``, the laws of :func:`advdim.build.init_weights`:

    - ``he``, ``lecun``, ``glorot``: i.i.d. ``N(0, Var)``, biases 0;
    - ``torch`` (PyTorch's default): weights and biases i.i.d. uniform on ``[-b, b]``, ``b = 1/sqrt(fan_in)``;
    - ``orthogonal``: per net, the Q factor of a Gaussian matrix (sign-fixed), (semi-)orthogonal rows
      scaled by ``sqrt(2)``, biases 0.

    Drawn on the CPU from ``generator``, in ``dtype`` (so the same seed gives the same nets on every device).
    """
    if nets < 1:
        raise AdvdimError(f"nets must be positive, got {nets}")
    dev = torch.device(device)
    weights: list[torch.Tensor | None] = []
    biases: list[torch.Tensor | None] = []
    for layer, shape in zip(spec.layers, spec.shapes()):
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
    """Stack the weights of modules built by :func:`advdim.build.build` from ``spec``."""
    per_net = []
    for net in nets:
        params = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        per_net.append(params)
    weights: list[torch.Tensor | None] = []
    biases: list[torch.Tensor | None] = []
    i = 0
    for layer in spec.layers:
        if isinstance(layer, (Conv, Dense)):
            weights.append(torch.stack([p[i].weight.detach() for p in per_net]))
            bs = [p[i].bias for p in per_net]
            biases.append(None if any(b is None for b in bs)
                          else torch.stack([b.detach() for b in bs if b is not None]))
            i += 1
        else:
            weights.append(None)
            biases.append(None)
    return Stack(spec, tuple(weights), tuple(biases))


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


def _map(h: torch.Tensor | list[torch.Tensor], fn: object) -> torch.Tensor | list[torch.Tensor]:
    f = fn  # a callable on one tensor
    return [f(x) for x in h] if isinstance(h, list) else f(h)  # type: ignore[operator]


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


def forward(stack: Stack, x: torch.Tensor, scheme: Scheme = Scheme.GROUPED,
            channels_last: bool = False) -> torch.Tensor:
    """Logits of every net on its own inputs: ``x`` of shape ``(B, R, C, H, W)`` -> ``(B, R, K)``.

    ``channels_last`` runs the maps in NHWC layout (faster oneDNN convolutions on CPU; same numbers).
    """
    spec = stack.spec
    r = stack.nets
    if x.dim() != 5 or x.shape[1] != r or tuple(x.shape[2:]) != spec.input_shape:
        raise AdvdimError(f"x must have shape (B, {r}, {', '.join(map(str, spec.input_shape))}), "
                          f"got {tuple(x.shape)}")
    b = x.shape[0]
    h: torch.Tensor | list[torch.Tensor]
    if scheme is Scheme.GROUPED:
        h = x.reshape(b, r * x.shape[2], *x.shape[3:])
    elif scheme is Scheme.UNFOLD:
        h = x.transpose(0, 1).reshape(r * b, *x.shape[2:])
        channels_last = False  # im2col reads NCHW
    else:
        h = list(x.unbind(1))
    if channels_last:
        h = _map(h, lambda t: t.contiguous(memory_format=torch.channels_last))
    flat = False
    for layer, w, bias in zip(spec.layers, stack.weights, stack.biases):
        if isinstance(layer, Conv):
            assert w is not None
            h = _conv(h, layer, w, bias, scheme)
        elif isinstance(layer, Dense):
            assert w is not None and isinstance(h, torch.Tensor) and flat
            h = torch.einsum("brn,rmn->brm", h, w)
            if bias is not None:
                h = h + bias
        elif isinstance(layer, ReLU):
            h = _map(h, F.relu)
        elif isinstance(layer, BatchNorm):
            h = _map(h, lambda t: t / math.sqrt(1.0 + _BN_EPS))
        elif isinstance(layer, AvgPool):
            h = _map(h, functools.partial(F.avg_pool2d, kernel_size=layer.size))
        elif isinstance(layer, MaxPool):
            h = _map(h, functools.partial(F.max_pool2d, kernel_size=layer.size))
        elif isinstance(layer, (Flatten, GlobalAvgPool, GlobalMaxPool)):
            if not flat:
                how = "flatten" if isinstance(layer, Flatten) else "avg" if isinstance(layer, GlobalAvgPool) else "max"
                h = _to_flat(h, r, how, scheme)
                flat = True
        else:
            raise SpecError(f"the engine has no rule for layer {layer!r}")
    assert isinstance(h, torch.Tensor)
    return h


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
    k = spec.n_classes
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
