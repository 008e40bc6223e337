"""``advdim.trace`` on the modules and models of torchvision and timm, as their libraries build them
(issue 20).  Runs in the zoo venv (``make test``'s second pytest run).

Each model is traced once; its obstacles are compared with a list derived independently from the
library's own module tree (every ``Hardswish``, every depthwise conv, every squeeze-excite module,
...), so a missed obstacle or a spurious one fails.  A model that maps is compared with its spec
text, and its logits with those of the spec's network carrying the model's weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import timm
import torch
import torchvision
from timm.layers import DropPath
from timm.layers import LayerNorm2d as TimmLayerNorm2d
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.convnext import LayerNorm2d as TvLayerNorm2d
from torchvision.models.densenet import _DenseBlock, _DenseLayer
from torchvision.models.swin_transformer import PatchMerging, ShiftedWindowAttention
from torchvision.ops import Permute, SqueezeExcitation, StochasticDepth
from torchvision.ops.misc import Conv2dNormActivation

from advdim.arch import BatchNorm, Residual, Spec, parse
from advdim.build import build
from advdim.trace import ObstacleKind, Traced, Untraceable, trace, trace_module

K = ObstacleKind
SHAPE = (3, 32, 32)
#: seconds a trace of one zoo model may take (0.2 - 2.5 s measured on a shared 2-core machine)
TRACE_SECONDS = 10.0

Expected = list[tuple[str, ObstacleKind]]


def _timm(name: str, **kw: object) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=32, mlp_dim=64, num_classes=10)


def _named(model: nn.Module, *classes: type) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, classes)]


def _depthwise(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


def _mobilenet(m: nn.Module) -> Expected:
    return ([(p, K.MODULE) for p in _named(m, nn.Hardswish, nn.Hardsigmoid)]
            + [(p, K.SETTING) for p in _depthwise(m)] + [(p, K.TOPOLOGY) for p in _named(m, SqueezeExcitation)])


def _efficientnet(m: nn.Module) -> Expected:
    return ([(p, K.MODULE) for p in _named(m, nn.SiLU, nn.Sigmoid)]
            + [(p, K.SETTING) for p in _depthwise(m)] + [(p, K.TOPOLOGY) for p in _named(m, SqueezeExcitation)])


def _densenet(m: nn.Module) -> Expected:
    """Every dense layer but each block's first (it concatenates its one input) and every block's end."""
    return [(p, K.TOPOLOGY) for p in _named(m, _DenseLayer, _DenseBlock) if not p.endswith(".denselayer1")]


def _convnext(m: nn.Module) -> Expected:
    """The channels-last MLP of each block (``Permute > LayerNorm > Linear > GELU > Linear > Permute``)
    maps onto channel layernorm and 1x1 convs, the layer scale (1e-6 for every channel at init) onto
    the block's scale: the norms' eps 1e-6 and the depthwise convs remain."""
    return [(p, K.SETTING) for p in _named(m, nn.LayerNorm) + _depthwise(m)]


def _tv_vit_expected(m: nn.Module) -> Expected:
    layers = [p for p in _named(m, torchvision.models.vision_transformer.EncoderBlock)]
    return ([("", K.OPERATION)] * 2 + [("", K.PARAMETER), ("encoder", K.PARAMETER), ("encoder.ln", K.SETTING)]
            + [(f"{p}.{s}", K.SETTING) for p in layers for s in ("ln_1", "ln_2", "mlp.0", "mlp.3")]
            + [(f"{p}.self_attention", K.MODULE) for p in layers])


def _swin(m: nn.Module) -> Expected:
    attention = _named(m, ShiftedWindowAttention)
    linears = [p for p in _named(m, nn.Linear) if p != "head" and not any(p.startswith(f"{a}.") for a in attention)]
    return ([(p, K.SETTING) for p in _named(m, nn.LayerNorm) + linears]
            + [(p, K.MODULE) for p in attention]
            + [(p, K.OPERATION) for p in _named(m, Permute, PatchMerging)])


def _timm_vit(m: nn.Module) -> Expected:
    blocks = [f"blocks.{i}" for i in range(len(m.blocks))]
    return ([("patch_embed", K.OPERATION)] + [("", K.PARAMETER)] * 2 + [("norm", K.SETTING), ("", K.OPERATION)]
            + [(f"{b}.{s}", K.SETTING) for b in blocks for s in ("norm1", "norm2", "mlp.fc1", "mlp.fc2")]
            + [(f"{b}.attn", K.MODULE) for b in blocks])


def _mixer(m: nn.Module) -> Expected:
    blocks = [f"blocks.{i}" for i in range(len(m.blocks))]
    return ([("stem", K.OPERATION), ("norm", K.SETTING), ("", K.OPERATION)]
            + [(b, K.OPERATION) for b in blocks for _ in range(2)]
            + [(f"{b}.{s}", K.SETTING) for b in blocks for s in ("norm1", "norm2", "mlp_tokens.fc1", "mlp_tokens.fc2",
                                                                 "mlp_channels.fc1", "mlp_channels.fc2")])


#: name -> (the model at a small configuration, its obstacles from its module tree; None: it maps)
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], Expected] | None]] = {
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), None),
    "tv_resnet50": (lambda: torchvision.models.resnet50(num_classes=10), None),
    "tv_vgg11_bn": (lambda: torchvision.models.vgg11_bn(num_classes=10), lambda m: [("avgpool", K.SETTING)]),
    "tv_mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), _mobilenet),
    "tv_densenet121": (lambda: torchvision.models.densenet121(num_classes=10), _densenet),
    "tv_efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), _efficientnet),
    "tv_convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=10), _convnext),
    "tv_vit_b_16_small": (_tv_vit, _tv_vit_expected),
    "tv_swin_t": (lambda: torchvision.models.swin_t(num_classes=10), _swin),
    "timm_vit_tiny_patch16_224": (lambda: _timm("vit_tiny_patch16_224", img_size=32, patch_size=8), _timm_vit),
    "timm_deit_tiny_patch16_224": (lambda: _timm("deit_tiny_patch16_224", img_size=32, patch_size=8), _timm_vit),
    "timm_resnet18": (lambda: _timm("resnet18"), None),
    "timm_convnext_atto": (lambda: _timm("convnext_atto"), _convnext),
    "timm_mixer_s16_224": (lambda: _timm("mixer_s16_224", img_size=32), _mixer),
}


def _key(o: tuple[str, ObstacleKind]) -> tuple[str, str]:
    return o[0], o[1].value


@pytest.mark.parametrize("name", list(ZOO))
def test_one_trace_lists_every_obstacle_of_a_zoo_model(name: str) -> None:
    """One call names every obstacle (module path and kind), each with what would make it traceable,
    in a few seconds; the list is the one the library's module tree predicts."""
    make, expected = ZOO[name]
    torch.manual_seed(0)
    model = make()
    t0 = time.perf_counter()
    got = trace(model, SHAPE)
    seconds = time.perf_counter() - t0
    assert seconds < TRACE_SECONDS, f"{name}: {seconds:.1f} s"
    if expected is None:
        assert isinstance(got, Spec), got
        return
    assert isinstance(got, Untraceable), got
    assert sorted(((o.path, o.kind) for o in got.obstacles), key=_key) == sorted(expected(model), key=_key)
    assert all(o.what and o.fix for o in got.obstacles)
    assert "\n" not in got.reason and (len(got.obstacles) == 1 or f"and {len(got.obstacles) - 1} more" in got.reason)


