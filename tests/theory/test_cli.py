"""``advdim theory``: JSON keys, human output, bad input."""

from __future__ import annotations

import json

import pytest

from advdim.cli import main


def test_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "avgpool(final=2,channels=4)", "--sizes", "8,16,32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["hypotheses"]) == {"H1", "H2", "H3", "H4", "H5", "S"}
    assert out["hypotheses"]["H3"] is False
    assert out["exponent"] == {"1": 0.0, "2": -0.5, "inf": -1.0}
    assert out["grad_sq_norm"] == "24/d"
    assert set(out["predicted_slope"]) == {"1", "2", "inf"}
    assert out["predicted_slope"]["2"] == pytest.approx(-0.5, abs=1e-3)


def test_max_pooling_json_has_nulls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "maxpool", "--sizes", "8,16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["has_law"] is False and out["exponent"]["2"] is None and out["grad_sq_norm"] is None


def test_human_output_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "dense(widths=32)", "--sizes", "4,8"]) == 0
    text = capsys.readouterr().out
    assert "hypotheses" in text and "E||d_x f_k||_2^2 = 2" in text and "predicted slope" in text
    assert main(["theory", "dense", "--init", "nope"]) == 2
    assert main(["theory", "dense", "--sizes", "a,b"]) == 2
    assert main(["theory", "strided", "--sizes", "6"]) == 2
