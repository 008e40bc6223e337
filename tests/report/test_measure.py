"""``advdim measure MODULE:FACTORY``: a user's own model, measured at several up-sampled sizes.

The factories below are the "user's models": this file is given to the command as a ``.py`` path
(and, once, as an importable module name).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from advdim.arch import family
from advdim.build import build
from advdim.cli import main
from advdim.measure import bootstrap_slopes, fit_slope, upsample

HERE = Path(__file__)


class PowerLaw(nn.Module):
    """Logits ``(+s, -s)`` with ``s = d**a * sum(x**2) / 2``: ``d_x f_0 = d**a * x``.

    Under pixel-copy up-sampling by ``k``, ``||x||_q`` grows exactly like ``k**(2/q) = (d/d0)**(1/q)``,
    so ``E||d_x f_0||_q`` is exactly proportional to ``d**(1/q + a)``: with ``a = -1/2`` the slope is
    the paper's ``1/q - 1/2`` for every input sample, so the bootstrap interval is a point.
    """

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # the inputs follow its dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[0].numel()
        s = d**self.a * (x**2).flatten(1).sum(1) / 2 + 0 * self.unused
        return torch.stack([s, -s], dim=1)


def law() -> nn.Module:
    return PowerLaw(-0.5)


def planted() -> nn.Module:
    return PowerLaw(-0.5 + 0.1)  # the gradient norm rescaled by d^0.1: a false law


def gap_net(input_shape: tuple[int, int, int]) -> nn.Module:
    """A size-agnostic He net (global average pooling head); takes ``input_shape``."""
    return build(family("gap", channels=4, final=2).spec(input_shape[1], channels=input_shape[0]), seed=3)


def dense_net() -> nn.Module:
    """A fixed-size net: it only accepts 3x4x4 inputs."""
    return build(family("dense", widths=(16,)).spec(4, channels=3), seed=3)


def nan_net() -> nn.Module:
    net = dense_net()
    with torch.no_grad():
        next(net.parameters())[0, 0] = math.nan
    return net


not_callable = 3


def not_a_module() -> str:
    return "a string"


def measure(capsys: pytest.CaptureFixture[str], target: str, *args: str) -> tuple[int, dict | str]:
    capsys.readouterr()
    rc = main(["measure", target, *args])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 and "--json" in args else cap.err.strip())


def test_exact_law_passes_and_planted_law_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--input-shape", "1,4,4", "--sizes", "1,2,4", "--inputs", "8", "--steps", "2", "--json")
    rc, res = measure(capsys, f"{HERE}:law", *common, "--out", str(tmp_path / "a"))
    assert rc == 0 and isinstance(res, dict)
    assert res["d"] == [16, 64, 256] and res["fixed_size"] is False
    for q, pred in (("1", 0.5), ("2", 0.0), ("inf", -0.5)):
        r = res["q"][q]["logit"]
        assert r["predicted_slope"] == pred
        assert r["measured_slope"] == pytest.approx(pred, abs=1e-9) and r["pass"] is True
    rc, res = measure(capsys, f"{HERE}:planted", *common, "--out", str(tmp_path / "b"))
    assert rc == 0 and isinstance(res, dict)
    for q, pred in (("1", 0.5), ("2", 0.0), ("inf", -0.5)):
        r = res["q"][q]["logit"]
        assert r["measured_slope"] == pytest.approx(pred + 0.1, abs=1e-9) and r["pass"] is False
    page = (tmp_path / "b" / "report.html").read_text()
    assert page.count('<tr class="verdict fail" ') >= 3 and "slope of E||d_x f_0||_1 in d" in page


def test_size_agnostic_net_with_vulnerability(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A real He net at three sizes; a large eps changes labels, a vanishing one does not."""
    args = ("--input-shape", "3,4,4", "--sizes", "1,2,4", "--inputs", "16", "--steps", "5", "--json")
    rc, big = measure(capsys, f"{HERE}:gap_net", *args, "--eps", "2.0", "--out", str(tmp_path / "a"))
    assert rc == 0 and isinstance(big, dict)
    assert big["d"] == [48, 192, 768]
    for q in ("1", "2", "inf"):
        for target in ("logit", "loss"):
            r = big["q"][q][target]
            lo, hi = r["ci"]
            assert lo <= r["measured_slope"] <= hi and all(n > 0 for n in r["norms"])
    shares = [v["share"] for v in big["vulnerability"]]
    assert len(shares) == 3 and all(0 <= s <= 1 for s in shares) and max(shares) > 0
    rc, small = measure(capsys, f"{HERE}:gap_net", *args, "--eps", "1e-7", "--out", str(tmp_path / "b"))
    assert rc == 0 and isinstance(small, dict)
    assert all(a["share"] <= b["share"] for a, b in zip(small["vulnerability"], big["vulnerability"]))
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "a" / "runs.sqlite").is_file()
    assert len(list((tmp_path / "a" / "plots").glob("series-*.png"))) == 3  # logit, loss, vulnerability


