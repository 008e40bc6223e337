"""Init laws from a model's own draws (:mod:`advdim.initlaw`): each layer's law recognised among
PyTorch's initialisers at the stated level, planted variance errors caught, mixed networks named
layer by layer, and the law of the recognised variances (:func:`spec_with_init`) checked against a
Monte Carlo of real networks drawn with those initialisers (tolerance: 5 standard errors of the
sample)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from advdim.theory import predict
from scipy import stats
from torch import nn

from advdim.arch import Scale, Spec, parse
from advdim.errors import AdvdimError
from advdim.initlaw import (
    InitGuess,
    InitStats,
    LayerInit,
    differs,
    module_weights,
    spec_with_init,
    variance_ratios,
)
from advdim.inits import WeightLaw
from advdim.trace import Traced, trace_module

#: three layers that no two laws confuse at 4 draws: fans (27, 144), (144, 288), (512, 10)
SPEC = parse("3x8x8 > conv(16,pad=zeros) > relu > conv(32,s=2,pad=zeros) > relu > flatten > dense(10)")
Initialiser = Callable[[torch.Tensor], object]


def _net(init: Initialiser | None) -> nn.Sequential:
    """``SPEC`` as torch modules, each weight drawn by ``init`` (None: the modules' own default)."""
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Flatten(), nn.Linear(32 * 16, 10))
    if init is not None:
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                init(m.weight)
    return net


def _guess(make: Callable[[], nn.Module], spec: Spec = SPEC, draws: int = 4) -> InitGuess:
    """The init recognised on ``draws`` nets of ``make`` (traced against ``spec``)."""
    traced = trace_module(make(), spec.input_shape)
    assert isinstance(traced, Traced) and traced.spec == spec
    s = InitStats(spec)
    for _ in range(draws):
        s.add(traced.weights(make()))
    return s.result()


def _lecun(w: torch.Tensor) -> None:
    nn.init.normal_(w, std=math.sqrt(1 / w[0].numel()))


def _lecun_cut(w: torch.Tensor) -> None:
    """timm's ``lecun_normal_``: a normal cut at +-2 of its std, the std raised so that the variance is 1/fan_in."""
    std = math.sqrt(1 / w[0].numel()) / 0.87962566103423978
    nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


CASES: list[tuple[str, Initialiser | None, str, float | None]] = [
    ("kaiming_normal_ (fan_in)", lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), "he", None),
    ("kaiming_normal_ (fan_out)", lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
     "he_fan_out", None),
    ("kaiming_uniform_ (relu)", lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"), "he_uniform", None),
    ("the modules' default", None, "torch", None),
    ("lecun normal", _lecun, "lecun", None),
    ("xavier_normal_", nn.init.xavier_normal_, "glorot", None),
    ("xavier_uniform_", nn.init.xavier_uniform_, "xavier_uniform", None),
    ("orthogonal_ (gain 1)", nn.init.orthogonal_, "orthogonal", 1.0),
    ("orthogonal_ (gain 0.7)", lambda w: nn.init.orthogonal_(w, gain=0.7), "orthogonal", 0.7),
    ("trunc_normal_ (std 0.02, timm)", lambda w: nn.init.trunc_normal_(w, std=0.02), "fixed_normal", 0.02),
    ("normal_ (std 0.01, torchvision heads)", lambda w: nn.init.normal_(w, std=0.01), "fixed_normal", 0.01),
    ("uniform_ (1/sqrt(fan_out), torchvision's EfficientNet head)", lambda w: nn.init.uniform_(
        w, -1 / math.sqrt(w.shape[0] * w[0, 0].numel()), 1 / math.sqrt(w.shape[0] * w[0, 0].numel())),
     "uniform_fan_out", None),
    ("timm's lecun_normal_ (cut at 2 std)", lambda w: _lecun_cut(w), "lecun_truncated", None),
]


@pytest.mark.parametrize(("what", "init", "law", "param"), CASES, ids=[c[0] for c in CASES])
def test_each_initialiser_is_recognised_layer_by_layer(what: str, init: Initialiser | None, law: str,
                                                       param: float | None) -> None:
    torch.manual_seed(3)
    guess = _guess(lambda: _net(init))
    assert [x.law for x in guess.layers] == [law] * 3, guess.reason
    if param is not None:
        assert all(x.param == pytest.approx(param, rel=1e-6) for x in guess.layers)
    scheme = WeightLaw(law).scheme(param)
    assert guess.scheme == (None if scheme is None else scheme.value)
    assert guess.base == ("orthogonal" if law == "orthogonal" else "he" if scheme is None else scheme.value)
    assert not guess.estimated and guess.no_law is None
    if scheme is None:
        text = WeightLaw(law).text(param)
        assert guess.reason.startswith(f"per layer: {text} x3") and guess.summary == f"{text} x3"


