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
