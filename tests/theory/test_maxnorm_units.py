"""The q = inf Monte Carlo of one unit of a random-topology study (``expected_max_norm(..., draws=...)``)
and the table of the built-in families' members (``advdim.theory._maxnorm.tabulated``).

A unit gets a fixed number of draws, no pilot, one control variate and its se stated after; the
table holds pilot-sized estimates at 2%.  Both are checked against independent pilot-sized
estimates of the same members (the estimator the fixed networks keep): per member and for the
mean over members, each with its false-failure rate, and each check with a planted error that it
must reject.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from advdim.theory import _maxnorm, predict
from advdim.theory._maxnorm import UNIT_DRAWS, MaxNormEstimate, expected_max_norm, tabulated
from scipy.stats import chi2

from advdim.arch import Family, family, sample_family
from advdim.errors import AdvdimError, SpecError

#: five standard errors: a false failure of a correct two-sided normal test has probability 5.7e-7
Z = 5.0
#: the chi-square checks accept between these quantiles (false failure 1e-3 each)
LO, HI = 0.0005, 0.9995


def _members(k: int, sizes: tuple[int, ...], max_channels: int, seed: int = 11) -> list[Family]:
    """The first ``k`` distinct random ``strided`` members valid at ``sizes`` with at most ``max_channels``
    channels (the study's sampler; small members keep the reference estimates cheap)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Family] = {}
    while len(out) < k:
        fam = sample_family("strided", rng)
        if fam.get("channels") > max_channels:
            continue
        try:
            for s in sizes:
                fam.spec(s, 3)
        except SpecError:
            continue
        out.setdefault(fam.to_text(), fam)
    return list(out.values())


def _agreement(est: list[MaxNormEstimate], ref: list[MaxNormEstimate], scale: float = 1.0) -> tuple[float, float]:
    """``(sum of squared z-scores, z of the mean difference)`` of ``scale * est`` against ``ref``."""
    a = np.array([e.mean for e in est]) * scale
    sa = np.array([e.se for e in est]) * scale
    b = np.array([r.mean for r in ref])
    sb = np.array([r.se for r in ref])
    z = (a - b) / np.hypot(sa, sb)
    return float(np.sum(z**2)), float(np.sum(a - b) / math.sqrt(np.sum(sa**2 + sb**2)))


@pytest.fixture(scope="module")
def units_and_refs() -> tuple[list[MaxNormEstimate], list[MaxNormEstimate]]:
    """40 (member, size) units of random strided members at s = 8 and 16 (up to 8 channels): the unit
    estimate (``UNIT_DRAWS`` draws) and an independent pilot-sized reference to 1%."""
    specs = [f.spec(s, 3) for f in _members(20, (8, 16), 8) for s in (8, 16)]
    units = [expected_max_norm(spec, draws=UNIT_DRAWS, seed=3) for spec in specs]
    refs = [expected_max_norm(spec, rel_se=0.01, seed=4) for spec in specs]
    assert all(u is not None and u.draws == UNIT_DRAWS for u in units)  # not in the table: seed 3
    return units, refs  # type: ignore[return-value]


def test_units_agree_with_the_pilot_sized_estimator(units_and_refs) -> None:  # type: ignore[no-untyped-def]
    """Per unit, z = (unit - reference) / combined se: sum(z^2) ~ chi2(40) (the se each unit states is
    right, and no unit is biased beyond it), and the mean difference within Z se (the study's mean)."""
    units, refs = units_and_refs
    stat, z_mean = _agreement(units, refs)
    k = len(units)
    assert chi2.ppf(LO, k) <= stat <= chi2.ppf(HI, k), stat
    assert abs(z_mean) <= Z, z_mean
    rel = np.array([u.se / u.mean for u in units])
    assert np.median(rel) < 0.06  # the stated precision of one unit (docs/performance.md)


def test_a_planted_error_fails_both_checks(units_and_refs) -> None:  # type: ignore[no-untyped-def]
    """Units 5% high, or their se understated by a factor 1.6: the per-unit check rejects them; units 8%
    high: the check of the mean too (its se is the units' over sqrt(40): 1.1% here, so 5% is 4.5 se)."""
    units, refs = units_and_refs
    stat, _ = _agreement(units, refs, scale=1.05)
    assert stat > chi2.ppf(HI, len(units)), stat
    _, z_mean = _agreement(units, refs, scale=1.08)
    assert abs(z_mean) > Z, z_mean
    narrow = [MaxNormEstimate(u.mean, u.se / 1.6, u.draws, u.law, u.seed, u.plain_mean, u.plain_se) for u in units]
    stat, _ = _agreement(narrow, [MaxNormEstimate(r.mean, 0.0, r.draws, r.law, r.seed, r.mean, 0.0) for r in refs])
    assert not chi2.ppf(LO, len(units)) <= stat <= chi2.ppf(HI, len(units)), stat


def test_unit_draws_are_seeded_per_spec_and_checked() -> None:
    """Deterministic per (spec, seed); two specs with the same layer shapes (only the padding differs)
    do not share their draws; a fixed count below the minimum is refused."""
    a = family("strided", channels=4, final=2, padding="circular").spec(8)
    b = family("strided", channels=4, final=2, padding="zeros").spec(8)
    ea = _maxnorm.estimate_max_norm  # the same machinery, uncached
    y1, _ = _maxnorm._draw_maxima(a, 16, _maxnorm._unit_seed(a, 0), "he", 0, _maxnorm.GateLaw.CHANNEL)
    y2, _ = _maxnorm._draw_maxima(a, 16, _maxnorm._unit_seed(a, 0), "he", 0, _maxnorm.GateLaw.CHANNEL)
    y3, _ = _maxnorm._draw_maxima(b, 16, _maxnorm._unit_seed(b, 0), "he", 0, _maxnorm.GateLaw.CHANNEL)
    assert np.array_equal(y1, y2) and np.corrcoef(y1, y3)[0, 1] < 0.9
    assert ea(a, 16).draws == 16
    for bad in (4, 0, True, 8.0):
        with pytest.raises(AdvdimError, match="fixed number of draws"):
            expected_max_norm(a, draws=bad)  # type: ignore[arg-type]


def test_prediction_passes_the_draws_through() -> None:
    """``predict(..., inf_draws=n)``: the q = inf entries are unit estimates of n draws (a member outside
    the table: 2 input channels), the JSON record says so; a fixed network keeps its 0.5%."""
    fam = family("strided", channels=4, final=2, kernel=5)
    pred = predict(fam, sizes=(8, 16), channels=2, inf_draws=UNIT_DRAWS)
    rec = pred.to_json()["expected_norm_inf"]["16"]
    assert rec["draws"] == UNIT_DRAWS and rec["exact"]
    assert pred.expected_norm(math.inf, 16) == expected_max_norm(pred.spec_at(16), draws=UNIT_DRAWS).mean
    fixed = predict(fam, sizes=(8,), channels=2)
    est = expected_max_norm(fixed.spec_at(8))
    assert est is not None and est.se < 0.01 * est.mean and est.draws > UNIT_DRAWS  # pilot-sized to 0.5%


def test_one_blas_thread_restores_the_callers_count() -> None:
    fn = _maxnorm._openblas_threads_local()
    if fn is None:
        pytest.skip("numpy's BLAS is not a bundled OpenBLAS: the column-blocked products are used")
    before = fn(3)
    try:
        with _maxnorm.one_blas_thread():
            assert fn(1) == 1  # inside: one thread
        assert fn(3) == 3  # restored
    finally:
        fn(before)


# --------------------------------------------------------------------------------------------
# The table of the built-in families' members
# --------------------------------------------------------------------------------------------


def test_table_entries_agree_with_fresh_estimates() -> None:
    """12 entries at s = 8 (every seventh of the table's members there) against independent
    pilot-sized estimates to 2% (another seed): sum(z^2) ~ chi2(12); a table 5% high fails."""
    from advdim.theory import _maxnorm_table as table

    keys = sorted(k for k in table.TABLE if k.startswith("3x8x8 "))[::7][:12]
    assert len(keys) == 12
    from advdim.arch import parse

    specs = [parse(k) for k in keys]
    stored = [tabulated(spec) for spec in specs]
    assert all(s is not None for s in stored)
    fresh = [_maxnorm.expected_max_norm(spec, rel_se=0.02, seed=7) for spec in specs]
    stat, _ = _agreement(stored, fresh)  # type: ignore[arg-type]
    assert chi2.ppf(LO, 12) <= stat <= chi2.ppf(HI, 12), stat
    planted, _ = _agreement(stored, fresh, scale=1.05)  # type: ignore[arg-type]
    assert planted > chi2.ppf(HI, 12), planted


def test_table_covers_the_default_studies_and_only_its_model() -> None:
    """Every topology of the default ``strided`` and ``gap`` studies (200, seed 0, s = 8..64) is in the
    table, and a unit of one is read from it; another init, logit, gate law, seed or model version is not."""
    from advdim.simulate._study import topologies

    for name in _maxnorm.TABLE_FAMILIES:
        for f in topologies(name, 200, 0, _maxnorm.TABLE_SIZES, 3):
            for s in _maxnorm.TABLE_SIZES:
                assert tabulated(f.spec(s, 3)) is not None, (f.to_text(), s)
    spec = family("strided", channels=8, final=2).spec(16)
    row = tabulated(spec)
    assert row is not None and expected_max_norm(spec, draws=UNIT_DRAWS) == row
    assert expected_max_norm(spec) != row  # a fixed network asks for 0.5%: more than the table's 2%
    assert tabulated(spec, init="torch") is None and tabulated(spec, logit=1) is None
    assert tabulated(spec, law=_maxnorm.GateLaw.INDEPENDENT) is None and tabulated(spec, seed=1) is None
    old = _maxnorm.MODEL_VERSION
    try:
        _maxnorm.MODEL_VERSION = old + 1
        assert tabulated(spec) is None
    finally:
        _maxnorm.MODEL_VERSION = old
