"""``advdim measure MODULE:FACTORY``: a user's own model, in its two settings.

The factories below are the "user's models": this file is given to the command as a ``.py`` path
(and, once, as an importable module name).

- A factory with an ``input_shape`` parameter is called for every size and draw (the paper's
  setting); when its model is traced into a spec and its initialisation recognised, the slope
  rows are judged against ``advdim.theory.predict`` on that spec: a correct He net does not fail
  (``he_net``; at these few draws its rows lack the power to see a slope off by 0.05, so they are
  inconclusive and the exit status is 3), the same net with its head scaled by ``(d/d0)^0.2``
  fails (``planted``).
- A factory without one is one fixed model fed up-sampled inputs: every row is reported.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from advdim.arch import family, parse
from advdim.build import build
from advdim.cli import main
from advdim.measure import UPSAMPLED_REASON, upsample
from advdim.stats import fit_slope
from advdim.verdict import MIN_POWER

HERE = Path(__file__)
#: the per-size runs below: base 1x4x4 at factors 1, 2, 4 (d = 16, 64, 256), 8 draws of 8 inputs
PER_SIZE = ("--input-shape", "1,4,4", "--sizes", "1,2,4", "--draws", "8", "--inputs", "8", "--steps", "2",
            "--device", "cpu", "--json")
#: the exponent planted in the head of ``planted``: every logit-gradient slope moves by exactly this much
PLANT = 0.2


class PowerLaw(nn.Module):
    """Logits ``(+s, -s)`` with ``s = d**a * sum(x**2) / 2``: ``d_x f_0 = d**a * x``.

    Under pixel-copy up-sampling by ``k``, ``||x||_q`` grows exactly like ``k**(2/q) = (d/d0)**(1/q)``,
    so ``E||d_x f_0||_q`` is exactly proportional to ``d**(1/q + a)``: with ``a = -1/2`` the slope is
    ``1/q - 1/2`` for every input sample, so the bootstrap interval is a point.
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