def test_a_planted_variance_error_is_not_called_he() -> None:
    """He nets whose second conv has 1.3 x He's variance: that layer is estimated (ratio 1.3 within 5
    standard errors), the others stay He; the network has no one scheme."""
    torch.manual_seed(4)

    def planted() -> nn.Module:
        net = _net(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
        with torch.no_grad():
            net[2].weight.mul_(math.sqrt(1.3))
        return net

    guess = _guess(planted)
    assert [x.law for x in guess.layers] == ["he", "estimated", "he"]
    est = guess.layers[1]
    assert est.ratio == pytest.approx(1.3, abs=5 * est.se * 1.3)
    assert guess.scheme is None and guess.reason.startswith("unknown: 2:conv(32,s=2,pad=zeros): variance 1.")
    assert "estimated: variance" in guess.law_text() and "se " in guess.law_text()


def test_the_false_estimate_rate_is_the_stated_level() -> None:
    """200 mixed nets (conv He fan_out, dense PyTorch's default): a layer is called estimated at most at the
    1% level (binomial bound at 1e-6); with the conv's variance 1.3 x its law is not called He fan_out,
    nearly always."""
    n, false, caught = 200, 0, 0
    spec = parse("16x8x8 > conv(32,pad=zeros) > relu > flatten > dense(4)")
    g = torch.Generator().manual_seed(1000)
    for _ in range(n):  # fan_in 144, fan_out 288; dense fan_in 2048
        conv = torch.randn(32, 16, 3, 3, generator=g) * math.sqrt(2 / 288)
        dense = (torch.rand(4, 2048, generator=g) * 2 - 1) / math.sqrt(2048)
        for planted in (1.0, 1.3):
            s = InitStats(spec)
            s.add([conv * math.sqrt(planted), dense])
            conv_law = s.result().layers[0].law
            false += conv_law == "estimated" and planted == 1.0
            caught += conv_law != "he_fan_out" and planted != 1.0
    assert false <= stats.binom.ppf(1 - 1e-6, n, 0.01)
    assert caught >= stats.binom.ppf(1e-6, n, 0.99)


class _Mixed(nn.Module):
    """A torchvision-style net: convs ``kaiming_normal_(mode="fan_out")`` (the third fan_in), a 1x1
    projection on the skip drawn ``normal_(std=0.01)``, the fc at PyTorch's default."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.proj = nn.Conv2d(8, 16, 1, stride=2, bias=False)
        self.fc = nn.Linear(16 * 4 * 4, 5)
        for m in (self.conv0, self.conv1):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.kaiming_normal_(self.conv2.weight, nonlinearity="relu")
        nn.init.normal_(self.proj.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv0(x))
        h = self.proj(h) + self.conv2(F.relu(self.conv1(h)))
        return self.fc(h.flatten(1))


MIXED = parse("3x8x8 > conv(8,pad=zeros,bias=false) > relu > res(conv(16,s=2,pad=zeros,bias=false) > relu > "
              "conv(16,pad=zeros,bias=false)) > flatten > dense(5)")


def test_a_mixed_net_gets_its_per_layer_list() -> None:
    torch.manual_seed(5)
    guess = _guess(_Mixed, MIXED)
    # conv2 is square (fan_in = fan_out): He and He fan_out coincide, named as the other convs
    assert [x.law_text() for x in guess.layers] == ["he_fan_out"] * 3 + ["fixed_normal(std=0.01)", "torch"]
    assert guess.scheme is None and guess.base == "he" and guess.summary == (
        "he_fan_out x3, fixed_normal(std=0.01) x1, torch x1")
    assert guess.reason.startswith("per layer: he_fan_out x3, fixed_normal(std=0.01) x1, torch x1")
    js = guess.to_json()
    assert js["law"]["base"] == "he" and js["law"]["estimated_layers"] == []
    assert [x["ratio_to_he"] for x in js["layers"]] == pytest.approx([27 / 72, 72 / 144, 1.0, 0.0001 * 8 / 2, 1 / 6])
    assert any("q = inf model draws Gaussian weights" in n and "4:dense(5)" in n for n in guess.notes())


def test_the_rewritten_spec_carries_the_variances_in_scale_layers() -> None:
    torch.manual_seed(5)
    guess = _guess(_Mixed, MIXED)
    assert spec_with_init(MIXED, guess).to_text() == (
        "3x8x8 > conv(8,pad=zeros,bias=false) > scale(0.6123724356957945) > relu > "
        "res(conv(16,s=2,pad=zeros,bias=false) > scale(0.7071067811865476) > relu > conv(16,pad=zeros,bias=false),"
        "scale=50.0) > scale(0.02) > flatten > dense(5) > scale(0.408248290463863)")
    # one scheme: the spec itself
    he = _guess(lambda: _net(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")))
    assert spec_with_init(SPEC, he) is SPEC
    assert isinstance(Scale(0.5), Scale)


def _mc_grad_sq(make: Callable[[], nn.Module], shape: tuple[int, ...], nets: int, inputs: int = 8
                ) -> tuple[float, float]:
    """Mean over ``nets`` fresh draws of ``make`` of ``mean_x ||d_x f_0||_2^2`` (float64), and its standard error."""
    vals = []
    for _ in range(nets):
        net = make().double()
        x = torch.randn(inputs, *shape, dtype=torch.float64, requires_grad=True)
        net(x)[:, 0].sum().backward()
        assert x.grad is not None
        vals.append(float(x.grad.square().flatten(1).sum(1).mean()))
    v = np.asarray(vals)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(nets))


def _orthogonal_gain_1() -> nn.Module:
    net = _net(nn.init.orthogonal_)
    for m in net:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.zeros_(m.bias)
    return net


def _default_then_fan_out() -> nn.Module:
    """PyTorch's default on the first conv and the head, He fan_out on the second conv: every layer keeps
    its default uniform biases, which the He law (zero biases) leaves out -- the path sum does not depend
    on them (the sign symmetry of (w, b))."""
    net = _net(None)
    nn.init.kaiming_normal_(net[2].weight, mode="fan_out", nonlinearity="relu")
    return net


@pytest.mark.parametrize(("make", "spec", "base", "text"), [
    (_Mixed, MIXED, "he", "he_fan_out x3, fixed_normal(std=0.01) x1, torch x1"),
    (_orthogonal_gain_1, SPEC, "orthogonal", "orthogonal(gain=1) x3"),
    (_default_then_fan_out, SPEC, "he", "torch x2, he_fan_out x1"),
], ids=["torchvision-style mix", "orthogonal gain 1", "default with biases"])
def test_the_law_of_the_recognised_variances_matches_a_monte_carlo_of_real_nets(
        make: Callable[[], nn.Module], spec: Spec, base: str, text: str) -> None:
    """``predict(spec_with_init(spec, guess), init=guess.base)``: the path sum equals the mean of
    ``||d_x f_0||^2`` over 120 nets drawn with torch's initialisers, within 5 se; the law of the same
    spec under the base scheme alone (the init taken for the base's: a planted error of 14x, 2^3 x) is
    far outside."""
    torch.manual_seed(6)
    guess = _guess(make, spec)
    assert guess.summary == text and guess.base == base
    law = spec_with_init(spec, guess)
    pred = predict(law, init=base, symmetry=False)
    assert pred.approximate is None
    mean, se = _mc_grad_sq(make, spec.input_shape, nets=120)
    assert abs(mean - pred.grad_sq_norm(8)) <= 5 * se, (mean, se, pred.grad_sq_norm(8))
    assert abs(mean - predict(spec, init=base, symmetry=False).grad_sq_norm(8)) > 50 * se


def test_a_dense_head_after_flatten_gets_a_size_dependent_ratio() -> None:
    """He fan_out and a fixed std do not scale with 1/fan_in: on a dense layer after flatten their ratio
    to He's changes with d (the rewrite is per size); an estimated variance does not carry to other fans."""
    layers = (LayerInit("0:conv(4,pad=zeros)", 0, 1.0, 3.0, None, ("he",), (9, 36, 4), "he"),
              LayerInit("3:dense(2)", 0, 1.0, 3.0, None, ("he_fan_out",), (64, 2, 2), "he_fan_out"))
    guess = InitGuess(None, "", layers)
    small, large = (parse(f"1x{s}x{s} > conv(4,pad=zeros) > relu > flatten > dense(2)") for s in (4, 8))
    assert variance_ratios(small, guess) == [1.0, 32.0] and variance_ratios(large, guess) == [1.0, 128.0]
    fixed = InitGuess(None, "", (layers[0], LayerInit("3:dense(2)", 0, 1.0, 3.0, None, ("fixed_normal",),
                                                      (64, 2, 2), "fixed_normal", 0.02)))
    assert variance_ratios(large, fixed)[1] == pytest.approx(0.02**2 * 256 / 2)
    est = InitGuess(None, "", (layers[0], LayerInit("3:dense(2)", 64, 1.0, 3.0, None, (), (64, 2, 2), "estimated",
                                                    0.05)))
    assert variance_ratios(small, est)[1] == pytest.approx(0.05 * 64 / 2)
    with pytest.raises(AdvdimError, match="estimated from the draws at fans"):
        variance_ratios(large, est)
    with pytest.raises(AdvdimError, match="recognised on layers"):
        variance_ratios(parse("1x4x4 > flatten > dense(2)"), guess)


def test_attention_queries_and_keys_off_the_base_are_not_covered() -> None:
    spec = parse("4x2x2 > res(attn(2)) > globalavgpool > dense(3)")

    def layer(label: str, law: str, param: float | None = None) -> LayerInit:
        return LayerInit(label, 0, 1.0, 3.0, None, (law,), (4, 4, 4), law, param)

    vo = InitGuess(None, "", (layer("0.0:attn(2).q", "he"), layer("0.0:attn(2).k", "he"),
                              layer("0.0:attn(2).v", "lecun"), layer("0.0:attn(2).o", "lecun"),
                              layer("2:dense(3)", "he")))
    assert spec_with_init(spec, vo).to_text() == "4x2x2 > res(attn(2) > scale(0.5)) > globalavgpool > dense(3)"
    qk = InitGuess(None, "", (layer("0.0:attn(2).q", "fixed_normal", 0.02), *vo.layers[1:]))
    with pytest.raises(AdvdimError, match="softmax's temperature"):
        spec_with_init(spec, qk)


@pytest.mark.parametrize(("weights", "words"), [
    (lambda: torch.zeros(10, 512), "every weight is 0"),
    (lambda: torch.randn(10, 512) * 0.1 + 0.05, "mean is not 0"),
])
def test_weights_without_a_path_sum_law_are_refused(weights: Callable[[], torch.Tensor], words: str) -> None:
    torch.manual_seed(7)
    spec = parse("2x16x16 > flatten > dense(10)")
    s = InitStats(spec)
    s.add([weights()])
    guess = s.result()
    assert guess.no_law is not None and words in guess.no_law and guess.base is None
    json.dumps(guess.to_json(), allow_nan=False)  # strict JSON (all-zero weights: no kurtosis, no se)
    with pytest.raises(AdvdimError, match="gives no law"):
        spec_with_init(spec, guess)


def test_another_size_is_compared_with_the_base_law() -> None:
    """The same torchvision-style laws at two sizes agree; a head scaled up at the larger size is named."""
    def make(side: int, plant: float = 1.0) -> Callable[[], nn.Module]:
        def net() -> nn.Module:
            m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                              nn.Linear(16 * side * side, 10))
            nn.init.kaiming_normal_(m[0].weight, mode="fan_out", nonlinearity="relu")
            with torch.no_grad():
                m[3].weight.mul_(plant)
            return m
        return net

    torch.manual_seed(8)
    specs = {s: parse(f"3x{s}x{s} > conv(16,pad=zeros,bias=false) > relu > flatten > dense(10)") for s in (8, 16)}
    base = _guess(make(8), specs[8])
    assert base.summary == "he_fan_out x1, torch x1"
    assert differs(base, _guess(make(16), specs[16])) == []
    assert differs(base, _guess(make(16, 1.5), specs[16])) == ["3:dense(10)"]
    # an estimated conv (1.6 x He fan_out's variance): the same variance at the other size agrees, 1.5 x more does not
    odd = {s: parse(f"3x{s}x{s} > conv(32,pad=zeros,bias=false) > relu > flatten > dense(10)") for s in (8, 16)}

    def conv(side: int, plant: float) -> Callable[[], nn.Module]:
        def net() -> nn.Module:
            m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                              nn.Linear(32 * side * side, 10))
            nn.init.normal_(m[0].weight, std=math.sqrt(1.6 * 2 / 288 * plant))
            return m
        return net

    est = _guess(conv(8, 1.0), odd[8])
    assert [x.law for x in est.layers] == ["estimated", "torch"]
    assert differs(est, _guess(conv(16, 1.0), odd[16])) == []
    assert differs(est, _guess(conv(16, 1.5), odd[16])) == ["0:conv(32,pad=zeros,bias=false)"]


