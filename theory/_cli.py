"""CLI commands of advdim.theory (registered on the main app by ``advdim.cli``).

``advdim theory`` prints, for each quantity and size, the most accurate law the toolkit has and
its *level* (:class:`Level`): where an average pool after the first conv makes the wide limit of
``E||d_x f_k||_2^2`` differ from the path sum, the wide-limit law
(:meth:`~advdim.theory.Prediction.wide_grad_sq_norm`) comes first and the path sum is shown beside
it, labelled; ``q = inf`` says whether it is the channel-gate model or the extreme-value fallback.
Everything is read from the :class:`~advdim.theory.Prediction` (its hypotheses, reasons,
``approximate``, the q = inf method), never hard-coded per family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

# the best laws and their levels are core (advdim.theory._best); printed here, and re-exported
from advdim.theory._best import CHANNEL_GATE_BOUND as CHANNEL_GATE_BOUND
from advdim.theory._best import NORM_KEYS as NORM_KEYS
from advdim.theory._best import SQ as SQ
from advdim.theory._best import Law as Law
from advdim.theory._best import Level as Level
from advdim.theory._best import best_laws as best_laws
from advdim.theory._best import norm_law as norm_law
from advdim.theory._best import sq_norm_law as sq_norm_law

if TYPE_CHECKING:
    from advdim.theory import Prediction

DEFAULT_SIZES = (8, 16, 32, 64)


def h1_display(pred: Prediction, laws: dict[str, dict[int, Law]]) -> tuple[str, str]:
    """H1 as the table shows it: ``("yes" | "NO" | "approx.", reason)``.

    H1 is checked unit by unit (every hidden unit followed by a ReLU); where the Prediction still
    says it holds but the path sum is not the wide limit (an average pool after the first conv) or
    the q = inf method names a local break, the row says "approx." with those reasons, so that the
    table agrees with the levels below it.
    """
    if not pred.hypotheses.get("H1", True):
        kept = any(law.level is Level.WIDE for law in laws[SQ].values())
        return "NO", pred.reasons["H1"] + ("; the wide-limit law below keeps what the path sum drops" if kept else "")
    extra: list[str] = []
    pooled = [s for s in pred.sizes if pred.pooling_correction_applies(s)]
    if pooled:
        kept = any(laws[SQ][s].level is Level.WIDE for s in pooled)
        extra.append("an average pool after the first conv couples the merged paths' ReLU gates to the weights, so "
                     "the path sum E||g||_2^2 is only approximate"
                     + (" (the wide-limit law below keeps the cross terms)" if kept else ""))
    from advdim.theory import _maxnorm

    local = {why for s in pred.sizes
             if laws["inf"][s].level is Level.FALLBACK
             and (why := _maxnorm.covers(pred.spec_at(s), pred.init)) is not None and "H1" in why}
    extra += [f"the q = inf model says: {why}" for why in sorted(local)]
    if not extra:
        return "yes", pred.reasons["H1"]
    return "approx.", f"{pred.reasons['H1']}, but " + "; ".join(extra)


def _slope(pred: Prediction, values: list[float | None]) -> float | None:
    if len(pred.sizes) < 2 or any(v is None or not v > 0 for v in values):
        return None
    import numpy as np

    x = np.log([float(pred.dim(s)) for s in pred.sizes])
    return float(np.polyfit(x, np.log([float(v) for v in values if v is not None]), 1)[0])


def token_law(pred: Prediction) -> Any:
    """The exponent-only law of a token-readout target without a path-sum law (None: none applies)."""
    from advdim.theory._tokens import family_law

    if pred.has_law or len(pred.sizes) < 2:
        return None
    try:
        return family_law([[pred.spec_at(s) for s in pred.sizes]])
    except Exception:  # noqa: BLE001 - a target whose specs cannot be built has no token law either
        return None


def record(pred: Prediction, laws: dict[str, dict[int, Law]]) -> dict[str, Any]:
    """The ``--json`` record: the Prediction's own keys with ``best`` (each quantity's best law and level)
    after ``d``, ``approximate``, and the H1 reason made consistent with the levels (:func:`h1_display`)."""
    base = pred.to_json()
    word, reason = h1_display(pred, laws)
    sq_values = [laws[SQ][s].value for s in pred.sizes]
    best = {
        "levels": [lv.value for lv in Level],
        SQ: {str(s): law.to_json() for s, law in laws[SQ].items()},
        "expected_norm": {q: {str(s): law.to_json() for s, law in laws[q].items()} for q in NORM_KEYS},
        "grad_sq_norm_slope": {"value": _slope(pred, sq_values),
                               "path_sum": _slope(pred, [laws[SQ][s].path_sum or laws[SQ][s].value
                                                         for s in pred.sizes])},
    }
    out: dict[str, Any] = {}
    for key, value in base.items():
        out[key] = value
        if key == "d":
            out["best"] = best
    out["reasons"] = {**base["reasons"], "H1": reason}
    out["H1_display"] = word
    out["approximate"] = pred.approximate or (reason if word == "approx." else None)
    token = token_law(pred)
    out["exponent_only"] = None if token is None else {
        "law": token.name(), "level": "exponent only", "exponent": {"1": 0.0, "2": -0.5, "inf": -1.0},
        "tokens": list(token.tokens), "note": "q = inf: up to a sub-polynomial factor, not judged"}
    out["grad_sq_norm_is"] = ("the path sum (symbolic; grad_sq_norm_exact_symbolic says whether the expression "
                              "equals the path sums at every size): best.grad_sq_norm holds the best law and its level")
    return out


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------
def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _value(law: Law, digits: int) -> str:
    if law.value is None:
        return "-"
    return _fmt(law.value, digits) + (f" ± {law.se:.1g}" if law.se else "")


def _levels(laws: dict[int, Law]) -> list[tuple[Level, str, str, list[int]]]:
    """Distinct (level, method, note) of one quantity, with the sizes each holds at."""
    groups: dict[tuple[Level, str, str], list[int]] = {}
    for s, law in laws.items():
        groups.setdefault((law.level, law.method, law.note), []).append(s)
    return [(lv, m, n, sizes) for (lv, m, n), sizes in groups.items()]


def _header(name: str, laws: dict[int, Law]) -> str:
    levels = {law.level for law in laws.values()}
    return f"{name}\n({levels.pop().value})" if len(levels) == 1 else name


def _cell(law: Law, laws: dict[int, Law], digits: int) -> str:
    mixed = len({x.level for x in laws.values()}) > 1
    return _value(law, digits) + (f" ({law.level.value})" if mixed else "")


def print_prediction(pred: Prediction, laws: dict[str, dict[int, Law]], title: str) -> None:
    """The human output of ``advdim theory``: hypotheses, then each quantity's best law first, with its level."""
    from advdim.cli import out, table

    rows = []
    for k in pred.hypotheses:
        word, why = h1_display(pred, laws) if k == "H1" else ("yes" if pred.hypotheses[k] else "NO", pred.reasons[k])
        rows.append([k, word, why])
    out.print(table(title, ["", "holds", "why"], rows))
    if not pred.has_law:
        out.print(pred.reasons.get("law", "no law"), highlight=False)
        token = token_law(pred)
        if token is not None:
            out.print(f"exponent only: {token.name()}: E||d_x f||_q ~ d^(1/q - 1) for q = 1, 2 (slopes +0, -0.5; q = "
                      f"inf: -1 up to a sub-polynomial factor), patch tokens {', '.join(map(str, token.tokens))} at "
                      f"sizes {', '.join(map(str, pred.sizes))} (docs/theory.md, 'Class-token and token-mean "
                      "readouts'; simulate fits it with its 1/N term over sizes with 16 tokens or more)",
                      highlight=False)
        return
    sq = laws[SQ]
    shows_path = any(law.path_sum is not None for law in sq.values())
    sq_rows = []
    for s, law in sq.items():
        row = [s, pred.dim(s), _value(law, 6), law.level.value]
        if shows_path:
            row += [_fmt(law.path_sum if law.path_sum is not None else law.value, 6),
                    "-" if law.path_sum is None or law.value is None else f"{law.value / law.path_sum:.4f}"]
        sq_rows.append(row)
    cols = ["s", "d", "E||g||_2^2 (best law)", "level"] + (["path sum", "best / path sum"] if shows_path else [])
    out.print(table("E||d_x f_k||_2^2, the best law first", cols, sq_rows))
    exact_expr = pred.expr_exact and all(law.level is Level.EXACT for law in sq.values())
    label = ("path sum, exact at every size" if exact_expr else
             "path sum" + ("" if pred.expr_exact else ", bulk law; the exact path sums per size above")
             + ("" if all(law.level is Level.EXACT for law in sq.values()) else
                ": not the best law here, see the levels below"))
    out.print(f"path sum in d: E||d_x f_k||_2^2 = {pred.grad_sq_norm_expr}   ({label})", highlight=False)
    if pred.beta is not None:
        out.print(f"E||d_x f_k||_q ~ d^(1/q - 1/2 + beta/2), beta = {pred.beta:.4g};  q = inf: d^(-1/2 + beta/2)"
                  " sqrt(2 log 2d)", highlight=False)
    if "law" in pred.reasons:
        out.print(f"note: {pred.reasons['law']}", highlight=False)
    size_rows = []
    for s in pred.sizes:
        size_rows.append([s, pred.dim(s), *(_cell(laws[q][s], laws[q], 5) for q in NORM_KEYS),
                          f"{100 * pred.breaking_share.get(s, 0.0):.1f}%"])
    out.print(table("E||d_x f_k||_q, the best law of each q",
                    ["s", "d", *(_header(f"E||g||_{q}", laws[q]) for q in NORM_KEYS), "S-breaking nodes"],
                    size_rows))
    names = {SQ: "E||g||_2^2", "1": "E||g||_1", "2": "E||g||_2", "inf": "E||g||_inf"}
    lines: dict[tuple[Level, str, str, tuple[int, ...]], list[str]] = {}
    for key, name in names.items():
        for level, method, note, sizes in _levels(laws[key]):
            lines.setdefault((level, method, note, tuple(sizes)), []).append(name)
    level_rows = [[", ".join(quantities) + ("" if len(sizes) == len(pred.sizes) else
                                            f" at s = {', '.join(map(str, sizes))}"), level.value, f"{method}: {note}"]
                  for (level, method, note, sizes), quantities in lines.items()]
    out.print(table("levels (exact > wide-limit > approximate > extreme-value fallback > none)",
                    ["quantity", "level", "law, and what is known of its error"], level_rows))
    slope_rows = [[q, _fmt(pred.exponent[q]), "-" if (v := pred.predicted_slope[q]) is None else f"{v:.4f}"]
                  for q in NORM_KEYS]
    out.print(table("exponents in d (path-sum variances)", ["q", "asymptotic exponent", "predicted slope over sizes"],
                    slope_rows))
    if shows_path:
        best = _slope(pred, [law.value for law in sq.values()])
        path = _slope(pred, [law.path_sum if law.path_sum is not None else law.value for law in sq.values()])
        if best is not None and path is not None:
            out.print(f"slope of log E||g||_2^2 against log d over these sizes: {best:.4f} by the best law, "
                      f"{path:.4f} by the path sum (E||g||_q slopes move by about half the difference)",
                      highlight=False)