def he_net(input_shape: tuple[int, int, int], plant: float = 0.0) -> nn.Module:
    """A strided conv net with a dense head (Corollary 6), He weights and zero biases, drawn from
    torch's global generator; ``plant`` scales the head by ``(d / 16) ** plant``."""
    c, h, w = input_shape
    net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * (h // 2) * (w // 2), 3))
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        net[-1].weight.mul_((c * h * w / 16) ** plant)
    return net


def planted(input_shape: tuple[int, int, int]) -> nn.Module:
    return he_net(input_shape, PLANT)


def dense_first(input_shape: tuple[int, int, int]) -> nn.Module:
    """A dense net (Theorem 4): its input gradient has i.i.d. Gaussian coordinates, so q = inf is judged too."""
    return build(family("dense", widths=(16,)).spec(input_shape[1], channels=input_shape[0]),
                 generator=torch.default_generator)


class Residual(nn.Module):
    """A skip connection followed by a ReLU on the sum: traced, but the ReLU's law is unknown."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, c, 3, padding=1)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.conv2(F.relu(self.conv1(x)))
        return self.head(F.relu(h).mean((2, 3)))


def residual(input_shape: tuple[int, int, int]) -> nn.Module:
    return Residual(input_shape[0])


def maxpool_net(input_shape: tuple[int, int, int]) -> nn.Module:
    """Max pooling: traced, He, but the theory has no law (H1 fails)."""
    return build(parse("1x4x4 > conv(4) > relu > maxpool(2) > globalavgpool > dense(3)").with_input(input_shape),
                 generator=torch.default_generator)


def gap_net(input_shape: tuple[int, int, int]) -> nn.Module:
    """A size-agnostic He net (global average pooling head, one more block per doubling)."""
    return build(family("gap", channels=4, final=2).spec(input_shape[1], channels=input_shape[0]),
                 generator=torch.default_generator)


def seeded_net(input_shape: tuple[int, int, int]) -> nn.Module:
    """Seeds its own generator: every draw has the same weights."""
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


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are tiny: on a shared 2-core machine, a second torch thread costs more than it saves."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def measure(capsys: pytest.CaptureFixture[str], target: str, *args: str) -> tuple[int, dict | str]:
    capsys.readouterr()
    rc = main(["measure", target, *args])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc in (0, 1, 3) and "--json" in args else cap.err.strip())


def assert_judged_consistently(rc: int, res: dict) -> None:
    """Every judged row states its power and says fail, pass (power >= 0.8) or inconclusive by it; the
    exit status and the counts follow the rows."""
    for r in res["rows"]:
        if r["outcome"] == "n/a":
            assert r["verdict"] == "reported" and r["power"] is None
            continue
        assert r["power"] is not None and r["verdict"] == r["outcome"], r["claim"]
        if None in r["interval"]:  # too few units for any interval: never pass or fail
            assert r["outcome"] == "inconclusive" and r["power"] == 0
            continue
        lo, hi = r["interval"]
        inside = lo <= r["predicted"] <= hi
        assert r["outcome"] == ("fail" if not inside else "pass" if r["power"] >= MIN_POWER else "inconclusive")
    n = res["counts"]
    assert sum(n.values()) == len(res["rows"])
    assert rc == (1 if n["fail"] else 3 if n["inconclusive"] else 0) and res["passed"] is (rc == 0)


def slopes(res: dict, target: str = "logit") -> dict[str, dict]:
    return {q: res["q"][q][target] for q in res["q"]}


def test_a_traced_he_net_is_judged_and_none_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(a) Per-size draws of a He conv net: traced at every size, He recognised, the rows judged
    against ``predict`` on the traced specs (the predicted numbers are that call's), none fails.  At 8
    draws no row has power 0.8 against a slope off by 0.05: each is inconclusive, exit status 3."""
    from advdim.theory import predict

    rc, res = measure(capsys, f"{HERE}:he_net", *PER_SIZE, "--out", str(tmp_path))
    assert rc == 3 and isinstance(res, dict)
    assert_judged_consistently(rc, res)
    assert res["setting"] == "per-size draws" and res["draws"] == 8 and res["d"] == [16, 64, 256]
    assert res["trace"]["traced"] is True and res["init"]["scheme"] == "he"
    assert res["trace"]["specs"]["2"] == ("1x8x8 > conv(8,pad=zeros) > relu > conv(8,s=2,pad=zeros) > relu > flatten"
                                          " > dense(3)")
    assert res["prediction"]["judged"] is True and res["counts"]["fail"] == 0
    specs = {4 * k: parse(res["trace"]["specs"][str(k)]) for k in (1, 2, 4)}
    pred = predict(lambda s, c: specs[s], sizes=(4, 8, 16), channels=1, init="he", symmetry=False)
    for target in ("logit", "loss"):
        for q in ("1", "2"):
            r = slopes(res, target)[q]
            assert r["verdict"] == "inconclusive" and r["power"] < MIN_POWER
            if target == "logit":  # the loss law adds the softmax factor's (small) variation with d
                assert r["predicted_slope"] == pytest.approx(pred.slope_q(float(q)), abs=1e-12)
            assert r["predicted_slope"] == pytest.approx(pred.slope_q(float(q)), abs=0.02)
            lo, hi = r["interval"]
            assert (lo + hi) / 2 == pytest.approx(r["measured_slope"]) and lo < r["predicted_slope"] < hi
            row = next(x for x in res["rows"] if x["claim"] == f"slope of E||d_x {'f_0' if target == 'logit' else 'L'}"
                       f"||_{q} in d")
            assert "c*se = " in row["detail"] and "n_eff = " in row["detail"]
            assert "false rejection 0.01" in row["detail"]
            assert f"power {row['power']:.3f} against slope +-0.05" in row["detail"]
        # q = inf is judged as simulate judges it: the channel-gate law of this zero-padded conv net
        inf = slopes(res, target)["inf"]
        assert inf["verdict"] == "inconclusive" and inf["predicted_slope"] is not None
    assert "fail" not in [row["verdict"] for row in res["rows"]]
    assert all(0 <= v["share"] <= 1 and v["interval"][0] <= v["share"] <= v["interval"][1]
               for v in res["vulnerability"])


def test_a_planted_exponent_fails_the_judged_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(b) The same net (same seeds) with its head scaled by (d/16)^0.2: He at the base size, so the
    prediction is He's, but every logit-gradient slope is exactly 0.2 higher, and the rows fail."""
    rc, good = measure(capsys, f"{HERE}:he_net", *PER_SIZE, "--out", str(tmp_path / "a"))
    rc_bad, bad = measure(capsys, f"{HERE}:planted", *PER_SIZE, "--out", str(tmp_path / "b"))
    assert rc == 3 and rc_bad == 1 and isinstance(good, dict) and isinstance(bad, dict)
    assert_judged_consistently(rc_bad, bad)
    assert bad["init"]["scheme"] == "he" and bad["passed"] is False and bad["outcome"] == "fail"
    for q in ("1", "2", "inf"):
        assert slopes(bad)[q]["measured_slope"] == pytest.approx(slopes(good)[q]["measured_slope"] + PLANT, abs=1e-6)
    for target in ("logit", "loss"):
        for q in ("1", "2"):
            r = slopes(bad, target)[q]
            lo, hi = r["interval"]
            assert r["verdict"] == "fail" and not lo <= r["predicted_slope"] <= hi
    assert any("at d = 256 the weights look different from the base size's he" in n for n in bad["notes"])
    page = (tmp_path / "b" / "report.html").read_text()
    assert page.count('<tr class="verdict fail" ') >= 4 and "slope of E||d_x f_0||_1 in d" in page


def test_the_first_dense_layer_makes_q_inf_judged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, res = measure(capsys, f"{HERE}:dense_first", *PER_SIZE, "--out", str(tmp_path))
    assert rc in (0, 3) and isinstance(res, dict)
    assert_judged_consistently(rc, res)
    assert res["trace"]["specs"]["1"] == "1x4x4 > flatten > dense(16) > relu > dense(10)"
    assert all(r["outcome"] in ("pass", "inconclusive") and r["power"] is not None
               for target in ("logit", "loss") for r in slopes(res, target).values())


@pytest.mark.parametrize(("factory", "words"), [
    ("residual", ["no law", "residual sum", "H1"]),  # traced into res(...); ReLU on the sum: no law
    ("maxpool_net", ["no law", "maxpool"]),
    ("seeded_net", ["the same weights for every draw", "seed its own generator"]),
])
def test_outside_the_theory_the_rows_are_reported_with_the_reason(factory: str, words: list[str], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """(c) A skip connection, max pooling, a factory that seeds itself: measured, never judged against a
    prediction.  Independent draws get a consistency word against d^(1/q - 1/2) (inconsistent fails);
    repeated weights (not independent units) get none."""
    rc, res = measure(capsys, f"{HERE}:{factory}", *PER_SIZE, "--out", str(tmp_path))
    assert isinstance(res, dict)
    assert res["setting"] == "per-size draws" and res["prediction"]["judged"] is False
    reason = res["prediction"]["reason"]
    assert all(w in reason for w in words), reason
    for target in ("logit", "loss"):
        for r in slopes(res, target).values():
            assert r["predicted_slope"] is None
            if factory == "seeded_net":
                assert r["consistency"] is None and r["verdict"] == "reported" and r["pass"] is None
            else:
                assert r["consistency"] in ("consistent", "inconsistent", "cannot tell at this budget")
                assert r["verdict"] == ("fail" if r["consistency"] == "inconsistent" else "reported")
            lo, hi = r["interval"]
            assert lo <= r["measured_slope"] <= hi
    assert rc == (1 if res["counts"]["fail"] else 0)
    assert any(reason in row["detail"] for row in res["rows"])
    if factory == "residual":  # traced into a residual block; the theory, not the tracer, says "no law"
        assert res["trace"]["traced"] is True and all("res(" in t for t in res["trace"]["specs"].values())


def test_a_fixed_model_is_measured_on_up_sampled_inputs_and_reported(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """(d) No input_shape parameter: one model, up-sampled inputs, the exact slopes of ``PowerLaw``
    measured (its interval a point), no prediction, the reason stated."""
    common = ("--input-shape", "1,4,4", "--sizes", "1,2,4", "--inputs", "8", "--steps", "2", "--json")
    rc, res = measure(capsys, f"{HERE}:law", *common, "--out", str(tmp_path))
    assert rc == 0 and isinstance(res, dict)
    assert res["setting"] == "up-sampled inputs" and res["draws"] == 1 and res["d"] == [16, 64, 256]
    assert res["prediction"]["judged"] is False and res["prediction"]["reason"] == UPSAMPLED_REASON
    assert res["trace"]["traced"] is False  # x ** 2 is not a layer
    for q, exact in (("1", 0.5), ("2", 0.0), ("inf", -0.5)):
        r = slopes(res)[q]
        assert r["measured_slope"] == pytest.approx(exact, abs=1e-9) and r["verdict"] == "reported"
        assert r["predicted_slope"] is None and r["interval"] == pytest.approx([exact, exact], abs=1e-9)
    assert any("give the factory an input_shape parameter" in row["detail"] for row in res["rows"])


def test_a_fixed_traced_model_reports_its_trace_and_init(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed-size model given as an importable module: measured at its size only; trace and init shown."""
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
    assert res["trace"]["specs"]["1"] == "3x4x4 > flatten > dense(16) > relu > dense(10)"
    assert res["init"]["scheme"] == "he"


def test_a_size_agnostic_gap_net_with_vulnerability(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A He net with one more block per doubling: traced at every size, judged; a large eps changes
    labels, a vanishing one does not."""
    args = ("--input-shape", "3,4,4", "--sizes", "1,2,4", "--draws", "4", "--inputs", "8", "--steps", "5", "--json")
    rc, big = measure(capsys, f"{HERE}:gap_net", *args, "--eps", "2.0", "--out", str(tmp_path / "a"))
    assert rc in (0, 3) and isinstance(big, dict)
    assert_judged_consistently(rc, big)
    assert big["d"] == [48, 192, 768] and big["prediction"]["judged"] is True
    assert big["trace"]["specs"]["4"].count("conv(") == 4
    shares = [v["share"] for v in big["vulnerability"]]
    assert len(shares) == 3 and all(0 <= s <= 1 for s in shares) and max(shares) > 0
    rc, small = measure(capsys, f"{HERE}:gap_net", *args, "--eps", "1e-7", "--out", str(tmp_path / "b"))
    assert rc in (0, 3) and isinstance(small, dict)
    assert all(a["share"] <= b["share"] for a, b in zip(small["vulnerability"], big["vulnerability"]))
    assert (tmp_path / "a" / "report.html").is_file() and (tmp_path / "a" / "runs.sqlite").is_file()
    assert len(list((tmp_path / "a" / "plots").glob("series-*.png"))) == 3  # logit, loss, vulnerability


@pytest.mark.parametrize(("target", "args", "message"), [
    ("no_such_module_xyz:f", (), "cannot import module"),
    (f"{HERE}:missing", (), "has no attribute"),
    (f"{HERE}:not_callable", (), "is not callable"),
    (f"{HERE}:not_a_module", (), "not a torch.nn.Module"),
    (f"{HERE}:nan_net", (), "NaN"),
    (f"{HERE}:dense_net", ("--q", "0.5"), ">= 1"),
    (f"{HERE}:dense_net", ("--q", "abc"), ">= 1"),
    (f"{HERE}:dense_net", ("--sizes", "0,2"), "positive integers"),
    (f"{HERE}:gap_net", ("--draws", "1"), "--draws must be at least 2"),
    (f"{HERE}:dense_net", ("--inputs", "1"), "--inputs must be at least 2"),
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
    """Every unit following ``c_u d^a`` gives slope ``a`` with a zero standard error (the up-sampled
    setting's fit: one statistics module, units = inputs)."""
    d = [48.0, 192.0, 768.0, 3072.0]
    norms = np.array([[c * x**a for x in d] for c in scale])
    fit = fit_slope(d, norms)
    assert fit.slope == pytest.approx(a, abs=1e-9) and fit.se == pytest.approx(0.0, abs=1e-9)
