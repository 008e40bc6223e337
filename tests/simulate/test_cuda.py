"""The engine and the study on a CUDA GPU: the same numbers as on the CPU (skipped without a GPU).

Weights and Gaussian inputs are drawn on the CPU from the cell's seed and moved, so a cell's
nets and inputs are the same on both devices: only float rounding may differ.  The engine turns
TF32 off (``ieee_float32``), so float32 on the GPU is IEEE float32 and 1e-5 holds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from advdim.simulate import study
from advdim.simulate._engine import Scheme, Stack, draw_stack, input_gradients, sample_norms
from scipy import stats

from advdim.arch import family, sample_family
from advdim.gradients import Target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

FAMILIES = ["dense", "strided", "avgpool", "maxpool", "gap"]
KS_ALPHA = 1e-3  # level of the two-sample test (fixed seed: deterministic)


def _to(stack: Stack, device: str) -> Stack:
    move = lambda ts: tuple(None if t is None else t.to(device) for t in ts)  # noqa: E731
    return Stack(stack.spec, move(stack.weights), move(stack.biases))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("scheme", [Scheme.GROUPED, Scheme.SPLIT, Scheme.UNFOLD])
def test_cuda_gradients_equal_cpu_float64(name: str, scheme: Scheme) -> None:
    """float64: every coordinate of d_x f and d_x L equals the CPU's to 1e-10 (relative to the largest)."""
    for t in range(2):
        spec = sample_family(name, np.random.default_rng([11, t])).spec(16)
        stack = draw_stack(spec, 3, torch.Generator().manual_seed(t), dtype=torch.float64)
        gen = torch.Generator().manual_seed(100 + t)
        x = torch.randn(4, 3, *spec.input_shape, generator=gen, dtype=torch.float64)
        labels = torch.randint(0, spec.n_classes, (4, 3), generator=gen)
        for target in Target:
            ref = input_gradients(stack, x, target, 1, labels, scheme)
            got = input_gradients(_to(stack, "cuda"), x.cuda(), target, 1, labels.cuda(), scheme).cpu()
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))


@pytest.mark.parametrize("name", ["strided", "avgpool", "maxpool", "gap"])
def test_cuda_cell_equals_cpu_cell_float32(name: str) -> None:
    """One simulation cell (same seed) on both devices: the four norms agree to 1e-5 (IEEE float32, no TF32)."""
    spec = family(name).spec(16)
    cpu = sample_norms(spec, 6, 4, seed=3, device="cpu")
    gpu = sample_norms(spec, 6, 4, seed=3, device="cuda")
    for key in ("1", "2", "inf", "sq2"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=1e-5, atol=0)


def test_cuda_dense_shortcut_equal_in_distribution() -> None:
    """The dense shortcut drawn on the GPU against the plain engine on the CPU: KS test at KS_ALPHA."""
    spec = family("dense", widths=(64, 16)).spec(8)
    fast = sample_norms(spec, 3000, 1, seed=1, device="cuda", exact_shortcuts=True, dtype=torch.float64)
    plain = sample_norms(spec, 3000, 1, seed=2, device="cpu", exact_shortcuts=False, dtype=torch.float64)
    for key in ("1", "2", "inf"):
        assert stats.ks_2samp(fast[key].ravel(), plain[key].ravel()).pvalue > KS_ALPHA


def test_cuda_study_equals_cpu_study() -> None:
    """A whole (small) study: the same slopes on both devices, to 1e-4 (the cells differ by float rounding)."""
    kw = dict(sizes=(8, 16), nets=12, draws=2, inputs=2, seed=4, progress=False, with_theory=False)
    cpu = study("strided", device="cpu", **kw)  # type: ignore[arg-type]
    gpu = study("strided", device="cuda", **kw)  # type: ignore[arg-type]
    for key in ("1", "2", "inf"):
        a, b = cpu.q[key].measured_slope, gpu.q[key].measured_slope
        assert math.isfinite(a) and abs(a - b) < 1e-4
