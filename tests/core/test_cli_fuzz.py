"""Fuzzing the ``advdim`` command in-process (issue 13): random argument lists, with valid and
invalid values for every option of every command, at small sizes.

Whatever the arguments, the command must end with a documented exit status (0, 1, 2 or 3), print no
traceback, and leave every store file it was pointed at byte-identical when it refused to run.
Each option of each command has a pool of valid and invalid values below; a test checks that the
pools cover every option the CLI has, so a new option cannot escape the fuzzer.

``verify`` and ``experiment`` are fuzzed on refusals only (each drawn argument list holds at least
one invalid value): their valid runs take minutes and are tested in their own suites.

Issue 24 adds to the pools: user families given by an absolute, a ``../`` and a ``sub/`` path, a
spec text with dots and commas, families that exit or raise at import or at call, a negative seed
or worker count, a closed port and an HTTP server as ``--scheduler``, and an ``--out`` folder that
holds a user's ``results.json``.  Whatever the command did, no file beside the user's files (named
like the outputs) changes, a refusal creates no file, and a run writes only inside the paths its
arguments named.  ``pytest -s`` prints the counts: argument lists with a bad value tried, one-line
errors, files wrongly created.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import typer.main
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import advdim.sweep
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
    lenient: frozenset[str] = frozenset()  # options of this command that are lenient besides LENIENT

    def strict(self, option: str) -> bool:
        """Whether every invalid value of ``option`` must be refused, whatever the other options."""
        return option not in LENIENT | self.lenient


FAMILY = (
    "from advdim.arch import parse\n{at_import}\n\n"
    "def wide(size, channels):\n"
    "    {at_call}\n"
    "    return parse(f'{{channels}}x{{size}}x{{size}} > conv(2,k=3) > relu > flatten > dense(3)')\n"
)
#: user families that fail at import or at call (issue 24): each must be one line, exit 2
BAD_FAMILIES = {"exit3": ("import sys; sys.exit(3)", "pass"), "exit0": ("import sys; sys.exit(0)", "pass"),
                "exitbye": ("import sys; sys.exit('bye')", "pass"), "ctrlc": ("raise KeyboardInterrupt", "pass"),
                "importerror": ("raise ValueError('at import')", "pass"),
                "callerror": ("", "raise ValueError('at call')"), "callexit": ("", "import sys; sys.exit(0)")}
#: a spec text with dots and commas (its plots once overwrote each other)
SPEC_DOTS = "1x4x4 > conv(2,k=3) > relu > res(conv(2,k=3) > relu > conv(2,k=3),scale=0.5) > flatten > dense(3)"
#: files of the user's named like advdim's outputs, planted beside the family files and in the current folder
PLANTED = ("fam_ok.png", "fam_ok.svg", "fam_ok_loglog.png", "fam_ok_hist.png", "results.json", "report.html",
           "runs.sqlite")


def _files(root: Path, http: str = "tcp://127.0.0.1:9") -> dict[str, str]:
    """Fixtures on disk: an advdim store with cells, a foreign SQLite file, a garbage file, a plain
    file (where a folder is expected), a tiny model factory and a garbage checkpoint; user families
    (good ones in ``lab/``, beside ``cwd/`` and in ``cwd/sub/``; failing ones in ``lab/``) with
    files of the user's named like the outputs beside them and in ``cwd/`` (the current folder of
    the fuzzed commands), a folder holding a user's ``results.json``, a closed port and ``http``
    (the address of an HTTP server)."""
    cwd, lab = root / "cwd", root / "lab"
    (cwd / "sub").mkdir(parents=True)
    lab.mkdir()
    for folder in (root, lab, cwd, cwd / "sub"):
        (folder / "fam_ok.py").write_text(FAMILY.format(at_import="", at_call="pass"))
        for name in PLANTED:
            (folder / name).write_bytes(f"the user's {name} in {folder.name}\n".encode())
    for name, (at_import, at_call) in BAD_FAMILIES.items():
        (lab / f"fam_{name}.py").write_text(FAMILY.format(at_import=at_import, at_call=at_call))
    (root / "userout").mkdir()
    (root / "userout" / "results.json").write_text("the user's results\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
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
            "file": str(root / "file.txt"), "models": str(root / "models.py"), "missing": str(root / "missing" / "x"),
            "cwd": str(cwd), "lab": str(lab), "userout": str(root / "userout"), "closed": closed, "http": http}


def _user_files(f: dict[str, str]) -> list[str]:
    """The files of the user's that no command may change, whatever it did."""
    root = Path(f["root"])
    planted = [str(folder / name) for folder in (root, root / "lab", root / "cwd", root / "cwd" / "sub")
               for name in (*PLANTED, "fam_ok.py")]
    bad = [str(root / "lab" / f"fam_{name}.py") for name in BAD_FAMILIES]
    return [*planted, *bad, f["foreign"], f["garbage"], f["file"], f["models"], str(root / "userout" / "results.json")]


