"""The block families (``resnet``, ``bn``, ``ln``, ``vit``) and the batched engine's rules for their
layers (residual blocks, batch norm in batch mode, layer norm, GELU, attention) against plain
per-net torch modules (``advdim.build``) holding the same drawn weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from advdim.simulate._engine import (
    Scheme,
    Stack,
    draw_stack,
    input_gradients,
    sample_norms,
    slots,
    stack_modules,
)

from advdim.arch import (
    BatchNorm,
    BNMode,
    Conv,
    Dense,
    Family,
    Flatten,
    Padding,
    ReLU,
    Residual,
    Spec,
    family,
    parse_family,
    sample_family,
)
from advdim.build import Init, build
from advdim.errors import AdvdimError, SpecError
from advdim.gradients import Target, input_gradient

#: the block families, and the token-grid scaling of vit as a fixed member
MEMBERS = ["resnet", "bn", "ln", "vit", "vit(scaling=tokens,dim=16)"]
#: the engine's batching schemes and map layouts (UNFOLD runs NCHW only)
LAYOUTS = [(Scheme.GROUPED, False), (Scheme.GROUPED, True), (Scheme.SPLIT, True), (Scheme.UNFOLD, False)]


def _member(text: str, t: int) -> Family:
    """Random topology ``t`` of a family (seeded), or the named member itself; narrow ones only
    (float64 grouped convolutions run group by group: wide members cost seconds, and test nothing more)."""
    if "(" in text:
        return parse_family(text)
    for k in range(500):  # the first narrow member valid at both test sizes
        fam = sample_family(text, np.random.default_rng([31, t, k]))
        params = dict(fam.params)
        if fam.valid_sizes([8, 16]) == [8, 16] and params.get("channels", 8) <= 8 and params.get("dim", 16) <= 16:
            return fam
    raise AssertionError(f"no narrow {text} member valid at sizes 8 and 16")


def _modules_from_stack(stack: Stack, dtype: torch.dtype = torch.float64) -> list[torch.nn.Module]:
    """Per-net torch modules (``advdim.build.build``) holding the stack's weights: its Conv2d / Linear
    modules, in module order, take the weighted slots in order."""
    nets = []
    for r in range(stack.nets):
        net = build(stack.spec, seed=0, dtype=dtype)
        mods = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        filled = [(w, b) for w, b in zip(stack.weights, stack.biases) if w is not None]
        assert len(mods) == len(filled)
        with torch.no_grad():
            for m, (w, b) in zip(mods, filled):
                m.weight.copy_(w[r])
                if m.bias is not None:
                    assert b is not None
                    m.bias.copy_(b[r])
        nets.append(net)
    return nets


@pytest.mark.parametrize("text", MEMBERS)
@pytest.mark.parametrize("size", [8, 16])
def test_engine_equals_per_net_modules(text: str, size: int) -> None:
    """float64: for every scheme (and both layouts of GROUPED), each net's d_x f_k and d_x L from the
    batched engine equal autograd through that net's own torch modules (same weights, drawn by
    draw_stack), to 1e-10 relative to the largest coordinate (the difference is summation order only)."""
    spec = _member(text, size).spec(size)  # a different random topology at each size
    stack = draw_stack(spec, 3, torch.Generator().manual_seed(size), dtype=torch.float64)
    nets = _modules_from_stack(stack)
    gen = torch.Generator().manual_seed(size + 1)
    x = torch.randn(4, 3, *spec.input_shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, spec.n_classes, (4, 3), generator=gen)
    refs = {target: torch.stack([input_gradient(net, x[:, r], target, 1, labels[:, r])
                                 for r, net in enumerate(nets)], dim=1) for target in Target}
    for scheme, channels_last in LAYOUTS:
        for target in Target:
            got = input_gradients(stack, x, target, 1, labels, scheme, channels_last)
            ref = refs[target]
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


def test_stack_modules_round_trip_and_refusals() -> None:
    """stack_modules reads back what the modules hold, slot by slot; norms away from init are refused."""
    spec = family("vit", depth=1, dim=8, heads=2).spec(8)
    stack = draw_stack(spec, 2, torch.Generator().manual_seed(0), dtype=torch.float64)
    back = stack_modules(_modules_from_stack(stack), spec)
    for a, b in zip(stack.weights + stack.biases, back.weights + back.biases):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    net = build(spec, seed=0)
    with torch.no_grad():
        next(m for m in net.modules() if isinstance(m, torch.nn.LayerNorm)).weight.mul_(2.0)
    with pytest.raises(AdvdimError, match="at initialisation"):
        stack_modules([net], spec)
    with pytest.raises(AdvdimError, match="conv/linear layers"):
        stack_modules([build(family("vit", depth=2, dim=8, heads=2).spec(8), seed=0)], spec)


def _first_net(stack: Stack) -> Stack:
    first = lambda ts: tuple(None if t is None else t[:1] for t in ts)  # noqa: E731
    return Stack(stack.spec, first(stack.weights), first(stack.biases))


def _frozen_statistics_gradient(stack: Stack, x: torch.Tensor) -> torch.Tensor:
    """d f_0 / d x of net 0 with its batch statistics held constant: the gradient without the
    cross-sample terms (the batch norm modules' outputs recomputed with detached mean and variance)."""
    (net,) = _modules_from_stack(_first_net(stack))

    def frozen(module: torch.nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
        (h,) = inputs
        var, mean = torch.var_mean(h, dim=(0, 2, 3), correction=0, keepdim=True)
        return (h - mean.detach()) * torch.rsqrt(var.detach() + 1e-5)

    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.register_forward_hook(frozen)
    return input_gradient(net, x, Target.LOGIT, 0)


def test_batch_norm_gradient_has_the_cross_sample_terms() -> None:
    """Batch mode: the engine's gradient is that of sum_b f_0(x_b; batch) w.r.t. each x_b (autograd
    through the whole batch), and it differs from the gradient with frozen batch statistics by far
    more than rounding: the cross-sample terms are there.  Batches of one are refused."""
    spec = family("bn", channels=4, final=2).spec(8)
    stack = draw_stack(spec, 2, torch.Generator().manual_seed(1), dtype=torch.float64)
    x = torch.randn(5, 2, *spec.input_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got = input_gradients(stack, x)[:, 0]
    (net,) = _modules_from_stack(_first_net(stack))
    whole = input_gradient(net, x[:, 0], Target.LOGIT, 0)
    torch.testing.assert_close(got, whole, rtol=0, atol=1e-10 * float(whole.abs().max()))
    frozen = _frozen_statistics_gradient(stack, x[:, 0])
    assert float((got - frozen).abs().max()) > 1e-3 * float(got.abs().max())
    # the batch's own sum: one input's gradient moves when another input of its batch changes
    x2 = x.clone()
    x2[1, 0] += 1.0
    assert float((input_gradients(stack, x2)[0, 0] - got[0]).abs().max()) > 1e-6
    with pytest.raises(AdvdimError, match="at least 2 inputs per net, got 1"):
        input_gradients(stack, x[:1])
    with pytest.raises(AdvdimError, match="at least 2 inputs per net"):
        sample_norms(spec, nets=2, inputs=1)
    running = family("bn", channels=4, final=2, mode="running").spec(8)
    assert sample_norms(running, nets=2, inputs=1)["2"].shape == (2, 1)  # eval mode: no batch needed


def test_flat_batch_norm_and_nested_blocks() -> None:
    """Rules off the families' paths: batch norm on flat features inside a dense residual branch, a
    projection on a map, a ReLU right after an add: equal to the per-net modules (float64)."""
    spec = Spec((2, 4, 4), (Conv(4), Residual((BatchNorm(BNMode.BATCH), ReLU(), Conv(6, 3, 2)), 0.7), ReLU(),
                            Flatten(), Residual((Dense(8), BatchNorm(BNMode.BATCH), ReLU(), Dense(5)), 0.3),
                            Dense(3)))
    assert [type(u).__name__ for u in slots(spec.layers, spec.input_shape)] == [
        "Conv", "NoneType", "NoneType", "Conv", "Conv", "NoneType", "NoneType", "Dense", "NoneType", "NoneType",
        "Dense", "Dense", "Dense"]
    stack = draw_stack(spec, 3, torch.Generator().manual_seed(4), dtype=torch.float64)
    nets = _modules_from_stack(stack)
    x = torch.randn(4, 3, *spec.input_shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for scheme, channels_last in LAYOUTS:
        got = input_gradients(stack, x, Target.LOGIT, 2, scheme=scheme, channels_last=channels_last)
        for r, net in enumerate(nets):
            ref = input_gradient(net, x[:, r], Target.LOGIT, 2)
            torch.testing.assert_close(got[:, r], ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


def _fan_ins(spec: Spec) -> list[int | None]:
    out: list[int | None] = []
    for unit, w in zip(slots(spec.layers, spec.input_shape), draw_stack(spec, 1, torch.Generator()).weights):
        out.append(None if unit is None or w is None else int(w[0, 0].numel()))
    return out


@pytest.mark.parametrize("text", ["resnet(channels=8,blocks=1)", "vit(dim=16,depth=1,heads=2,mlp=2)"])
def test_draws_have_the_stated_variances(text: str) -> None:
    """He: every weighted slot (convs, 1x1 projections, the four attention projections, the MLP's 1x1
    convs) has Var w = 2/fan_in and zero biases.  Each slot's mean square over n entries is within 5
    standard errors sqrt(2/n) of 2/fan_in (chi-square with n dof; false failure < 1e-6 per slot)."""
    spec = parse_family(text).spec(16)
    stack = draw_stack(spec, 40, torch.Generator().manual_seed(3), dtype=torch.float64)
    units = slots(spec.layers, spec.input_shape)
    kinds = set()
    for unit, w, b, fan_in in zip(units, stack.weights, stack.biases, _fan_ins(spec)):
        if unit is None:
            assert w is None and b is None
            continue
        assert w is not None and fan_in is not None
        ratio = float((w**2).mean()) / (2.0 / fan_in)
        assert abs(ratio - 1) < 5 * math.sqrt(2 / w.numel()), (unit, ratio)
        assert b is None or not b.any()
        kinds.add((type(unit).__name__, unit.kernel if isinstance(unit, Conv) else 0))
    assert ("Conv", 1) in kinds and (("Dense", 0) in kinds)  # projections (1x1) and attention / head


def test_torch_init_draws_attention_like_build() -> None:
    """PyTorch's default law on attention projections: uniform on [-1/sqrt(D), 1/sqrt(D)], biases too,
    as build's nn.Linear q, k, v, o (bounded; variance b^2/3 within 5 standard errors, Var(U^2)/E^2 = 0.8)."""
    spec = family("vit", dim=16, depth=1, heads=2).spec(8)
    stack = draw_stack(spec, 50, torch.Generator().manual_seed(6), Init.TORCH, dtype=torch.float64)
    units = slots(spec.layers, spec.input_shape)
    i = next(k for k, u in enumerate(units) if isinstance(u, Dense))  # the query projection
    w, b = stack.weights[i], stack.biases[i]
    assert w is not None and b is not None and w.shape == (50, 16, 16)
    bound = 1 / math.sqrt(16)
    assert float(w.abs().max()) <= bound and float(b.abs().max()) <= bound and float(b.abs().max()) > 0
    assert abs(float((w**2).mean()) / (bound**2 / 3) - 1) < 5 * math.sqrt(0.8 / w.numel())


def test_families_text_sizes_and_errors() -> None:
    """Members round-trip through their text; sizes follow each rule; bad parameters name themselves."""
    for name in ("resnet", "bn", "ln", "vit"):
        for seed in range(5):
            fam = sample_family(name, seed)
            assert parse_family(fam.to_text()) == fam
        assert sample_family(name, 3) == sample_family(name, 3)
    assert family("resnet", final=2).valid_sizes(range(1, 20)) == [2, 4, 8, 16]
    assert family("vit", side=4).valid_sizes(range(1, 20)) == [4, 8, 12, 16]
    tokens = family("vit", scaling="tokens", side=4)
    assert tokens.spec(32).layers[0] == Conv(32, 8, 8, padding=Padding.VALID)  # patch 32/4
    assert tokens.spec(32).shapes()[1] == tokens.spec(16).shapes()[1][:1] + (4, 4)  # 4x4 tokens at every size
    resnet = family("resnet", blocks=2, final=4).spec(16)
    assert sum(isinstance(layer, Residual) for layer in resnet.layers) == 2 * 3  # 2 halvings x (1 + blocks)
    assert parse_family("resnet(scale=0.25)").get("scale") == 0.25
    assert family("resnet", scale=1).get("scale") == 1.0 and isinstance(family("resnet", scale=1).get("scale"), float)
    for bad, message in [
        (lambda: family("vit", side=3).spec(8), "not a multiple of the patch side 3"),
        (lambda: family("vit", dim=10, heads=4).spec(8), "4 heads do not divide dim 10"),
        (lambda: family("resnet", scale=-1.0).spec(8), "scale must be a positive finite number"),
        (lambda: family("resnet", blocks=-1).spec(8), "blocks must be a non-negative integer"),
        (lambda: parse_family("resnet(scale=big)"), "scale must be a finite number"),
        (lambda: parse_family("vit(scaling=pixels)"), "unknown vit scaling 'pixels'"),
        (lambda: parse_family("vit(activation=tanh)"), "unknown activation 'tanh'"),
        (lambda: family("resnet", scale="x"), "scale must be a number"),
    ]:
        with pytest.raises(SpecError, match=message):
            bad()


@pytest.mark.parametrize("text", MEMBERS)
def test_study_runs_the_block_families(text: str) -> None:
    """End to end: study() over random topologies of every block family and the token-scaled vit member."""
    from advdim.simulate import study

    res = study(text, sizes=(8, 16), nets=2, draws=2, inputs=2, seed=0, progress=False, with_theory=False)
    for key in ("1", "2", "inf"):
        assert math.isfinite(res.q[key].measured_slope)
    assert all(v > 0 for v in res.sq_measured)


#: the layers of library code (issue 20): overlapping max pooling, a batch norm after the projection, scale(a)
LIBRARY_SPECS = [
    "3x16x16 > conv(8,pad=zeros) > batchnorm > relu > maxpool(3,s=2,pad=1) > res(conv(8,pad=zeros) > relu > "
    "conv(8,pad=zeros)) > relu > globalavgpool > dense(10)",
    "3x16x16 > conv(8,pad=zeros) > relu > maxpool(3,s=2,pad=1) > flatten > dense(10)",
    "3x16x16 > conv(8,pad=zeros) > relu > res(conv(16,s=2,pad=zeros) > relu > conv(16,pad=zeros),projbn=true) > "
    "relu > scale(1.7) > globalavgpool > dense(10) > scale(0.3)",
]


@pytest.mark.parametrize("text", LIBRARY_SPECS)
def test_engine_equals_per_net_modules_on_library_layers(text: str) -> None:
    """The same check as above on the layers torchvision's ResNets need: the engine pools with the
    spec's stride and padding, scales, and divides the projected skip by its batch norm's sqrt(1 + eps)."""
    from advdim.arch import parse

    spec = parse(text)
    stack = draw_stack(spec, 3, torch.Generator().manual_seed(5), dtype=torch.float64)
    nets = _modules_from_stack(stack)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 3, *spec.input_shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, spec.n_classes, (4, 3), generator=gen)
    for target in Target:
        ref = torch.stack([input_gradient(net, x[:, r], target, 1, labels[:, r]) for r, net in enumerate(nets)], dim=1)
        for scheme, channels_last in LAYOUTS:
            got = input_gradients(stack, x, target, 1, labels, scheme, channels_last)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