def test_a_module_that_is_not_traced_is_read_by_its_module_names() -> None:
    torch.manual_seed(9)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.Linear(8, 300), nn.GELU(), nn.Linear(300, 8)))
    for m in net[1]:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
    names, weights = module_weights(net)
    assert names == ["0", "1.0", "1.2"]
    s = InitStats(names)
    s.add(weights)
    assert s.result().summary == "torch x1, fixed_normal(std=0.02) x2"


@pytest.mark.parametrize(("clamped", "law"), [(1, "fixed_normal(std=0.02)"), (200, "estimated")])
def test_trunc_normal_s_float32_clamp_is_left_out_up_to_its_rate(clamped: int, law: str) -> None:
    """``trunc_normal_(std=0.02)`` puts a float32 weight exactly at -2 about once in 2^24 (its inverse-CDF
    draw at -1 is -inf, clamped): one such weight leaves the law fixed_normal (and is named); 200 of them
    in 200k weights are no such clamp, and the layer is estimated."""
    torch.manual_seed(10)
    spec = parse("1x20x20 > flatten > dense(500)")
    w = nn.init.trunc_normal_(torch.empty(500, 400), std=0.02)
    w.view(-1)[:clamped] = -2.0
    s = InitStats(spec)
    s.add([w])
    guess = s.result()
    assert guess.layers[0].law_text().startswith(law), guess.reason
    if clamped == 1:
        assert "1 weight(s) exactly at +-2 left out of the tests" in guess.reason


