"""The ``advdim`` command (Typer + Rich).

Every command prints a readable table for people and, with ``--json``, machine-readable JSON on
stdout.  The theory, simulate and empirical layers add their commands through ``register(app)``
in their private ``_cli`` modules, which import nothing heavy at module level: ``advdim --help``,
``advdim arch`` and ``advdim theory`` never import torch, matplotlib, pandas or Dask.

Exit status (``advdim.errors.EXIT_*``):

- 0: done (for ``verify``, ``measure`` and ``simulate``: every judged claim passed, or none was
  judged);
- 1: a judged claim failed;
- 3: no judged claim failed, but some are inconclusive: the interval is too wide to tell the
  prediction from the smallest error the claim must catch (power below 0.8; ``advdim.verdict``);
  a larger budget (more ``--nets`` / ``--draws``, a larger ``--scale``) decides them;
- 2: bad input or an environment fault (a malformed architecture, a missing dataset, an
  unreadable checkpoint, a full disk, an unreachable scheduler, not enough memory, ...): one
  line ``advdim: error: ...`` on stderr, never a traceback;
- 130: interrupted (Ctrl-C or SIGTERM): one line saying what was kept, e.g. ``interrupted: 12
  cells stored; rerun with --resume``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import typer
import typer.core
from rich.table import Table

from advdim.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, AdvdimError, Interrupted

try:  # Typer >= 0.16 vendors click
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - older Typer depends on click
    from click.exceptions import ClickException as _ClickException  # type: ignore[assignment]



class _Group(typer.core.TyperGroup):
    """Keeps a Ctrl-C and an unexpected end of file from Click, which would turn them into a bare
    exit 130 and an "Aborted" (``main`` reports them in one line)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("advdim: interrupted") from None
        except EOFError as e:
            raise AdvdimError(f"unexpected end of a file or of the input{': ' + str(e) if str(e) else ''}") from None


app = typer.Typer(
    cls=_Group,
    name="advdim",
    help="Check how adversarial vulnerability scales with input dimension "
    "(Simon-Gabriel et al., ICML 2019): theory, Monte Carlo simulation and training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
arch_app = typer.Typer(help="Architecture specs and families.", no_args_is_help=True)
app.add_typer(arch_app, name="arch")

from advdim.console import err, out  # noqa: E402 - the consoles live in the core; re-exported here


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "value"):
        return obj.value
    raise TypeError(type(obj).__name__)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def emit_json(obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite floats as null) on stdout."""
    sys.stdout.write(json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=2) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]], settings: dict[str, dict[str, Any]] | None = None
          ) -> Table:
    """A Rich table of ``rows`` under ``columns``; ``settings`` maps a column name to the keyword
    arguments of its ``add_column``.

    Columns every table treats alike: the verdict word is never cut on a narrow terminal (its width
    is fixed at the longest word, "inconclusive"; a consistency note wraps under it), and a long
    claim folds rather than ending in "...".
    """
    defaults: dict[str, dict[str, Any]] = {"verdict": {"width": len("inconclusive")}, "claim": {"overflow": "fold"}}
    t = Table(title=title)
    for c in columns:
        t.add_column(c, **{**defaults.get(c, {}), **(settings or {}).get(c, {})})
    for r in rows:
        t.add_row(*(str(v) for v in r))
    return t


@arch_app.command("show")
def arch_show(
    spec: str = typer.Argument(..., help="family name, family(key=value,...), a spec text 'CxHxW > layer > ...', "
                                         "or file.py:NAME / module:NAME (a user family)"),
    size: int = typer.Option(None, "--size", "-s", help="input side s (inputs are C x s x s); a spec text: its "
                                                         "own size by default"),
    channels: int = typer.Option(None, "--channels", "-c", help="input channels C [default: 3; a spec: its own]"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Print the layer table of a family member or a spec: output shape, in-degree, parameters."""
    from advdim.arch import TargetKind, resolve_target
    from advdim.errors import SpecError

    t = resolve_target(spec)
    if t.kind is TargetKind.SPEC and size is None:
        assert t.base is not None
        s = t.base
    elif size is None:
        raise SpecError(f"the family {t.text!r} needs an input size (--size)")
    else:
        if t.kind is TargetKind.FAMILY and t.member is not None:
            s = t.member.spec(size, 3 if channels is None else channels)
        else:
            s = t.spec(size, channels)
    rows = s.table()
    if as_json:
        emit_json({"spec": s.to_text(), "input_shape": list(s.input_shape), "d": s.d,
                   "params": s.n_params(), "layers": rows, "json": s.to_json()})
        return
    out.print(table(s.to_text(), ["#", "layer", "output shape", "in-degree", "params"],
                    [[r["index"], r["layer"], "x".join(map(str, r["out_shape"])), r["in_degree"], r["params"]]
                     for r in rows]))
    out.print(f"input {'x'.join(map(str, s.input_shape))}: d = {s.d}; parameters: {s.n_params()}")


@arch_app.command("families")
def arch_families(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the registered families with their defaults."""
    from advdim.arch import FAMILIES, family

    rows = [[name, ft.doc, family(name).to_text()] for name, ft in FAMILIES.items()]
    if as_json:
        emit_json([{"family": r[0], "doc": r[1], "default": r[2]} for r in rows])
        return
    out.print(table("families", ["name", "rule", "default"], rows))


_LAYERS = ("advdim.theory._cli", "advdim.simulate._cli", "advdim.empirical._cli", "advdim._verify_cli")
for _name in _LAYERS:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; one line on stderr and a documented exit status for every fault
    of the input or the environment (see the module docstring)."""
    from advdim.alloc import keep_freed_memory

    keep_freed_memory()
    with _sigterm_interrupts():
        try:
            rc = app(args=argv, standalone_mode=False)
        except Interrupted as e:
            err.print(str(e), highlight=False, soft_wrap=True)
            return EXIT_INTERRUPTED
        except KeyboardInterrupt:  # outside a command (while parsing)
            err.print("advdim: interrupted", highlight=False)
            return EXIT_INTERRUPTED
        except AdvdimError as e:
            return _error(str(e))
        except typer.Exit as e:
            return int(e.exit_code)
        except _ClickException as e:  # usage errors: unknown option, bad value, ...
            if type(e).__name__ == "NoArgsIsHelpError":
                e.show()
                return EXIT_BAD_INPUT
            err.print(f"advdim: error: {e.format_message()}", highlight=False, soft_wrap=True)
            return int(e.exit_code)
        except MemoryError:
            return _error("out of memory: use smaller --sizes, fewer --nets or --inputs")
        except OSError as e:  # the environment: a full disk, a read-only folder, a vanished file, ...
            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            return _error(f"{e.strerror or type(e).__name__}{where}: {e}" if not e.strerror else
                          f"{e.strerror}{where}")
        except RuntimeError as e:
            if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
                return _error("the GPU ran out of memory: use smaller --sizes or fewer --nets, or --device cpu")
            raise
        except SystemExit as e:
            return int(e.code or 0)
    return rc if isinstance(rc, int) else 0


def _error(message: str) -> int:
    err.print(f"advdim: error: {' '.join(message.split())}", highlight=False, soft_wrap=True)
    return EXIT_BAD_INPUT


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a command like Ctrl-C does (what is finished is kept; a one-line message)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    sys.exit(main())
