"""Every output file lies in the folder the user named, under a name no target text can break, and
nothing of the user's is overwritten (issue 24)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from advdim.cli import main
from advdim.errors import AdvdimError
from advdim.paths import MANIFEST, MAX_SLUG, OutputFolder, slug, unique_stems

FAMILY = '''from advdim.arch import parse

def wide(size, channels):
    return parse(f"{channels}x{size}x{size} > conv(4,k=3) > relu > flatten > dense(3)")
'''
#: a spec text with dots, commas, parentheses and '>' (``with_suffix`` cut such a name at the dot)
SPEC = "1x8x8 > conv(2,k=3) > relu > res(conv(2,k=3) > relu > conv(2,k=3),scale=0.5) > flatten > dense(3)"
TINY = ["--sizes", "4,8", "--nets", "2", "--draws", "1", "--inputs", "2", "--device", "cpu"]
#: names a user may have beside the family file or in the current folder, like each output
PLANTED = ["fam_ok.png", "fam_ok.svg", "fam_ok_loglog.png", "fam_ok_hist.svg", "results.json", "wide.png",
           "fam_ok.py:wide_loglog.png", "1x8x8 > conv(2,k=3) > relu > res(conv(2,k=3) > relu > conv(2,k=3),scale=0.png"]


@given(st.text(max_size=200))
def test_a_slug_is_a_safe_bounded_file_name(text: str) -> None:
    s = slug(text)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", s) and len(s) <= MAX_SLUG + 11, s
    assert s == text or re.search(r"-[0-9a-f]{10}$", s)


@given(st.text(max_size=60), st.text(max_size=60))
def test_two_texts_never_share_a_slug(a: str, b: str) -> None:
    assert (slug(a) == slug(b)) == (a == b)


def test_slug_of_texts_that_used_to_collide() -> None:
    texts = ["a/fam.py:wide", "b/fam.py:wide", "fam.py:wide", "res(scale=0.5)", "res(scale=0.25)", "x" * 300,
             "x" * 301]
    assert len({slug(t) for t in texts}) == len(texts)
    assert unique_stems(["dense", "dense", "dense-2"]) == ["dense", "dense-2", "dense-2-2"]


def _digests(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("targets", [["{lab}/fam_ok.py:wide"], ["../fam_ok.py:wide"], ["sub/fam_ok.py:wide"],
                                     [SPEC, SPEC]], ids=["absolute", "parent", "sub", "spec-twice"])
def test_simulate_writes_only_in_its_out_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], targets: list[str]) -> None:
    """An absolute, a ``../`` and a ``sub/`` family file and a spec text with dots (twice in one
    run): every file written lies in ``--out``, the user's files named like the outputs beside the
    family files and in the current folder are untouched, and each plot has a name of its own."""
    lab, cwd = tmp_path / "lab", tmp_path / "cwd"
    (cwd / "sub").mkdir(parents=True)
    lab.mkdir()
    for folder in (lab, tmp_path, cwd, cwd / "sub"):
        (folder / "fam_ok.py").write_text(FAMILY)
        for name in PLANTED:
            (folder / name).write_bytes(f"the user's {name} in {folder.name}".encode())
    monkeypatch.chdir(cwd)
    before = _digests(tmp_path)
    targets = [t.format(lab=lab) for t in targets]
    argv = ["simulate", *(w for t in targets for w in ("-f", t)), *TINY, "--out", "out", "--json"]
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc in (0, 1, 3), f"{argv}: exit {rc}\n{cap.err}"
    after = _digests(tmp_path)
    assert {p: d for p, d in after.items() if p in before} == before  # nothing of the user's changed
    new = sorted(p.relative_to(cwd) for p in after if p not in before)
    assert all(p.parts[0] == "out" and len(p.parts) == 2 for p in new), new
    names = sorted(p.name for p in (cwd / "out").iterdir())
    plots = [n for n in names if n.endswith((".png", ".svg"))]
    assert len(plots) == 4 * len(targets) == len(set(plots)), names
    assert sum(n.endswith("_loglog.png") for n in plots) == sum(n.endswith("_hist.png") for n in plots) \
        == len(targets)
    assert sorted(names) == sorted([*plots, "results.json", MANIFEST])
    assert len(json.loads((cwd / "out" / "results.json").read_text())) == len(targets)


def test_an_earlier_runs_files_are_replaced_a_users_never(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = OutputFolder(tmp_path / "o")
    out.check(["results.json"])
    assert not (tmp_path / "o").exists()  # checking creates nothing
    out.file("results.json").write_text("run 1")
    out.check(["results.json"])  # ours: may be replaced
    (tmp_path / "o" / "dense_loglog.png").write_bytes(b"the user's")
    with pytest.raises(AdvdimError, match="already holds 'dense_loglog.png', which advdim did not write"):
        out.check(["results.json", "dense_loglog.png"])
    with pytest.raises(ValueError, match="plain output file name"):
        out.file("../escape.json")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "results.json").write_text("the user's results")
    before = _digests(tmp_path)
    rc = main(["simulate", "-f", "dense", *TINY, "--out", str(tmp_path / "cwd")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("advdim: error: --out") and "results.json" in err, err
    assert _digests(tmp_path) == before
