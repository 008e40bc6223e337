"""Fuzzing the ``advdim`` command in-process (issue 13): random argument lists, with valid and
invalid values for every option of every command, at small sizes.

Whatever the arguments, the command must end with a documented exit status (0, 1, 2 or 3), print no
traceback, and leave every store file it was pointed at byte-identical when it refused to run.
Each option of each command has a pool of valid and invalid values below; a test checks that the
pools cover every option the CLI has, so a new option cannot escape the fuzzer.

``verify`` and ``experiment`` are fuzzed on refusals only (each drawn argument list holds at least
one invalid value): their valid runs take minutes and are tested in their own suites.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import typer.main
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from advdim.cli import app, main
from advdim.store import RunStore

DOCUMENTED_EXIT = {0, 1, 2, 3}  # 3: ran, nothing failed, some verdicts inconclusive
#: options whose invalid values only matter in some contexts (``--channels`` is ignored with a spec
#: text that fixes the input; a missing ``--data-dir`` or a bad ``--checkpoint`` only with what reads them)
LENIENT = {"--channels", "--data-dir", "--checkpoint"}


@dataclass(frozen=True)
class Pool:
    """Values of one option: ``valid`` ones the command must accept, ``invalid`` ones it must refuse
    in one line.  ``None`` as a value means "leave the option out"; flags take ``True``/``False``."""

    valid: tuple[object, ...]
    invalid: tuple[object, ...] = ()


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    base: dict[str, object]  # small valid values used unless the draw replaces them
    pools: dict[str, Pool] = field(default_factory=dict)
    refusals_only: bool = False


def _files(root: Path) -> dict[str, str]:
    """Fixtures on disk: an advdim store with cells, a foreign SQLite file, a garbage file, a plain
    file (where a folder is expected), a tiny model factory and a garbage checkpoint."""
    store = root / "store.sqlite"
    with RunStore(store) as s:
        s.put("demo", {"x": 1}, {"y": 2})
    foreign = root / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes(text) VALUES ('keep me')")
    con.commit()
    con.close()
    (root / "garbage.bin").write_bytes(b"\x00not a database or a checkpoint\xff" * 10)
    (root / "file.txt").write_text("a file, not a folder\n")
    (root / "models.py").write_text(
        "import torch.nn as nn\n\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                         nn.Linear(4, 3))\n\n"
        "def per_size(input_shape=(1, 4, 4)):\n"
        "    return make()\n\n"
        "def nan_model():\n"
        "    net = make()\n"
        "    net.register_forward_hook(lambda m, i, o: o * float('nan'))\n"
        "    return net\n\n"
        "def constant():\n"
        "    class C(nn.Module):\n"
        "        def __init__(self):\n"
        "            super().__init__()\n"
        "            self.b = nn.Parameter(__import__('torch').zeros(3))\n"
        "        def forward(self, x):\n"
        "            return self.b.expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)\n"
        "    return C()\n\n"
        "def wrong_shape():\n"
        "    return nn.Flatten()\n")
    return {"root": str(root), "store": str(store), "foreign": str(foreign), "garbage": str(root / "garbage.bin"),
            "file": str(root / "file.txt"), "models": str(root / "models.py"), "missing": str(root / "missing" / "x")}


def commands(f: dict[str, str]) -> list[Command]:
    new = f["root"] + "/new-{n}"  # a fresh path per example
    store = Pool((None, f["store"], new + ".sqlite"), (f["foreign"], f["garbage"], f["root"]))
    device = Pool((None, "cpu"), ("tpu", ""))
    seed = Pool((None, "0", "7"), ("x", "1.5"))
    flag = Pool((True, False))
    return [
        Command(("arch", "show"), {"spec": "dense", "--size": "8"}, {
            "spec": Pool(("dense", "strided(channels=4,final=2)", "3x8x8 > conv(4) > relu > flatten > dense(3)"),
                         ("", "hello world", "resnet", "dense(widths=x)", "3x8x8 > conv(4,s=3) > flatten > dense(2)")),
            "--size": Pool((None, "8", "16"), ("0", "-4", "x")),
            "--channels": Pool((None, "1", "3"), ("0", "-1", "x")),
            "--json": flag}),
        Command(("arch", "families"), {}, {"--json": flag}),
        Command(("theory",), {"target": "dense", "--sizes": "8,16"}, {
            "target": Pool(("dense", "strided(channels=4,final=2)", "3x8x8 > conv(4) > relu > flatten > dense(3)"),
                           ("", "hello world", "resnet", "dense(widths=x)")),
            "--sizes": Pool(("4,8", "8,16"), ("", "0", "-3", "abc", "8,8", "8192")),
            "--channels": Pool((None, "1"), ("0", "-1", "x")),
            "--init": Pool((None, "he", "torch", "glorot", "lecun", "orthogonal"), ("bogus",)),
            "--logit": Pool((None, "0", "1"), ("-1", "99", "x")),
            "--json": flag}),
        Command(("simulate",), {"--family": "dense", "--sizes": "4,8", "--nets": "2", "--draws": "1", "--inputs": "2",
                                "--device": "cpu"}, {
            "--family": Pool(("dense", "dense(widths=8)", "1x4x4 > conv(2,k=3) > relu > flatten > dense(3)"),
                             ("nope", "", "1x4x4 > conv(2,s=3) > flatten > dense(3)")),
            "--sizes": Pool(("4,8",), ("", "0", "-3", "abc", "8,100000")),
            "--channels": Pool((None, "1"), ("0", "-2")),
            "--nets": Pool(("2", "3"), ("0", "-1", "x")),
            "--inputs": Pool(("1", "2"), ("0", "-1")),
            "--draws": Pool(("1", "2"), ("0", "-1")),
            "--seed": seed, "--device": device,
            "--target": Pool((None, "logit", "loss"), ("bogus",)),
            "--init": Pool((None, "he", "torch", "orthogonal"), ("bogus",)),
            "--law-init": Pool((None, "he"), ("bogus",)),
            "--exact-shortcuts": flag,
            "--data": Pool((None, "synthetic"), ("imagenet",)),
            "--data-dir": Pool((None,), (f["missing"],)),
            "--workers": Pool((None, "0"), ("-1", "x")),
            "--scheduler": Pool((None,), ("not-an-address",)),
            "--store": store, "--resume": flag,
            "--out": Pool((None, new), (f["file"],)),
            "--json": flag}),
        Command(("train",), {"--dataset": "synthetic", "--epochs": "1", "--n-train": "40", "--n-test": "16",
                             "--n-eval": "8", "--batch-size": "16", "--arch": "dense(widths=8)", "--device": "cpu"}, {
            "--dataset": Pool(("synthetic",), ("imagenet",)),
            "--size": Pool((None, "14", "28"), ("0", "-5", "x")),
            "--pad": flag,
            "--batchnorm": flag,
            "--weight-decay": Pool((None, "0", "5e-4"), ("-1", "nan", "inf")),
            "--method": Pool((None, "plain", "gp1", "fgsm-aug"), ("magic",)),
            "--eps": Pool((None, "0", "0.01"), ("-1", "nan", "inf")),
            "--epochs": Pool(("1",), ("0", "-1")),
            "--arch": Pool(("dense(widths=8)",), ("hello", "dense(widths=0)")),
            "--batch-size": Pool(("16",), ("0", "-3")),
            "--lr": Pool((None, "0.05"), ("-1", "nan")),
            "--halve-every": Pool((None, "0", "2"), ("-1",)),
            "--valid-fraction": Pool((None, "0.1"), ("1.5", "-0.1")),
            "--n-train": Pool(("40",), ("-3",)),
            "--n-test": Pool(("16",), ("-1",)),
            "--n-eval": Pool(("8",), ("-1",)),
            "--attack-eps": Pool((None, "0.004"), ("-1", "nan")),
            "--attack-every": Pool((None, "0", "1"), ("-1",)),
            "--threads": Pool((None, "1"), ("-1",)),
            "--seed": seed,
            "--data-dir": Pool((None,), (f["missing"],)),
            "--device": device, "--store": store,
            "--checkpoint": Pool((None, new + ".ckpt"), (f["garbage"], f["root"])),
            "--resume": flag,
            "--json": flag}),
        Command(("measure",), {"target": f["models"] + ":make", "--input-shape": "1,4,4", "--sizes": "1,2",
                               "--inputs": "4", "--steps": "2", "--draws": "2", "--device": "cpu", "--out": new}, {
            "target": Pool((f["models"] + ":make", f["models"] + ":per_size"),
                           ("nope:x", f["root"] + "/missing.py:f", f["models"] + ":absent", f["models"] + ":nan_model",
                            f["models"] + ":constant", f["models"] + ":wrong_shape", "no-colon")),
            "--input-shape": Pool(("1,4,4",), ("0,4,4", "x", "1,4")),
            "--sizes": Pool(("1,2",), ("0", "", "1,100000")),
            "--q": Pool((None, "1,2,inf", "2"), ("0.5", "x", "")),
            "--inputs": Pool(("4",), ("1", "0")),
            "--eps": Pool((None, "0.01"), ("-1", "0", "nan")),
            "--steps": Pool(("2",), ("0", "-2")),
            "--draws": Pool(("2", "3"), ("1", "0", "-1")),
            "--seed": seed, "--device": device,
            "--out": Pool((new,), (f["file"],)),
            "--json": flag}),
        Command(("verify",), {"--scale": "tiny", "--only": "core"}, {
            "--scale": Pool(("tiny",), ("huge",)),
            "--only": Pool(("core",), ("nope",)),
            "--seed": seed, "--device": device,
            "--out": Pool((new,), (f["file"],)),
            "--json": flag,
            "--workers": Pool((None, "0"), ("-1",)),
            "--scheduler": Pool((None,), ("not-an-address",)),
            "--plant-exponent": Pool((None,), ("nan", "inf"))}, refusals_only=True),
        Command(("experiment",), {"which": "first-order", "--out": new}, {
            "which": Pool(("first-order", "dimension", "batchnorm"), ("nope",)),
            "--preset": Pool(("small",), ("huge",)),
            "--out": Pool((new,), (f["file"],)),
            "--workers": Pool((None, "0"), ("-1",)),
            "--scheduler": Pool((None,), ("not-an-address",)),
            "--data-dir": Pool((None,), (f["missing"],)),
            "--device": device,
            "--json": flag}, refusals_only=True),
    ]


def _cli_options() -> dict[tuple[str, ...], set[str]]:
    """Every command of the app and the first spelling of each of its parameters."""
    found: dict[tuple[str, ...], set[str]] = {}

    def walk(cmd: object, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            if hasattr(sub, "commands"):
                walk(sub, (*prefix, name))
            else:
                found[(*prefix, name)] = {p.opts[0] for p in sub.params}

    walk(typer.main.get_command(app), ())
    return found


def test_pools_cover_every_option(tmp_path: Path) -> None:
    cmds = {c.words: c for c in commands(_files(tmp_path))}
    for words, opts in _cli_options().items():
        assert words in cmds, f"advdim {' '.join(words)} has no fuzz pools"
        assert set(cmds[words].pools) == opts, f"advdim {' '.join(words)}: pools {sorted(cmds[words].pools)}"


def _argv(cmd: Command, chosen: dict[str, object], n: int) -> list[str]:
    values = {**cmd.base, **chosen}
    argv = list(cmd.words)
    for name, value in values.items():
        if value is None or value is False:
            continue
        if isinstance(value, str):
            value = value.replace("{n}", str(n))
        if not name.startswith("-"):
            argv.append(str(value))
        elif value is True:
            argv.append(name)
        else:
            argv += [name, str(value)]
    return argv


def _digest(path: str) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


@st.composite
def invocations(draw: st.DrawFn, cmds: list[Command]) -> tuple[Command, dict[str, object], bool]:
    cmd = draw(st.sampled_from(cmds))
    names = sorted(cmd.pools)
    picked = draw(st.lists(st.sampled_from(names), max_size=4, unique=True)) if names else []
    invalid_able = [n for n in picked if cmd.pools[n].invalid]
    bad = set(draw(st.lists(st.sampled_from(invalid_able), unique=True))) if invalid_able else set()
    if cmd.refusals_only and not bad - LENIENT:  # a valid run of these takes minutes: force one strict refusal
        strict = [n for n in names if cmd.pools[n].invalid and n not in LENIENT]
        forced = draw(st.sampled_from(strict))
        if forced not in picked:
            picked.append(forced)
        bad.add(forced)
    chosen = {n: draw(st.sampled_from(cmd.pools[n].invalid if n in bad else cmd.pools[n].valid)) for n in picked}
    return cmd, chosen, bool(bad - LENIENT)


_COUNTER = iter(range(10**9))


def test_cli_fuzz(tmp_path_factory: pytest.TempPathFactory) -> None:
    files = _files(tmp_path_factory.mktemp("fuzz"))
    cmds = commands(files)
    watched = [files["store"], files["foreign"], files["garbage"], files["file"]]
    threads = torch.get_num_threads()

    @settings(max_examples=70, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(invocations(cmds))
    def run(case: tuple[Command, dict[str, object], bool]) -> None:
        cmd, chosen, has_invalid = case
        argv = _argv(cmd, chosen, next(_COUNTER))
        before = {p: _digest(p) for p in watched}
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                rc = main(argv)
        finally:
            torch.set_num_threads(threads)  # `train` sets its own thread count
        err = stderr.getvalue()
        event(f"{' '.join(cmd.words)}: exit {rc}")  # pytest --hypothesis-show-statistics
        assert rc in DOCUMENTED_EXIT, f"advdim {argv}: exit {rc}\n{err}"
        assert "Traceback" not in err and "Traceback" not in stdout.getvalue(), f"advdim {argv}:\n{err}"
        if rc == 2:
            lines = [line for line in err.splitlines() if line.strip().startswith("advdim: error:")]
            assert len(lines) == 1, f"advdim {argv}: expected one error line, got\n{err}"
        after = {p: _digest(p) for p in watched}
        changed = [p for p in watched if before[p] != after[p]]
        if rc == 2:  # refused (1 and 3 ran and judged: their stores hold the cells)
            assert not changed, f"advdim {argv} refused (exit {rc}) but changed {changed}"
        else:
            assert not {files["foreign"], files["garbage"], files["file"]} & set(changed), f"advdim {argv}"
        if has_invalid:
            assert rc == 2, f"advdim {argv}: an invalid value was accepted (exit {rc})"

    run()