# ---------------------------------------------------------------------------------------------
# advdim measure on a torchvision-style factory: the law of its per-layer variances, in every row
# ---------------------------------------------------------------------------------------------
def tv_style(input_shape: tuple[int, int, int], plant: float = 0.0) -> nn.Module:
    """Convs ``kaiming_normal_(mode="fan_out")`` without biases, the head at PyTorch's default, drawn from
    torch's global generator; ``plant`` scales the head by ``(d / 16) ** plant``."""
    c, h, w = input_shape
    net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                        nn.Linear(16 * (h // 2) * (w // 2), 3))
    for m in net:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        net[-1].weight.mul_((c * h * w / 16) ** plant)
    return net


def tv_planted(input_shape: tuple[int, int, int]) -> nn.Module:
    return tv_style(input_shape, 0.2)


def fixed_head(input_shape: tuple[int, int, int]) -> nn.Module:
    """:func:`tv_style` with its head drawn ``normal_(std=0.02)`` (no bias): a variance that does not
    shrink as the head's fan-in grows with d, so its ratio to He's grows like d."""
    net = tv_style(input_shape)
    nn.init.normal_(net[-1].weight, std=0.02)
    nn.init.zeros_(net[-1].bias)
    return net


def _measure(factory: str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    from advdim.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        rc = main(["measure", f"{Path(__file__)}:{factory}", "--input-shape", "1,4,4", "--sizes", "1,2,4", "--draws",
                   "8", "--inputs", "8", "--steps", "2", "--device", "cpu", "--json", "--out", str(out)])
        return rc, json.loads(capsys.readouterr().out)
    finally:
        torch.set_num_threads(before)


def test_measure_predicts_with_the_recognised_per_layer_laws(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before, a fan_out init meant "no prediction"; now the rows are judged against the He law of the
    traced specs with ``scale(sqrt r)`` per layer, none fails, and every slope row names the init law.
    The same net with its head scaled by (d/16)^0.2 is judged against the base size's laws (not
    re-estimated per size, which would absorb the plant): its rows fail."""
    rc, res = _measure("tv_style", tmp_path / "a", capsys)
    law = "he_fan_out x2, torch x1"
    assert res["init"]["law"]["summary"] == law and res["init"]["scheme"] is None
    assert res["prediction"]["judged"] is True and res["counts"]["fail"] == 0 and rc in (0, 3)
    assert res["prediction"]["law_specs"]["1"] == (
        "1x4x4 > conv(8,pad=zeros,bias=false) > scale(0.3535533905932738) > relu > "
        "conv(16,s=2,pad=zeros,bias=false) > scale(0.7071067811865476) > relu > flatten > dense(3) > "
        "scale(0.408248290463863)")
    slope_rows = [r for r in res["rows"] if r["claim"].startswith("slope of")]
    assert slope_rows and all(f"init of the draws: {law}" in r["detail"] for r in slope_rows)
    assert any("the q = inf model draws Gaussian weights" in n for n in res["notes"])
    rc, bad = _measure("tv_planted", tmp_path / "b", capsys)
    assert rc == 1 and bad["prediction"]["judged"] is True and bad["counts"]["fail"] > 0
    assert any(f"the weights look different from the base size's {law}" in n for n in bad["notes"])


def test_measure_rewrites_each_size_for_a_head_of_fixed_std(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A dense head of std 0.02 after flatten has ratio 0.0004 fan_in / 2 to He's, 0.0128 at d = 16 and
    0.2048 at d = 256: the law's spec at each size carries its own scale, the predicted slope of
    ``E||d_x f_0||_2`` is 1/2 above the He-fan_out / default-head net's (its ``E||.||^2`` grows like d),
    and the measured slopes agree with it (no row fails)."""
    _, ref = _measure("tv_style", tmp_path / "a", capsys)
    rc, res = _measure("fixed_head", tmp_path / "b", capsys)
    assert res["init"]["law"]["summary"] == "he_fan_out x2, fixed_normal(std=0.02) x1"
    specs = res["prediction"]["law_specs"]
    assert specs["1"].endswith(f"dense(3) > scale({math.sqrt(0.0004 * 64 / 2)!r})")
    assert specs["4"].endswith(f"dense(3) > scale({math.sqrt(0.0004 * 1024 / 2)!r})")
    assert res["prediction"]["judged"] is True and res["counts"]["fail"] == 0 and rc in (0, 3)
    slope, base = res["q"]["2"]["logit"]["predicted_slope"], ref["q"]["2"]["logit"]["predicted_slope"]
    assert slope == pytest.approx(base + 0.5, abs=0.02)


def test_a_fixed_std_off_the_list_is_found_by_comparing_layers() -> None:
    """Three layers of fan_in 27, 144 and 512 all drawn normal_(std=0.05) (not a listed std): one normal
    whose variance does not follow the fans, named fixed_normal with the pooled std (within 5 se of
    0.05^2) and carried to any fans; two layers of 1.6 x He's variance (which does follow 1/fan_in) stay
    estimated."""
    torch.manual_seed(11)
    guess = _guess(lambda: _net(lambda w: nn.init.normal_(w, std=0.05)))
    assert [x.law for x in guess.layers] == ["fixed_normal"] * 3 and guess.base == "he", guess.reason
    x = guess.layers[0]
    assert x.pooled and x.law_text().endswith("estimated") and "one normal over 3 layers" in guess.reason
    assert x.param**2 == pytest.approx(0.05**2, rel=5 * x.se)
    assert x.variance_at((1000, 10, 10)) == x.param**2
    assert any("3 layer(s) have no listed law" in n for n in guess.notes())

    def he_16(w: torch.Tensor) -> None:
        nn.init.normal_(w, std=math.sqrt(1.6 * 2 / w[0].numel()))

    odd = _guess(lambda: _net(he_16))
    assert [x.law for x in odd.layers] == ["estimated"] * 3


def test_the_moments_are_the_same_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """``InitStats.add`` sums a layer in float64 blocks of ``CHUNK`` weights (a VGG head has 100M): the
    same sums, to rounding, with blocks of 7 weights (one row at a time, rows of 12)."""
    import advdim.initlaw as il

    torch.manual_seed(12)
    spec = parse("3x2x2 > flatten > dense(5)")
    w = torch.randn(5, 12)
    whole = InitStats(spec)
    whole.add([w])
    monkeypatch.setattr(il, "CHUNK", 7)
    blocks = InitStats(spec)
    blocks.add([w])
    a, b = whole.accs[0], blocks.accs[0]
    assert (a.n, a.largest, a.gains) == (b.n, b.largest, b.gains)
    assert (a.s1, a.s2, a.s4) == pytest.approx((b.s1, b.s2, b.s4), rel=1e-12, abs=1e-12)
