"""The models researchers bring, built by their own libraries: factories for ``advdim measure``.

Each factory takes ``input_shape=(C, H, W)`` and returns a freshly initialised model of
``torchvision`` or ``timm`` at a small configuration (10 classes, no pretrained weights: nothing
is downloaded), so that every size and seeded draw is a new independent model -- the per-size
setting of :mod:`advdim.measure`::

    advdim measure advdim.zoo:tv_resnet18 --input-shape 3,32,32

Models whose architecture depends on the input size (positional embeddings, token-mixing MLPs)
are built for that size (``image_size`` / ``img_size``), as a user training at that size would.
The libraries are an optional extra (``pip install 'advdim[zoo]'``; ``make install-zoo`` puts them
in a second virtual environment with a matching torch): without them a factory fails with a
one-line error.  :data:`ZOO` lists the models of the zoo table (``docs/zoo.md``, written by
``scripts/zoo_table.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from advdim.errors import AdvdimError

#: classes of every zoo model's head
CLASSES = 10


def _library(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as e:
        raise AdvdimError(f"the zoo needs {name} ({e}): pip install 'advdim[zoo]', or make install-zoo "
                          "for a second venv with a torch that matches") from None


def _side(input_shape: tuple[int, int, int]) -> int:
    c, h, w = (int(n) for n in input_shape)
    if h != w:
        raise AdvdimError(f"the zoo models take square images, got {h}x{w}")
    if c != 3:
        raise AdvdimError(f"the zoo models take 3 channels, got {c}")
    return h


def resnet_init(net: nn.Module) -> nn.Module:
    """``net`` initialised as ``torchvision.models.ResNet.__init__`` does: ``kaiming_normal_(mode="fan_out")``
    on every conv, batch norms weight 1 and bias 0, the rest (``nn.Linear``) left at PyTorch's default."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return net


def resnet_variance(step: Any) -> float:
    """The per-weight variance of :func:`resnet_init` on one weight step of a spec (``theory._graph.Step``):
    He fan_out on convs, PyTorch's default on dense layers (``advdim.inits.WeightLaw``)."""
    from advdim.arch import Conv
    from advdim.inits import WeightLaw

    law = WeightLaw.HE_FAN_OUT if isinstance(step.layer, Conv) else WeightLaw.TORCH
    return law.variance(*step.fans)


def _tv(name: str) -> Callable[..., nn.Module]:
    def factory(input_shape: tuple[int, int, int]) -> nn.Module:
        _side(input_shape)
        tv = _library("torchvision")
        return getattr(tv.models, name)(weights=None, num_classes=CLASSES)

    factory.__name__ = factory.__qualname__ = f"tv_{name}"
    factory.__doc__ = f"torchvision.models.{name}(weights=None, num_classes={CLASSES})"
    return factory


def _timm(name: str, sized: bool) -> Callable[..., nn.Module]:
    def factory(input_shape: tuple[int, int, int]) -> nn.Module:
        side = _side(input_shape)
        timm = _library("timm")
        extra = {"img_size": side} if sized else {}
        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **extra)

    factory.__name__ = factory.__qualname__ = f"timm_{name}"
    factory.__doc__ = (f"timm.create_model({name!r}, pretrained=False, num_classes={CLASSES}"
                       + (", img_size=H)" if sized else ")"))
    return factory


tv_resnet18 = _tv("resnet18")
tv_resnet50 = _tv("resnet50")
tv_vgg11_bn = _tv("vgg11_bn")
tv_mobilenet_v3_small = _tv("mobilenet_v3_small")
tv_densenet121 = _tv("densenet121")
tv_efficientnet_b0 = _tv("efficientnet_b0")
tv_convnext_tiny = _tv("convnext_tiny")
tv_swin_t = _tv("swin_t")


def tv_vit_small(input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision's ``VisionTransformer`` (the class of ``vit_b_16``) at a small configuration:
    patch 8, 2 layers, 2 heads, width 64, MLP 128, built for the input side (``image_size``)."""
    side = _side(input_shape)
    tv = _library("torchvision")
    return tv.models.VisionTransformer(image_size=side, patch_size=8, num_layers=2, num_heads=2,
                                       hidden_dim=64, mlp_dim=128, num_classes=CLASSES)


def _redraw_head(model: nn.Module, path: str) -> nn.Module:
    """The model with its zero-initialised classifier ``path`` re-drawn by PyTorch's default
    (``reset_parameters``): a zero head makes the input gradient identically 0 at initialisation."""
    head = model.get_submodule(path)
    if not isinstance(head, nn.Linear):
        raise AdvdimError(f"{type(model).__name__}.{path} is a {type(head).__name__}, not the expected nn.Linear head")
    head.reset_parameters()
    return model


def tv_vit_small_drawn_head(input_shape: tuple[int, int, int]) -> nn.Module:
    """:func:`tv_vit_small` with its head (zero-initialised by torchvision) re-drawn by PyTorch's default."""
    return _redraw_head(tv_vit_small(input_shape), "heads.head")


timm_vit_tiny_patch16_224 = _timm("vit_tiny_patch16_224", sized=True)
timm_deit_tiny_patch16_224 = _timm("deit_tiny_patch16_224", sized=True)
timm_resnet18 = _timm("resnet18", sized=False)
timm_convnext_atto = _timm("convnext_atto", sized=False)
timm_mixer_s16_224 = _timm("mixer_s16_224", sized=True)


def timm_mixer_s16_224_drawn_head(input_shape: tuple[int, int, int]) -> nn.Module:
    """``mixer_s16_224`` with its head (zero-initialised by timm) re-drawn by PyTorch's default."""
    return _redraw_head(timm_mixer_s16_224(input_shape), "head")


@dataclass(frozen=True)
class ZooModel:
    """One row of the zoo table: the factory (``advdim.zoo:NAME``), its library and what it builds."""

    name: str
    library: str
    factory: Callable[..., nn.Module]

    @property
    def target(self) -> str:
        return f"advdim.zoo:{self.name}"

    @property
    def builds(self) -> str:
        return (self.factory.__doc__ or "").strip().splitlines()[0]


#: the models of issue 20's zoo table, in its order
ZOO: tuple[ZooModel, ...] = tuple(
    ZooModel(f.__name__, lib, f) for lib, f in [
        ("torchvision", tv_resnet18), ("torchvision", tv_resnet50), ("torchvision", tv_vgg11_bn),
        ("torchvision", tv_mobilenet_v3_small), ("torchvision", tv_densenet121), ("torchvision", tv_efficientnet_b0),
        ("torchvision", tv_convnext_tiny), ("torchvision", tv_vit_small), ("torchvision", tv_vit_small_drawn_head),
        ("torchvision", tv_swin_t),
        ("timm", timm_vit_tiny_patch16_224), ("timm", timm_deit_tiny_patch16_224), ("timm", timm_resnet18),
        ("timm", timm_convnext_atto), ("timm", timm_mixer_s16_224), ("timm", timm_mixer_s16_224_drawn_head),
    ])
