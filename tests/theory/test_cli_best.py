"""``advdim theory`` shows each quantity's best law first, with its level (issue 22).

The values printed are the Prediction's own (wide-limit law, path sum, q-norms), so these tests
compare the command's text and JSON with the Python API, and check that the labels agree with
each other (H1, ``approximate``, the q = inf method).
"""

from __future__ import annotations

import json
import re

import pytest
from advdim.theory import predict

from advdim.cli import main
from advdim.errors import AdvdimError

#: the issue's spec: ReLU -> avgpool, 64 channels, a flatten head
SPEC = "3x8x8 > conv(64) > relu > avgpool(2) > conv(64) > relu > avgpool(2) > flatten > dense(10)"


def _json(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_wide_limit_comes_first_with_the_path_sum_labelled(capsys: pytest.CaptureFixture[str]) -> None:
    pred = predict(SPEC, sizes=(8,))
    wide, path = pred.wide_grad_sq_norm(8), pred.grad_sq_norm(8)
    assert wide > 1.03 * path  # the case the issue is about: the path sum is 5% low

    out = _json(["theory", SPEC, "--sizes", "8"], capsys)
    best = out["best"]["grad_sq_norm"]["8"]
    assert best["level"] == "wide-limit" and best["value"] == pytest.approx(wide, rel=1e-12)
    assert best["path_sum"] == pytest.approx(path, rel=1e-12) and best["se"] > 0
    assert list(out).index("best") < list(out).index("grad_sq_norm_at")
    # the labels agree: H1 holds unit by unit, but the path sum is approximate, and the JSON says so
    assert out["hypotheses"]["H1"] is True and out["H1_display"] == "approx."
    assert "average pool after the first conv" in out["reasons"]["H1"]
    assert out["approximate"] == out["reasons"]["H1"]
    assert out["best"]["expected_norm"]["inf"]["8"]["level"] == "extreme-value fallback"
    assert "breaks H1 locally" in out["best"]["expected_norm"]["inf"]["8"]["note"]
    assert "breaks H1 locally" in out["reasons"]["H1"]  # the q = inf method's words, in the H1 row too

    assert main(["theory", SPEC, "--sizes", "8"]) == 0
    text = capsys.readouterr().out
    sq_table = text[text.index("E||d_x f_k||_2^2, the best law first"):]
    first_row = next(line for line in sq_table.splitlines() if re.match(r"[│|]\s*8\s", line))
    numbers = re.findall(r"\d+\.\d+(?!\d*e)", first_row.replace("±", " "))
    assert float(numbers[0]) == pytest.approx(wide, rel=1e-5)  # the wide limit is the first value
    assert float(numbers[1]) == pytest.approx(path) and "wide-limit" in first_row  # then the path sum
    assert re.search(r"H1\s*[│|]\s*approx\.", text)
    assert "path sum in d: E||d_x f_k||_2^2 = 1/8" in text and "not the best law here" in text


def test_the_default_avgpool_member_likewise(capsys: pytest.CaptureFixture[str]) -> None:
    pred = predict("avgpool", sizes=(8,))
    out = _json(["theory", "avgpool", "--sizes", "8"], capsys)
    best = out["best"]["grad_sq_norm"]["8"]
    assert best["level"] == "wide-limit" and best["value"] == pytest.approx(pred.wide_grad_sq_norm(8), rel=1e-12)
    assert best["path_sum"] == pytest.approx(0.5)
    # H1 fails there (a pool before the ReLU): "NO", and the reason says the wide limit keeps the rest
    assert out["hypotheses"]["H1"] is False and out["H1_display"] == "NO"
    assert "wide-limit law below" in out["reasons"]["H1"] and out["approximate"] == pred.approximate
    for q in ("1", "2"):
        assert out["best"]["expected_norm"][q]["8"]["level"] == "approximate"
        assert out["best"]["expected_norm"][q]["8"]["value"] == pytest.approx(pred.expected_norm(q, 8), rel=1e-12)


def test_exact_and_wide_limit_levels_of_a_dense_net(capsys: pytest.CaptureFixture[str]) -> None:
    pred = predict("dense(widths=32)", sizes=(4, 8))
    out = _json(["theory", "dense(widths=32)", "--sizes", "4,8"], capsys)
    for s in ("4", "8"):
        sq = out["best"]["grad_sq_norm"][s]
        assert sq["level"] == "exact" and sq["value"] == pytest.approx(2.0) and sq["path_sum"] is None
        for q in ("1", "2", "inf"):  # Gaussian coordinates: the wide limit, with the finite-width caveat
            law = out["best"]["expected_norm"][q][s]
            assert law["level"] == "wide-limit" and "finite width" in law["note"]
            assert law["value"] == pytest.approx(pred.expected_norm(q, int(s)), rel=1e-12)
    assert out["H1_display"] == "yes" and out["approximate"] is None


def test_q_inf_of_a_covered_conv_net_is_the_channel_gate_model(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(["theory", "strided(channels=4,final=2)", "--sizes", "8"], capsys)
    inf = out["best"]["expected_norm"]["inf"]["8"]
    assert inf["level"] == "approximate" and inf["relative_error_bound"] == 0.02 and inf["se"] > 0
    assert inf["value"] == pytest.approx(out["expected_norm"]["inf"]["8"], rel=1e-12)
    assert out["best"]["grad_sq_norm"]["8"]["level"] == "exact"


def test_no_law_is_level_none(capsys: pytest.CaptureFixture[str]) -> None:
    # s = 16: a second max pool (after the first, the window's correlation is unknown: no law)
    out = _json(["theory", "maxpool", "--sizes", "16"], capsys)
    assert out["best"]["grad_sq_norm"]["16"]["level"] == "none"
    assert all(out["best"]["expected_norm"][q]["16"]["value"] is None for q in ("1", "2", "inf"))


def test_no_wide_and_a_refused_size_print_the_path_sum_and_say_why(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = _json(["theory", SPEC, "--sizes", "8", "--no-wide"], capsys)
    best = out["best"]["grad_sq_norm"]["8"]
    assert best["level"] == "approximate" and best["value"] == pytest.approx(0.125) and "--no-wide" in best["note"]

    from advdim.theory import _meanfield

    def refuse(*args: object, **kwargs: object) -> None:
        raise AdvdimError("the wide-limit recursion on 16384 positions needs about 26 GB (estimate)")

    monkeypatch.setattr(_meanfield, "cached_wide_law", refuse)
    out = _json(["theory", SPEC, "--sizes", "8"], capsys)
    best = out["best"]["grad_sq_norm"]["8"]
    assert best["level"] == "approximate" and best["value"] == pytest.approx(0.125)
    assert "not shown: the wide-limit recursion on 16384 positions needs about 26 GB" in best["note"]
    assert main(["theory", SPEC, "--sizes", "8"]) == 0
    text = " ".join(re.sub(r"[│┃|]", " ", capsys.readouterr().out).split())  # the table's cells, unwrapped
    assert "the wide-limit law is not shown: the wide-limit recursion on 16384 positions needs about 26 GB" in text
