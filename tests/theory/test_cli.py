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


@pytest.mark.parametrize(("sizes", "message"), [
    ("", "--sizes is empty"),
    ("0", "(0 is not positive)"),
    ("-3", "(-3 is not positive)"),
    ("8,8", "--sizes lists 8 twice"),
    ("abc", "--sizes must be positive integers"),
])
def test_bad_sizes_are_one_line(sizes: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["theory", "dense", "--sizes", sizes]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advdim: error: ") and "\n" not in err and message in err


def test_sizes_are_sorted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["theory", "dense(widths=32)", "--sizes", "16,4,8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sizes"] == [4, 8, 16]


def _no_path_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    from advdim.theory import _graph

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a path sum ran")

    monkeypatch.setattr(_graph, "input_variances", refuse)
    monkeypatch.setattr(_graph, "path_degree_classes", refuse)


def test_a_graph_too_large_for_the_symmetry_check_is_refused_before_any_path_sum(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``strided`` at s = 8192 has 3.1e9 graph nodes (about an hour of path-degree classes)."""
    from advdim.theory._law import MAX_SYMMETRY_NODES, path_sum_cost

    from advdim.arch import family

    _no_path_sums(monkeypatch)
    capsys.readouterr()
    assert main(["theory", "strided", "--sizes", "8,8192"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("advdim: error: size 8192: ") and "\n" not in err
    assert "3.1e+09 graph nodes" in err and "use smaller --sizes" in err
    nodes = path_sum_cost(family("strided").spec(1024))[0]  # the largest power of two still accepted
    assert nodes <= MAX_SYMMETRY_NODES < path_sum_cost(family("strided").spec(2048))[0]


def test_path_sums_too_large_for_memory_are_refused_before_any(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the symmetry check (the simulation's use) memory bounds the size: a 4-channel strided
    net at s = 16384 (d = 8e8, inside the specs' size bounds) needs tens of GB."""
    from advdim.theory import predict

    from advdim.arch import family
    from advdim.errors import AdvdimError

    _no_path_sums(monkeypatch)
    with pytest.raises(AdvdimError, match=r"computing the exact path sums up to size 16384 needs about [\d,]+ GB "
                                          r"\(estimate\) and this machine has"):
        predict(family("strided", channels=4), sizes=(8, 16384), symmetry=False)


@pytest.mark.parametrize(("target", "size"), [
    ("strided", 64), ("strided(padding=zeros,kernel=5)", 32), ("strided(padding=reflect,channels=8)", 64),
    ("gap(padding=circular,kernel=5)", 64), ("avgpool(padding=zeros)", 64), ("maxpool", 64),
    ("dense(widths=64/32)", 64),
])
def test_the_memory_estimate_bounds_the_measured_peak(target: str, size: int) -> None:
    """The peak of the traced allocations (numpy arrays and Python objects) of the path sums and the
    path-degree classes of one member stays below :func:`path_sum_cost`, with and without S."""
    import tracemalloc

    from advdim.theory import _graph
    from advdim.theory._law import path_sum_cost

    from advdim.arch import parse_family

    spec = parse_family(target).spec(size, 3)
    for symmetry in (False, True) if not _graph.routing_layers(spec) else (True,):  # max pooling: no path sums
        tracemalloc.start()
        try:
            kept = [] if _graph.routing_layers(spec) else [_graph.input_variances(spec)]
            if symmetry:
                kept.append(_graph.path_degree_classes(spec))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(kept) == 1 + symmetry - bool(_graph.routing_layers(spec))
        assert peak <= path_sum_cost(spec, symmetry)[1], (target, symmetry, peak)