def _reproduced(model: nn.Module, traced: Traced) -> None:
    """The spec's network with the model's weights gives the model's logits (eval mode, float64)."""
    model = model.double().eval()
    net = build(traced.spec, seed=0, dtype=torch.float64).eval()
    with torch.no_grad():
        for dst, name in zip([m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                             traced.weight_modules, strict=True):
            src = model.get_submodule(name)
            dst.weight.copy_(traced.weight(model, name))
            if dst.bias is not None:
                dst.bias.copy_(src.bias)
        x = torch.randn(3, *traced.spec.input_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        torch.testing.assert_close(net(x), model(x), rtol=1e-9, atol=1e-9)


def _basic(c: int, stride: int = 1) -> str:
    return f"conv({c}{',s=' + str(stride) if stride > 1 else ''},pad=zeros,bias=false) > batchnorm > relu > " \
           f"conv({c},pad=zeros,bias=false) > batchnorm"


def test_torchvision_resnet18_is_its_spec_with_post_activation_blocks_and_bn_after_the_projection() -> None:
    """BN anywhere (eval mode, at init), the 3x3 stride-2 max pool, ``relu(out + identity)`` as
    ``res(...) > relu`` and ``downsample = Sequential(conv1x1, BatchNorm2d)`` as ``projbn=true``."""
    model = torchvision.models.resnet18(num_classes=10)
    traced = trace_module(model, SHAPE)
    assert isinstance(traced, Traced), traced
    blocks = [f"res({_basic(c, s)}{',projbn=true' if s > 1 else ''}) > relu"
              for c, s in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))]
    assert traced.spec == parse(" > ".join(["3x32x32 > conv(64,7,s=2,pad=zeros,bias=false) > batchnorm > relu > "
                                            "maxpool(3,s=2,pad=1)", *blocks, "globalavgpool > dense(10)"]))
    _reproduced(model, traced)


