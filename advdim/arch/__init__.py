"""Architecture specs: frozen layer records, whole-network specs and families.

A :class:`Spec` is an input shape ``(C, H, W)`` and a tuple of layers.  It is the single
description of a network that the theory (``advdim.theory``), the Monte Carlo engine
(``advdim.simulate``) and training (``advdim.empirical``) all read.  A :class:`Family` maps an
input side ``s`` (and a channel count) to a :class:`Spec`, so that ``d = C * s**2`` can vary
while the topology rule stays fixed.

Specs have a one-line text form that round-trips::

    >>> spec = parse("3x8x8 > conv(4,k=3,s=2,pad=circular) > relu > flatten > dense(10)")
    >>> spec.shapes()[-1]
    (10,)
    >>> parse(format_spec(spec)) == spec
    True

Every inconsistency is a :class:`SpecError` whose one-line message names the layer at fault.
"""

from advdim.arch.families import (
    BEYOND_FAMILIES,
    FAMILIES,
    PAPER_FAMILIES,
    Family,
    FamilyType,
    family,
    parse_family,
    resolve,
    sample_family,
    shapes_of,
)
from advdim.arch.grammar import parse
from advdim.arch.layers import (
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
from advdim.arch.targets import (
    Target,
    TargetKind,
    load_object,
    register_family,
    resolve_target,
    unregister_family,
)
from advdim.arch.text import format_layer, format_spec

__all__ = [
    "FAMILIES", "AvgPool", "BatchNorm", "Conv", "Dense", "Family", "FamilyType", "Flatten", "GlobalAvgPool",
    "GlobalMaxPool", "Layer", "MaxPool", "Padding", "ReLU", "Shape", "Spec", "family", "format_layer", "format_spec",
    "parse", "parse_family", "resolve", "sample_family", "shapes_of", "Target", "TargetKind", "load_object",
    "register_family", "resolve_target", "unregister_family", "GELU", "Attention", "BNMode", "LayerNorm", "Residual",
    "Scale", "BEYOND_FAMILIES", "PAPER_FAMILIES",
]
