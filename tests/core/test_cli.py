"""The `advdim` command: help, arch show (table and JSON), one-line errors with exit 2."""

import json
import subprocess
import sys

import pytest

from advdim.cli import main


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "advdim", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands() -> None:
    r = run(["--help"])
    assert r.returncode == 0
    for cmd in ("arch", "verify"):
        assert cmd in r.stdout


def test_arch_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "show", "strided(channels=8,final=2)", "--size", "16", "--channels", "1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["d"] == 256
    assert [row["out_shape"] for row in data["layers"]][:3] == [[8, 16, 16], [8, 16, 16], [8, 8, 8]]
    assert data["layers"][2]["in_degree"] == 72
    assert data["params"] == sum(row["params"] for row in data["layers"])


def test_arch_show_table_for_a_spec_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["arch", "show", "3x8x8 > conv(4,pad=zeros) > relu > avgpool(2) > flatten > dense(10)"]) == 0
    text = capsys.readouterr().out
    assert "avgpool(2)" in text and "d = 192" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arch", "show", "3x8x8 > conv(4,s=3) > flatten > dense(2)"], "stride 3 does not divide the map"),
        (["arch", "show", "strided", "--size", "12"], "not final size 4 times a power of 2"),
        (["arch", "show", "strided"], "needs an input size"),
        (["arch", "show", "alexnet", "--size", "8"], "unknown family 'alexnet'"),
        (["arch", "show", "dense", "--size", "abc"], "Invalid value"),
        (["verify", "--scale", "huge"], "unknown scale 'huge'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = run(args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_every_exit_status_is_documented() -> None:
    """Each ``advdim.errors.EXIT_*`` code is in the exit-status list of ``advdim.cli`` and in the user
    guide's table (3: no judged claim failed, some are inconclusive)."""
    from pathlib import Path

    import advdim.cli
    from advdim import errors

    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert codes == {0, 1, 2, 3, 130}
    guide = (Path(__file__).resolve().parents[2] / "docs" / "user-guide.md").read_text()
    for code in codes:
        assert f"\n- {code}: " in (advdim.cli.__doc__ or ""), code
        assert f"| **{code}** |" in guide, code
    assert "inconclusive" in guide[guide.index("| **3** |"):].splitlines()[0]