def test_timm_resnet18_s_zero_initialised_last_batch_norms_are_residual_scales_0() -> None:
    """timm's ``zero_init_last``: each block's last batch norm has weight 0, so at initialisation (eval
    mode) the block is its skip: ``res(... > batchnorm, scale=0)``."""
    model = _timm("resnet18")
    traced = trace_module(model, SHAPE)
    assert isinstance(traced, Traced), traced
    blocks = [x for x in traced.spec.layers if isinstance(x, Residual)]
    assert len(blocks) == 8 and all(b.scale == 0.0 and isinstance(b.branch[-1], BatchNorm) for b in blocks)
    assert [b.projbn for b in blocks] == [False, False, True, False, True, False, True, False]
    _reproduced(model, traced)


def _wrapped(block: nn.Module, c_in: int, c_out: int) -> nn.Module:
    """A library block between a stem conv and a pooled head."""
    return nn.Sequential(nn.Conv2d(3, c_in, 3, padding=1), block, nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                         nn.Linear(c_out, 10))


def test_a_torchvision_bottleneck_with_its_downsample_is_a_projbn_block() -> None:
    down = nn.Sequential(tv_resnet.conv1x1(16, 32, 2), nn.BatchNorm2d(32))
    model = _wrapped(tv_resnet.Bottleneck(16, 8, stride=2, downsample=down), 16, 32)
    traced = trace_module(model, (3, 8, 8))
    assert isinstance(traced, Traced), traced
    assert traced.spec == parse(
        "3x8x8 > conv(16,pad=zeros) > res(conv(8,1,pad=zeros,bias=false) > batchnorm > relu > "
        "conv(8,s=2,pad=zeros,bias=false) > batchnorm > relu > conv(32,1,pad=zeros,bias=false) > batchnorm,"
        "projbn=true) > relu > globalavgpool > dense(10)")
    _reproduced(model, traced)