def commands(f: dict[str, str]) -> list[Command]:
    new = f["root"] + "/new-{n}"  # a fresh path per example
    store = Pool((None, f["store"], new + ".sqlite"), (f["foreign"], f["garbage"], f["root"]))
    device = Pool((None, "cpu"), ("tpu", ""))
    seed = Pool((None, "0", "7"), ("x", "1.5"))
    flag = Pool((True, False))
    schedulers = ("not-an-address", f["closed"], f["http"])  # malformed, nothing listens, not Dask
    bad_families = tuple(f"{f['lab']}/fam_{name}.py:wide" for name in BAD_FAMILIES)
    return [
        Command(("arch", "show"), {"spec": "dense", "--size": "8"}, {
            "spec": Pool(("dense", "strided(channels=4,final=2)", "3x8x8 > conv(4) > relu > flatten > dense(3)"),
                         ("", "hello world", "dense(widths=x)", "3x8x8 > conv(4,s=3) > flatten > dense(2)")),
            "--size": Pool((None, "8", "16"), ("0", "-4", "x")),
            "--channels": Pool((None, "1", "3"), ("0", "-1", "x")),
            "--json": flag}),
        Command(("arch", "families"), {}, {"--json": flag}),
        Command(("theory",), {"target": "dense", "--sizes": "8,16"}, {
            "target": Pool(("dense", "strided(channels=4,final=2)", "3x8x8 > conv(4) > relu > flatten > dense(3)"),
                           ("", "hello world", "dense(widths=x)")),
            "--sizes": Pool(("4,8", "8,16"), ("", "0", "-3", "abc", "8,8", "8192")),
            "--channels": Pool((None, "1"), ("0", "-1", "x")),
            "--init": Pool((None, "he", "torch", "glorot", "lecun", "orthogonal"), ("bogus",)),
            "--logit": Pool((None, "0", "1"), ("-1", "99", "x")),
            "--wide": flag,
            "--json": flag}),
        Command(("simulate",), {"--family": "dense", "--sizes": "4,8", "--nets": "2", "--draws": "1", "--inputs": "2",
                                "--device": "cpu"}, {
            "--family": Pool(("dense", "dense(widths=8)", "1x4x4 > conv(2,k=3) > relu > flatten > dense(3)",
                              f"{f['lab']}/fam_ok.py:wide", "../fam_ok.py:wide", "sub/fam_ok.py:wide", SPEC_DOTS),
                             ("nope", "", "1x4x4 > conv(2,s=3) > flatten > dense(3)", *bad_families)),
            "--sizes": Pool(("4,8",), ("", "0", "-3", "abc", "8,100000")),
            "--channels": Pool((None, "1"), ("0", "-2")),
            "--nets": Pool(("2", "3"), ("0", "-1", "x")),
            "--inputs": Pool(("1", "2"), ("0", "-1")),
            "--draws": Pool(("1", "2"), ("0", "-1")),
            "--seed": Pool((None, "0", "7"), ("x", "1.5", "-1")), "--device": device,
            "--target": Pool((None, "logit", "loss"), ("bogus",)),
            "--init": Pool((None, "he", "torch", "orthogonal"), ("bogus",)),
            "--law-init": Pool((None, "he"), ("bogus",)),
            "--exact-shortcuts": flag,
            "--data": Pool((None, "synthetic"), ("imagenet",)),
            "--data-dir": Pool((None,), (f["missing"],)),
            "--workers": Pool((None, "0"), ("-1", "-2", "x")),
            "--scheduler": Pool((None,), schedulers),
            "--store": store, "--resume": flag,
            "--out": Pool((None, new, "out-{n}"), (f["file"], f["userout"])),
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
            "--workers": Pool((None, "0"), ("-1", "-2")),
            "--store": store, "--resume": flag,
            "--out": Pool((new,), (f["file"],)),
            "--json": flag}, lenient=frozenset({"--draws"})),  # --draws: only factories taking input_shape
        Command(("verify",), {"--scale": "tiny", "--only": "core"}, {
            "--scale": Pool(("tiny",), ("huge",)),
            "--only": Pool(("core",), ("nope",)),
            "--seed": seed, "--device": device,
            "--out": Pool((new,), (f["file"],)),
            "--json": flag,
            "--workers": Pool((None, "0"), ("-1",)),
            "--scheduler": Pool((None,), schedulers),
            "--target": Pool((None,), ("nope.py:missing", "3x8x8 > conv(4,s=3) > flatten > dense(2)")),
            "--input-shape": Pool((None,), ("3,x,4",)),  # without --target: refused
            "--trained": Pool((False,), (True,)),  # without --target: refused
            "--plant-exponent": Pool((None,), ("nan", "inf"))}, refusals_only=True),
        Command(("experiment",), {"which": "first-order", "--out": new}, {
            "which": Pool(("first-order", "dimension", "batchnorm"), ("nope",)),
            "--preset": Pool(("small",), ("huge",)),
            "--out": Pool((new,), (f["file"],)),
            "--workers": Pool((None, "0"), ("-1", "-2")),
            "--scheduler": Pool((None,), schedulers),
            "--data-dir": Pool((None,), (f["missing"],)),
            "--device": device,
            "--arch": Pool((None,), ("nope.py:missing", "hello world")),
            "--seeds": Pool((None,), ("0", "-1")),
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
    if cmd.refusals_only and not any(map(cmd.strict, bad)):  # a valid run takes minutes: force one strict refusal
        strict = [n for n in names if cmd.pools[n].invalid and cmd.strict(n)]
        forced = draw(st.sampled_from(strict))
        if forced not in picked:
            picked.append(forced)
        bad.add(forced)
    chosen = {n: draw(st.sampled_from(cmd.pools[n].invalid if n in bad else cmd.pools[n].valid)) for n in picked}
    return cmd, chosen, any(map(cmd.strict, bad))


_COUNTER = iter(range(10**9))
#: options whose value names a file or folder the command may write
WRITES = ("--out", "--store", "--checkpoint")


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if not p.is_dir()}


def _named(argv: list[str], cwd: Path) -> list[Path]:
    """The paths an argument list names for writing (``--out DIR``, ``--store FILE``, ...)."""
    return [(cwd / argv[i + 1]).resolve() for i, w in enumerate(argv[:-1]) if w in WRITES]


def _inside(path: Path, named: list[Path]) -> bool:
    """Whether ``path`` is a named path, lies in a named folder, or is an SQLite companion of a named
    file (``runs.sqlite-wal``, ``-shm``, ``-journal``)."""
    p = path.resolve()
    return any(p == n or n in p.parents or (p.parent == n.parent and p.name.startswith(n.name + "-"))
               for n in named)


@dataclass
class Counts:
    """What a fuzz run tried and found (printed with ``pytest -s``)."""

    runs: int = 0
    bad: int = 0  # argument lists holding at least one bad value
    one_line: int = 0  # exit 2 with exactly one ``advdim: error:`` line
    created: int = 0  # files a refusal created, or a run wrote outside what it named

    def line(self, what: str) -> str:
        return (f"{what}: {self.runs} argument lists, {self.bad} with a bad input, {self.one_line} one-line errors "
                f"(exit 2), {self.created} files wrongly created")


def _invoke(files: dict[str, str], cmd: Command, chosen: dict[str, object], has_invalid: bool,
            counts: Counts) -> tuple[int, list[str]]:
    """Run one argument list in ``files["cwd"]``; its exit status and what it did wrong (see the
    module docstring)."""
    root, cwd = Path(files["root"]), Path(files["cwd"])
    argv = _argv(cmd, chosen, next(_COUNTER))
    users = _user_files(files)
    before = {p: _digest(p) for p in [files["store"], *users]}
    tree = _tree(root)
    threads = torch.get_num_threads()
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            rc = main(argv)
    finally:
        torch.set_num_threads(threads)  # `train` sets its own thread count
    err = stderr.getvalue()
    lines = [line for line in err.splitlines() if line.strip().startswith("advdim: error:")]
    new = sorted(_tree(root) - tree)
    wrong = new if rc == 2 else [p for p in new if not _inside(p, _named(argv, cwd))]
    after = {p: _digest(p) for p in before}
    changed = [p for p in before if before[p] != after[p]]
    counts.runs += 1
    counts.bad += any(v in cmd.pools[n].invalid for n, v in chosen.items())
    counts.one_line += rc == 2 and len(lines) == 1
    counts.created += len(wrong)
    problems = []
    if rc not in DOCUMENTED_EXIT:
        problems.append(f"exit {rc}: {err}")
    if "Traceback" in err or "Traceback" in stdout.getvalue():
        problems.append(f"a traceback:\n{err}")
    if rc == 2 and len(lines) != 1:
        problems.append(f"expected one error line, got\n{err}")
    if rc == 2 and changed:  # refused (1 and 3 ran and judged: their stores hold the cells)
        problems.append(f"refused but changed {changed}")
    if set(users) & set(changed):
        problems.append(f"changed the user's {sorted(set(users) & set(changed))}")
    if wrong:
        problems.append(f"(exit {rc}) created {[str(p.relative_to(root)) for p in wrong]}")
    if has_invalid and rc != 2:
        problems.append(f"an invalid value was accepted (exit {rc}): {err}")
    return rc, [f"advdim {argv}: {p}" for p in problems]


@pytest.fixture
def fuzz_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The fixtures of :func:`_files`, an HTTP server on loopback (waited for 0.3 s as a scheduler),
    and the current folder ``cwd/``."""
    monkeypatch.setattr(advdim.sweep, "SCHEDULER_PROBE_TIMEOUT", 0.3)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files = _files(tmp_path_factory.mktemp("fuzz"), f"tcp://127.0.0.1:{server.server_address[1]}")
        monkeypatch.chdir(files["cwd"])
        yield files
    finally:
        server.shutdown()
        server.server_close()


def test_cli_fuzz(fuzz_files: dict[str, str]) -> None:
    cmds = commands(fuzz_files)
    counts = Counts()

    @settings(max_examples=70, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(invocations(cmds))
    def run(case: tuple[Command, dict[str, object], bool]) -> None:
        cmd, chosen, has_invalid = case
        rc, problems = _invoke(fuzz_files, cmd, chosen, has_invalid, counts)
        event(f"{' '.join(cmd.words)}: exit {rc}")  # pytest --hypothesis-show-statistics
        assert not problems, "\n".join(problems)

    run()
    print("\n" + counts.line("cli fuzz (random argument lists)"))


def test_every_bad_value_once(fuzz_files: dict[str, str]) -> None:
    """Each invalid value of every pool, alone on a command's small valid arguments: one line, exit 2,
    no file created (the lenient options, whose bad values matter only in some contexts, are left out)."""
    counts = Counts()
    problems = [problem for cmd in commands(fuzz_files) for name, pool in cmd.pools.items() if cmd.strict(name)
                for value in pool.invalid for problem in _invoke(fuzz_files, cmd, {name: value}, True, counts)[1]]
    print("\n" + counts.line("cli fuzz (every bad value once)"))
    assert not problems, "\n".join(problems)
