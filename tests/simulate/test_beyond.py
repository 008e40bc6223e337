"""verify's "beyond the paper" section: the residual member is judged (and a planted error fails
it), the families without a law are reported with a consistency word, never judged."""

from advdim.simulate._checks import BEYOND_TARGETS, check_beyond
from advdim.theory._tokens import CANNOT_TELL_INF, CANNOT_TELL_SIZES

from advdim.checks import Budget, Scale
from advdim.stats import CANNOT_TELL, CONSISTENT, INCONSISTENT
from advdim.verdict import MIN_POWER, Outcome

WORDS = (CONSISTENT, INCONSISTENT, CANNOT_TELL)


def test_beyond_section_judges_the_residual_member_and_reports_the_rest() -> None:
    rows = check_beyond(Budget(Scale.TINY, seed=0, device="cpu"))
    resnet = [v for v in rows if v.claim.startswith("resnet")]
    others = [v for v in rows if not v.claim.startswith("resnet")]
    assert len(resnet) == 4 and len(others) == 3 * (len(BEYOND_TARGETS) - 1)
    judged = [v for v in resnet if v.outcome.judged]
    assert judged and not [v for v in judged if v.outcome is Outcome.FAIL]
    for v in judged:  # never a pass without the power to see the error
        assert v.outcome is not Outcome.PASS or (v.power is not None and v.power >= MIN_POWER)
    assert all(v.outcome is Outcome.REPORTED and v.extra["consistency"] in (CONSISTENT, INCONSISTENT, CANNOT_TELL)
               for v in others if not v.claim.startswith("vit:"))
    # vit is a token-mean readout: its rows are compared with its exponent-only law, never judged; at
    # verify's sides (8-32, patch 4: at most 64 patch tokens) its fit has too few sizes with 16 tokens
    vit = [v for v in others if v.claim.startswith("vit:")]  # not vit(scaling=tokens): a fixed token grid
    assert vit and all(v.outcome is Outcome.REPORTED and v.extra["level"] == "exponent only" for v in vit)
    assert all(v.extra["consistency"] in (CANNOT_TELL_SIZES, CANNOT_TELL_INF, *WORDS) for v in vit)


def test_a_planted_exponent_fails_the_residual_rows() -> None:
    rows = check_beyond(Budget(Scale.TINY, seed=0, device="cpu", plant_exponent=0.5))
    slopes = [v for v in rows if v.claim.startswith("resnet") and "slope" in v.claim and v.outcome.judged]
    assert slopes and all(v.outcome is Outcome.FAIL for v in slopes), [(v.claim, v.outcome) for v in slopes]


def test_batch_statistics_with_one_input_per_net_is_refused_before_any_work() -> None:
    import pytest
    from advdim.simulate._study import KIND, study

    from advdim.errors import AdvdimError
    from advdim.store import RunStore

    for target in ("bn", "3x8x8 > conv(4) > batchnorm(mode=batch) > relu > flatten > dense(10)"):
        with RunStore(":memory:") as store:
            with pytest.raises(AdvdimError, match="--inputs must be at least 2"):
                study(target, (8, 16), 3, 2, 1, 0, "cpu", store=store, draws=1, progress=False)
            assert store.count(KIND) == 0