def test_stochastic_depth_drop_path_and_dropout_are_identities_in_eval_mode() -> None:
    """torchvision's ``StochasticDepth``, timm's ``DropPath``, ``Dropout`` / ``Dropout2d`` (gradients are
    measured in eval mode) and ``nn.Identity``; BN with MobileNet's eps 1e-3 is ``batchnorm > scale``."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), StochasticDepth(0.5, "row"), nn.Dropout2d(0.3),
                          nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(inplace=True), DropPath(0.2), nn.Identity(),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 10))
    traced = trace_module(model, (3, 8, 8))
    assert isinstance(traced, Traced), traced
    factor = ((1 + 1e-5) / (1 + 1e-3)) ** 0.5
    assert traced.spec == parse(f"3x8x8 > conv(8,pad=zeros) > batchnorm > scale({factor!r}) > relu > flatten > "
                                "dense(10)")
    _reproduced(model, traced)


@pytest.mark.parametrize("norm", [TvLayerNorm2d, TimmLayerNorm2d])
def test_a_layernorm2d_of_advdim_s_eps_is_advdim_s_channel_layernorm(norm: type) -> None:
    model = _wrapped(nn.Sequential(norm(8, eps=1e-5), nn.GELU()), 8, 8)
    traced = trace_module(model, (3, 4, 4))
    assert isinstance(traced, Traced), traced
    assert traced.spec == parse("3x4x4 > conv(8,pad=zeros) > layernorm > gelu > globalavgpool > dense(10)")
    _reproduced(model, traced)


def test_torchvision_s_channels_last_mlp_is_layernorm_and_1x1_convs() -> None:
    """ConvNeXt's ``Permute([0, 2, 3, 1]) > LayerNorm > Linear > GELU > Linear > Permute([0, 3, 1, 2])``
    (here with advdim's eps) in a residual block: the Linear weights are read as 1x1 convs."""
    mlp = nn.Sequential(Permute([0, 2, 3, 1]), nn.LayerNorm(8, eps=1e-5), nn.Linear(8, 32), nn.GELU(),
                        nn.Linear(32, 8), Permute([0, 3, 1, 2]), StochasticDepth(0.1, "row"))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = mlp

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.block(x)

    model = _wrapped(Block(), 8, 8)
    traced = trace_module(model, (3, 4, 4))
    assert isinstance(traced, Traced), traced
    assert traced.spec == parse("3x4x4 > conv(8,pad=zeros) > res(layernorm > conv(32,1,pad=zeros) > gelu > "
                                "conv(8,1,pad=zeros)) > globalavgpool > dense(10)")
    assert traced.as_conv == {"1.block.2", "1.block.4"}
    assert [tuple(w.shape) for w in traced.weights(model)][1:3] == [(32, 8, 1, 1), (8, 32, 1, 1)]
    _reproduced(model, traced)


def _kinds(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, ObstacleKind]]:
    got = trace(model, shape)
    assert isinstance(got, Untraceable), got
    return [(o.path, o.kind) for o in got.obstacles]


def test_library_blocks_that_do_not_map_name_each_obstacle() -> None:
    """torchvision's squeeze-excite (a product of paths, its Hardsigmoid), a depthwise
    ``Conv2dNormActivation`` with SiLU, a tanh GELU and a ``TransformerEncoderLayer``, in one model."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid),
        Conv2dNormActivation(8, 8, groups=8, activation_layer=nn.SiLU),
        nn.GELU(approximate="tanh"),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    assert _kinds(model, (3, 4, 4)) == [
        ("1.scale_activation", K.MODULE), ("1", K.TOPOLOGY), ("2.0", K.SETTING), ("2.2", K.MODULE), ("3", K.SETTING)]


class _Encoder(nn.Module):
    """Tokens through torch's own transformer layer (a whole block: one obstacle)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.patch(x).flatten(2).transpose(1, 2)).mean(1))


def test_transformer_idioms_are_named_each() -> None:
    """``flatten(2).transpose(1, 2)`` into tokens (one obstacle, named at the flatten), a
    ``TransformerEncoderLayer``, a token mean."""
    assert _kinds(_Encoder(), (3, 4, 4)) == [("", K.OPERATION), ("layer", K.MODULE), ("", K.OPERATION)]