def test_fixed_size_model_is_measured_at_its_size_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "usermodels.py").write_text(
        "from advdim.arch import family\nfrom advdim.build import build\n\n"
        "def make():\n    return build(family('dense', widths=(16,)).spec(4, channels=3), seed=3)\n")
    rc, res = measure(capsys, "usermodels:make", "--input-shape", "3,4,4", "--inputs", "8", "--steps", "2",
                      "--json", "--out", str(tmp_path / "r"))
    assert rc == 0 and isinstance(res, dict)
    assert res["fixed_size"] is True and res["d"] == [48]
    assert any("does not accept the up-sampling factors [2, 4]" in n for n in res["notes"])
    assert res["q"]["1"]["logit"]["measured_slope"] is None and res["q"]["1"]["logit"]["norms"][0] > 0


@pytest.mark.parametrize(("target", "args", "message"), [
    ("no_such_module_xyz:f", (), "cannot import module"),
    (f"{HERE}:missing", (), "has no attribute"),
    (f"{HERE}:not_callable", (), "is not callable"),
    (f"{HERE}:not_a_module", (), "not a torch.nn.Module"),
    (f"{HERE}:nan_net", (), "NaN"),
    (f"{HERE}:dense_net", ("--q", "0.5"), ">= 1"),
    (f"{HERE}:dense_net", ("--q", "abc"), ">= 1"),
    (f"{HERE}:dense_net", ("--sizes", "0,2"), "positive integers"),
    ("no-colon", (), "MODULE:FACTORY"),
])
def test_bad_input_exits_2(target: str, args: tuple[str, ...], message: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = measure(capsys, target, "--input-shape", "3,4,4", *args, "--out", str(tmp_path))
    assert rc == 2 and isinstance(err, str)
    assert err.startswith("advdim: error:") and "\n" not in err and message in err


@pytest.mark.parametrize("shape", ["3,32", "3,x,32", "0,4,4", "3,4,4,4", ""])
def test_malformed_shape_exits_2(shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = measure(capsys, f"{HERE}:dense_net", "--input-shape", shape, "--out", str(tmp_path))
    assert rc == 2 and "--input-shape" in str(err)


def test_upsample_is_pixel_copy() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    up = upsample(x, 3)
    assert up.shape == (2, 3, 12, 15)
    assert torch.equal(up[:, :, ::3, ::3], x) and torch.equal(up[:, :, 2::3, 1::3], x)


@given(st.floats(-1.5, 1.5), st.lists(st.floats(0.1, 10), min_size=3, max_size=12))
def test_fit_recovers_an_exact_power_law(a: float, scale: list[float]) -> None:
    """Every input following ``c_i d^a`` gives slope ``a``, for the fit and every bootstrap resample."""
    d = [48.0, 192.0, 768.0, 3072.0]
    norms = np.array([[c * x**a for x in d] for c in scale])
    assert fit_slope(d, norms) == pytest.approx(a, abs=1e-9)
    boots = bootstrap_slopes(d, norms, np.random.default_rng(0), n_boot=50)
    assert np.allclose(boots, a, atol=1e-9)
