"""User code is contained (issue 24): whatever a user's family does while advdim imports or calls
it is one line naming the user's file and line, exit 2; a real Ctrl-C stays an interrupt; the
user's folders never shadow installed packages."""

from __future__ import annotations

import importlib.machinery
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from advdim.cli import main
from advdim.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, SpecError
from advdim.usercode import user_code

FAMILY = '''from advdim.arch import parse
{at_import}

def wide(size, channels):
    {at_call}
    return parse(f"{{channels}}x{{size}}x{{size}} > conv(4,k=3) > relu > flatten > dense(3)")
'''


def _family(path: Path, at_import: str = "", at_call: str = "pass") -> Path:
    path.write_text(FAMILY.format(at_import=at_import, at_call=at_call))
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.err


FAULTS = [  # (at import, at call, what the message says, the line of the fault in the file)
    ("import sys; sys.exit(3)", "pass", "called sys.exit(3)", 2),
    ("import sys; sys.exit(0)", "pass", "called sys.exit(0)", 2),
    ("import sys; sys.exit('bye')", "pass", "called sys.exit('bye')", 2),
    ("raise KeyboardInterrupt", "pass", "raised KeyboardInterrupt", 2),
    ("raise ValueError('no width at import')", "pass", "raised ValueError: no width at import", 2),
    ("", "raise ValueError('no width at call')", "raised ValueError: no width at call", 5),
    ("", "import sys; sys.exit(3)", "called sys.exit(3)", 5),
    ("", "raise KeyboardInterrupt", "raised KeyboardInterrupt", 5),
]


@pytest.mark.parametrize(("at_import", "at_call", "says", "line"), FAULTS)
def test_a_family_that_exits_or_raises_is_one_line_naming_its_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], at_import: str, at_call: str, says: str,
        line: int) -> None:
    fam = _family(tmp_path / "lab_fam.py", at_import, at_call)
    before = sorted(tmp_path.iterdir())
    rc, err = _run(capsys, "arch", "show", f"{fam}:wide", "--size", "8")
    assert rc == EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advdim: error: "), err
    assert says in lines[0] and f"lab_fam.py, line {line})" in lines[0], lines[0]
    assert sorted(tmp_path.iterdir()) == before  # no __pycache__ either


def test_simulate_contains_a_family_that_exits_at_call(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fam = _family(tmp_path / "exits.py", at_call="import sys; sys.exit(0)")
    monkeypatch.chdir(tmp_path)
    rc, err = _run(capsys, "simulate", "-f", "exits.py:wide", "--sizes", "8,16", "--nets", "2", "--draws", "1",
                   "--inputs", "2", "--device", "cpu", "--out", "o", "--store", "s.sqlite")
    assert rc == EXIT_BAD_INPUT and err.count("\n") == 1 and "called sys.exit(0) (exits.py, line 5)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [fam.name]


def test_a_module_family_names_the_module_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _family(tmp_path / "labmod_faulty.py", at_call="raise RuntimeError('lab code fails')")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    rc, err = _run(capsys, "arch", "show", "labmod_faulty:wide", "--size", "8")
    assert rc == EXIT_BAD_INPUT and "raised RuntimeError: lab code fails (labmod_faulty.py, line 5)" in err, err


def test_the_users_folders_never_shadow_installed_packages(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``sympy.py`` in the current folder (``module:NAME``) or beside the family file
    (``file.py:NAME``) is never what ``import sympy`` finds: the user's folders come after the
    installed packages on ``sys.path``."""
    planted = "open('PLANTED_SYMPY_IMPORTED', 'w').close()\nraise ImportError('the planted sympy')\n"
    cwd, lab = tmp_path / "cwd", tmp_path / "lab"
    cwd.mkdir()
    lab.mkdir()
    for folder in (cwd, lab):
        (folder / "sympy.py").write_text(planted)
    _family(cwd / "labmod_in_cwd.py", at_import="import sympy")
    _family(lab / "lab_file.py", at_import="import sympy")
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    for target in ("labmod_in_cwd:wide", f"{lab}/lab_file.py:wide"):
        rc, err = _run(capsys, "arch", "show", target, "--size", "8")
        assert rc == 0, err
        fresh = importlib.machinery.PathFinder.find_spec("sympy")  # what a first import would load now
        assert fresh is not None and fresh.origin is not None
        assert Path(fresh.origin).parent not in (cwd, lab), fresh.origin
    assert str(cwd) in sys.path and str(lab) in sys.path  # their own modules import (appended)
    assert not (cwd / "PLANTED_SYMPY_IMPORTED").exists() and not (lab / "PLANTED_SYMPY_IMPORTED").exists()


def test_a_real_ctrl_c_in_user_code_stays_an_interrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same ``KeyboardInterrupt`` is the user's fault when their code raises it and an interrupt
    (exit 130) when a SIGINT arrived while their code ran."""
    fam = _family(tmp_path / "slow.py", at_call="import os, signal, time; os.kill(os.getpid(), signal.SIGINT); "
                                                "time.sleep(5)")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc, err = _run(capsys, "arch", "show", f"{fam}:wide", "--size", "8")
        with pytest.raises(KeyboardInterrupt), user_code("a slow family", fam):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == EXIT_INTERRUPTED and "interrupted" in err, err


def test_user_code_passes_advdim_errors_and_names_the_innermost_user_frame(tmp_path: Path) -> None:
    helper = tmp_path / "helper_mod.py"
    helper.write_text("def inner():\n    return 1 / 0\n\ndef outer():\n    return inner()\n")
    ns: dict[str, object] = {}
    exec(compile(helper.read_text(), str(helper), "exec"), ns)
    innermost = r"^lab raised ZeroDivisionError: division by zero \(.*helper_mod.py, line 2\)$"
    with pytest.raises(SpecError, match=innermost), user_code("lab", helper):
        ns["outer"]()  # type: ignore[operator]
    with pytest.raises(SpecError, match="^bad spec$"), user_code("lab", helper):
        raise SpecError("bad spec")
