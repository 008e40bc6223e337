"""The command-line side shared by the two report commands, ``advdim verify`` (``advdim._verify_cli``)
and ``advdim measure`` (``advdim.measure``): the reproducing command line, the verdict table on the
terminal, the report folder and the device in words.

Nothing heavy is imported at module level (``advdim --help`` must not import torch): the helpers
import what they need when called.
"""

from __future__ import annotations

import shlex
from typing import Any

from advdim.errors import AdvdimError

COLUMNS = ["#", "claim", "paper", "predicted", "measured", "interval", "verdict"]


def command_line(command: str, *args: str, **options: Any) -> str:
    """The command that reproduces this run, every option spelled out (defaults included), shell-quoted.

    >>> command_line("measure", "m.py:make", input_shape="1,4,4", json=False, scheduler=None)
    'advdim measure m.py:make --input-shape 1,4,4'
    """
    words = ["advdim", command, *args]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


#: the verdict words on the terminal (Rich markup): FAIL in bold red, inconclusive in yellow
STYLES = {"FAIL": "[bold red]FAIL[/]", "pass": "[green]pass[/]", "inconclusive": "[yellow]inconclusive[/]"}


#: the level of a law in a narrow table cell (the full word is in the JSON's ``extra.level``)
SHORT_LEVEL = {"exact": "exact", "wide-limit": "wide-limit", "wide-limit (extrapolated in width)": "wide-limit",
               "approximate": "approx.", "extreme-value fallback": "fallback"}


def predicted_cell(row: dict[str, Any]) -> str:
    """The predicted value with, below it, the level of the law behind it (exact, wide-limit, approx.,
    fallback), so that a reader sees at a glance how far it can be trusted.

    >>> predicted_cell({"predicted": 0.5, "extra": {"level": "wide-limit"}})
    '0.5\\n(wide-limit)'
    """
    from advdim.report import fmt

    level = (row.get("extra") or {}).get("level")
    text = fmt(row.get("predicted"))
    return f"{text}\n({SHORT_LEVEL.get(level, level)})" if level and row.get("predicted") is not None else text


def print_verdicts(title: str, rows: list[dict[str, Any]]) -> None:
    """The verdict table on stdout (one row per verdict: pass, FAIL, inconclusive or n/a).

    On a narrow terminal the verdict word (fixed width, ``advdim.cli.table``) and the numbers are
    never cut; the claim, the paper and the interval fold instead.
    """
    from advdim.cli import out, table
    from advdim.report import fmt, fmt_interval, row_outcome, status

    settings: dict[str, dict[str, Any]] = {
        "#": {"no_wrap": True}, "paper": {"overflow": "fold"}, "predicted": {"no_wrap": True},
        "measured": {"no_wrap": True}, "interval": {"overflow": "fold"},
    }

    styled = []
    for i, r in enumerate(rows):
        st = status(row_outcome(r))
        st = STYLES.get(st, st)
        if (r.get("extra") or {}).get("consistency"):
            st += f" ({r['extra']['consistency']})"
        styled.append([i + 1, r["claim"], r["reference"], predicted_cell(r), fmt(r["measured"]),
                       fmt_interval(r["interval"]), st])
    # a terminal wraps to its width; piped output (logs, CI) gets wide enough rows to stay one line each
    if out.is_terminal:
        out.print(table(title, COLUMNS, styled, settings))
    else:
        from rich.console import Console

        Console(width=220, no_color=out.no_color).print(table(title, COLUMNS, styled, settings))


def report_dir(path: str) -> Any:
    """Create the report folder ``path`` and its ``plots`` folder (the checks of
    :func:`advdim.cli_args.check_out_folder`); the plots of an earlier run are removed."""
    from advdim.cli_args import make_out_folder

    p = make_out_folder(path)
    try:
        (p / "plots").mkdir(exist_ok=True)
    except OSError as e:
        raise AdvdimError(f"cannot create the report folder {path!r}: {e.strerror}") from None
    for old in [*(p / "plots").glob("*.png"), *(p / "plots").glob("*.svg")]:
        old.unlink()  # plots of an earlier run (its records stay in runs.sqlite)
    return p


def device_text(dev: Any) -> str:
    """``"cpu (2 threads)"`` or ``"cuda (<GPU name>)"``."""
    import torch

    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"
