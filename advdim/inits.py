"""Initialisation schemes as an enum, without torch (the theory reads the variances too)."""

from __future__ import annotations

from advdim.choice import Choice


class Init(Choice):
    """Weight initialisation schemes."""

    HE = "he"  # N(0, 2/fan_in), biases 0 (the paper's H3)
    TORCH = "torch"  # PyTorch's default (Kaiming-uniform with a = sqrt(5))
    GLOROT = "glorot"  # N(0, 2/(fan_in + fan_out)), biases 0
    LECUN = "lecun"  # N(0, 1/fan_in), biases 0
    ORTHOGONAL = "orthogonal"  # (semi-)orthogonal rows scaled by sqrt(2), biases 0

    @classmethod
    def noun(cls) -> str:
        return "init scheme"

    def weight_variance(self, fan_in: int, fan_out: int, rows: int | None = None) -> float:
        """Per-weight variance of the scheme.

        ``fan_out`` follows PyTorch (``C_out * k**2`` for a conv).  Orthogonal init draws a
        (semi-)orthogonal ``rows x fan_in`` matrix (``rows = C_out``), scaled by sqrt(2): each entry
        has variance ``2 / max(rows, fan_in)``; ``rows`` defaults to ``fan_out``.
        """
        if self is Init.HE:
            return 2.0 / fan_in
        if self is Init.LECUN:
            return 1.0 / fan_in
        if self is Init.GLOROT:
            return 2.0 / (fan_in + fan_out)
        if self is Init.TORCH:
            return 1.0 / (3.0 * fan_in)  # uniform(-b, b), b = 1/sqrt(fan_in): b^2/3
        return 2.0 / max(fan_in, fan_out if rows is None else rows)  # orthogonal, gain sqrt(2)


#: the fixed standard deviations of the initialisers that ignore the fans (timm's ``trunc_normal_(std=0.02)``,
#: torchvision's ``normal_(0, 0.01)`` heads, ...), tried in this order
FIXED_STDS = (0.02, 0.01, 0.001)


class WeightLaw(Choice):
    """The law of one layer's weights, as the initialisers of PyTorch, torchvision and timm draw them.

    Each names a zero-mean i.i.d. law (or orthogonal rows) whose variance is a function of the layer's
    fans (``fan_out = C_out k^2`` for a conv, as PyTorch counts it) and of one parameter (the gain of
    an orthogonal layer, the std of a fixed normal, the variance of an estimated layer)::

        >>> WeightLaw.HE_FAN_OUT.variance(fan_in=16 * 9, fan_out=32 * 9, rows=32)  # 2 / fan_out
        0.006944444444444444
        >>> WeightLaw.FIXED_NORMAL.variance(768, 2304, 2304, 0.02) == 0.02**2
        True
    """

    HE = "he"  # kaiming_normal_(nonlinearity="relu"): N(0, 2/fan_in)
    HE_FAN_OUT = "he_fan_out"  # kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out)
    HE_UNIFORM = "he_uniform"  # kaiming_uniform_(nonlinearity="relu"): U(-b, b), b = sqrt(6/fan_in)
    TORCH = "torch"  # nn.Conv2d / nn.Linear's own: U(-b, b), b = 1/sqrt(fan_in)
    LECUN = "lecun"  # N(0, 1/fan_in)
    GLOROT = "glorot"  # xavier_normal_: N(0, 2/(fan_in + fan_out))
    XAVIER_UNIFORM = "xavier_uniform"  # xavier_uniform_: U(-b, b), b = sqrt(6/(fan_in + fan_out))
    UNIFORM_FAN_OUT = "uniform_fan_out"  # U(-b, b), b = 1/sqrt(fan_out): torchvision's EfficientNet heads
    LECUN_TRUNCATED = "lecun_truncated"  # timm's lecun_normal_: N(0, s^2) cut at +-2s, variance 1/fan_in
    ORTHOGONAL = "orthogonal"  # orthogonal_(gain=g): entries of variance g^2 / max(rows, fan_in)
    FIXED_NORMAL = "fixed_normal"  # normal_ / trunc_normal_(std=s), s not a function of the fans
    ESTIMATED = "estimated"  # none of the above: the variance measured on the draws

    @classmethod
    def noun(cls) -> str:
        return "weight law"

    @classmethod
    def aliases(cls) -> dict[str, str]:
        return {m.value.replace("_", "-"): m.value for m in cls if "_" in m.value}

    @property
    def uniform(self) -> bool:
        return self in (WeightLaw.HE_UNIFORM, WeightLaw.TORCH, WeightLaw.XAVIER_UNIFORM, WeightLaw.UNIFORM_FAN_OUT)

    @property
    def bounded(self) -> bool:
        """Uniform, or a normal cut at two of its (pre-cut) standard deviations."""
        return self.uniform or self is WeightLaw.LECUN_TRUNCATED

    @property
    def gaussian(self) -> bool:
        return self in (WeightLaw.HE, WeightLaw.HE_FAN_OUT, WeightLaw.LECUN, WeightLaw.GLOROT, WeightLaw.FIXED_NORMAL)

    def variance(self, fan_in: int, fan_out: int, rows: int, param: float | None = None) -> float:
        """``E[w^2]`` of one weight; ``param``: the gain (orthogonal), the std (fixed normal) or the variance
        (estimated)."""
        if self is WeightLaw.HE_FAN_OUT:
            return 2.0 / fan_out
        if self is WeightLaw.HE_UNIFORM:
            return 2.0 / fan_in
        if self is WeightLaw.XAVIER_UNIFORM:
            return 2.0 / (fan_in + fan_out)
        if self is WeightLaw.UNIFORM_FAN_OUT:
            return 1.0 / (3.0 * fan_out)
        if self is WeightLaw.LECUN_TRUNCATED:
            return 1.0 / fan_in
        if self in (WeightLaw.ORTHOGONAL, WeightLaw.FIXED_NORMAL, WeightLaw.ESTIMATED):
            if param is None:
                raise ValueError(f"the {self.value} law needs its parameter")
            if self is WeightLaw.ORTHOGONAL:
                return param**2 / max(rows, fan_in)
            return param**2 if self is WeightLaw.FIXED_NORMAL else param
        return Init(self.value).weight_variance(fan_in, fan_out, rows)

    def scheme(self, param: float | None = None) -> Init | None:
        """The whole-network scheme of :class:`Init` this law is on every layer (None: none is):
        orthogonal only with gain sqrt(2)."""
        if self is WeightLaw.ORTHOGONAL:
            return Init.ORTHOGONAL if param is not None and abs(param**2 / 2 - 1) <= 1e-4 else None
        return Init(self.value) if self.value in {i.value for i in Init} else None

    def text(self, param: float | None = None) -> str:
        """``he_fan_out``, ``orthogonal(gain=1)``, ``fixed_normal(std=0.02)``, ``estimated``."""
        if self is WeightLaw.ORTHOGONAL and param is not None:
            return f"orthogonal(gain={param:.4g})"
        if self is WeightLaw.FIXED_NORMAL and param is not None:
            return f"fixed_normal(std={param:g})"
        return self.value
