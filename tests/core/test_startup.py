"""Fast start: the commands that need no numerics import neither torch nor the plotting, table and
cluster stacks (issue 13).  Start-up *time* is measured in ``benchmarks/bench_startup.py``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "matplotlib", "pandas", "dask", "distributed")

_PROBE = """
import json, sys
from advdim.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(m for m in sys.modules if m.split('.')[0] in %r)}))
"""


def _modules_after(args: list[str]) -> tuple[int, set[str]]:
    r = subprocess.run([sys.executable, "-c", _PROBE % (HEAVY + ("sympy", "scipy"),), *args],
                       capture_output=True, text=True, timeout=300)
    last = r.stdout.strip().splitlines()[-1]
    data = json.loads(last)
    return data["rc"], {m.split(".")[0] for m in data["modules"]}


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--help"], set()),
        (["arch", "families"], set()),
        (["arch", "show", "strided(channels=4,final=2)", "--size", "8"], set()),
        (["arch", "show", "3x8x8 > conv(4) > relu > flatten > dense(10)", "--json"], set()),
        (["theory", "dense", "--sizes", "8,16"], {"sympy"}),
        (["theory", "3x8x8 > conv(4) > relu > flatten > dense(10)", "--json"], {"sympy"}),
    ],
)
def test_light_commands_import_no_heavy_stack(args: list[str], allowed: set[str]) -> None:
    rc, modules = _modules_after(args)
    assert rc == 0
    assert modules <= allowed, f"advdim {' '.join(args)} imported {sorted(modules - allowed)}"


def test_public_names_still_resolve() -> None:
    """The lazy package surfaces give the same objects as their private modules."""
    import advdim.empirical
    import advdim.simulate
    import advdim.theory
    from advdim.empirical._train import train
    from advdim.simulate._study import study
    from advdim.theory._law import predict

    import advdim
    from advdim.arch import parse

    assert advdim.parse is parse and advdim.theory.predict is predict
    assert advdim.simulate.study is study and advdim.empirical.train is train
    for pkg in (advdim, advdim.theory, advdim.simulate, advdim.empirical):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        advdim.theory.nope  # noqa: B018