def register(app: typer.Typer) -> None:
    """Add this layer's commands to ``app``."""

    @app.command("theory")
    def theory(
        target: str = typer.Argument(..., help="family, family(key=value,...), spec text 'CxHxW > layer > ...', "
                                               "file.py:NAME or module:NAME (a user family)"),
        sizes: str = typer.Option(None, "--sizes", help="input sides s (d = C s^2) [default: 8,16,32,64; a spec "
                                                         "text: its own size]"),
        channels: int = typer.Option(None, "--channels", "-c", help="input channels C [default: 3; a spec: its own]"),
        init: str = typer.Option("he", "--init", help="he, torch, glorot, lecun or orthogonal"),
        logit: int = typer.Option(0, "--logit", help="index k of the logit f_k"),
        wide: bool = typer.Option(True, "--wide/--no-wide",
                                  help="compute the wide-limit law of E||g||_2^2 where an average pool after the "
                                       "first conv makes it differ from the path sum (seconds per size, about 20 s "
                                       "at s = 64); --no-wide prints the path sum, marked approximate"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """The law of ||d_x f_k||_q (Theorems 4-5, Corollary 6): for each quantity the most accurate law the
        toolkit has, with its level (exact, wide-limit, approximate, extreme-value fallback, none)."""
        from advdim.theory import predict

        from advdim.arch import TargetKind, resolve_target
        from advdim.cli import emit_json, err
        from advdim.cli_args import parse_sizes

        obj = resolve_target(target)
        size_list = None if sizes is None else parse_sizes(sizes)
        if size_list is None and obj.kind is not TargetKind.SPEC:
            size_list = list(DEFAULT_SIZES)
        if obj.kind is TargetKind.SPEC and size_list is None:  # a spec alone: its own size
            assert obj.base is not None
            pred = predict(obj.base, None, channels, init, logit)
        else:
            pred = predict(obj, size_list, channels, init, logit)
        if wide and err.is_terminal and any(pred.pooling_correction_applies(s) for s in pred.sizes):
            err.print("computing the wide-limit law of E||g||_2^2 (seconds per size; --no-wide skips it)",
                      highlight=False)
        laws = best_laws(pred, wide)
        if as_json:
            emit_json(record(pred, laws))
            return
        print_prediction(pred, laws, f"hypotheses: {obj.to_text()} (init {pred.init})")
