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

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from advdim.theory import Prediction

DEFAULT_SIZES = (8, 16, 32, 64)
#: the quantities of the finite-d prediction, in printing order (JSON keys of ``best``)
SQ = "grad_sq_norm"
NORM_KEYS = ("1", "2", "inf")


class Level(enum.Enum):
    """How far a printed value can be trusted, best first."""

    EXACT = "exact"  # the expectation itself, at every width, given the hypotheses marked as holding
    WIDE = "wide-limit"  # exact as the hidden widths grow; finite widths move it (the note says how)
    APPROXIMATE = "approximate"  # a law with a known or bounded error (the note gives it)
    FALLBACK = "extreme-value fallback"  # q = inf by independent Gaussian coordinates outside the model's envelope
    NONE = "none"  # no law (max pooling, ...): the simulation measures it


@dataclass(frozen=True)
class Law:
    """One quantity at one size: the best value the toolkit has, its level, how it was computed and
    what is known about its error.

    ``path_sum`` is set on ``E||d_x f_k||_2^2`` when the value is not the path sum (the wide-limit
    law), so that both are shown; ``se`` is a Monte Carlo standard error of the value (None: none).
    """

    value: float | None
    level: Level
    method: str
    note: str = ""
    se: float | None = None
    path_sum: float | None = None
    error: float | None = field(default=None)  # a bound on the relative error, where one is documented

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "level": self.level.value, "method": self.method, "note": self.note,
                "se": self.se, "path_sum": self.path_sum, "relative_error_bound": self.error}


# --------------------------------------------------------------------------------------------
# The best law of each quantity
# --------------------------------------------------------------------------------------------
#: the finite-width note of the Gaussian-coordinate laws (docs/theory.md, section 4)
_FINITE_WIDTH = ("exact as the hidden widths grow; at finite width the gradient is a Gaussian scale mixture and "
                 "the value is lower by E tau / sqrt(E tau^2), more in deep narrow nets (docs/theory.md, section 4)")
#: what is known about the independent-Gaussian q = inf law on a conv first layer (docs/theory.md, section 4)
_FALLBACK_ERROR = ("it ignores the correlated, scale-mixed coordinates of a conv first layer: 11-32% low at s = 64 "
                   "on the built-in members, more the larger d and the fewer the channels")
#: the channel-gate model's documented agreement with real nets (docs/theory.md, 'The q = inf prediction')
CHANNEL_GATE_BOUND = 0.02


def sq_norm_law(pred: Prediction, size: int, wide: bool = True) -> Law:
    """The best law of ``E||d_x f_k||_2^2`` at side ``size``.

    The wide-limit law where :meth:`Prediction.pooling_correction_applies` (unless ``wide`` is
    False or the law refuses the size: the path sum then, marked approximate, with the refusal),
    else the exact path sum (approximate with :attr:`Prediction.approximate`'s reason).
    """
    from advdim.errors import AdvdimError

    if not pred.has_law:
        return Law(None, Level.NONE, "none", pred.reasons.get("law", "no law"))
    path = pred.grad_sq_norm(size)
    if pred.pooling_correction_applies(size):
        why = ("an average pool after the first conv merges paths whose ReLU gates are coupled to the weights and to "
               "the gradient: the path sum drops their cross terms")
        if not wide:
            return Law(path, Level.APPROXIMATE, "path sum", f"{why}; the wide-limit law was skipped (--no-wide)")
        from advdim.theory._meanfield import cached_wide_law

        try:
            law = cached_wide_law(pred.spec_at(size), pred.init, pred.logit)
        except (AdvdimError, MemoryError) as e:
            reason = str(e) if str(e) else "out of memory"
            also = f"; and {pred.approximate}" if pred.approximate is not None else ""
            return Law(path, Level.APPROXIMATE, "path sum", f"{why}; the wide-limit law is not shown: {reason}{also}")
        return Law(law.value, Level.WIDE, "wide-limit covariance recursion (theory/_meanfield.py)",
                   f"{why}, which this law keeps; real nets with >= 64 channels agree within 2.5 se, 16 channels "
                   "run 1-3% higher (docs/theory.md, 'Average pooling beyond the path sum')", law.stderr, path)
    if pred.approximate is not None:
        return Law(path, Level.APPROXIMATE, "path sum", pred.approximate)
    return Law(path, Level.EXACT, "path sum on the real graph", "exact at every width")


def norm_law(pred: Prediction, q: str, size: int, sq: Law) -> Law:
    """The best law of ``E||d_x f_k||_q`` (``q`` = ``"1"``, ``"2"`` or ``"inf"``) at side ``size``; ``sq``
    is :func:`sq_norm_law` at that size (its level carries over: the q-norms use the path-sum variances)."""
    from advdim.theory import _maxnorm

    if not pred.has_law:
        return Law(None, Level.NONE, "none", pred.reasons.get("law", "no law"))
    value = pred.expected_norm(q, size)
    spec = pred.spec_at(size)
    if sq.path_sum is not None:  # a wide-limit E||g||_2^2 above the path sum
        off = ("from the path-sum variances, whose sum the wide limit exceeds (E||g||_2^2: best / path sum above); "
               "no wide-limit law of the q-norms yet")
    elif sq.level is Level.APPROXIMATE:
        off = f"from the path-sum variances, themselves approximate: {sq.note}"
    else:
        off = None
    if q == "inf" and not _maxnorm.first_weighted_is_dense(spec):
        why = _maxnorm.covers(spec, pred.init)
        est = _maxnorm.expected_max_norm(spec, pred.init, pred.logit, rel_se=pred.inf_rel_se) if why is None else None
        if est is not None:
            return Law(value, Level.APPROXIMATE, "channel-gate model of the path sum (Monte Carlo)",
                       f"within {100 * CHANNEL_GATE_BOUND:g}% of real nets on the validated members (docs/theory.md, "
                       "'The q = inf prediction for conv nets')" + (f"; {off}" if off else ""),
                       est.se, error=CHANNEL_GATE_BOUND)
        return Law(value, Level.FALLBACK, "independent Gaussian coordinates with the path-sum variances",
                   f"outside the channel-gate model ({why or 'beyond the Monte Carlo budget'}); {_FALLBACK_ERROR}")
    method = ("independent Gaussian coordinates with the path-sum variances" if q == "inf" else
              "Gaussian coordinates with the path-sum variances")
    if off is not None:
        return Law(value, Level.APPROXIMATE, method, off)
    return Law(value, Level.WIDE, method, _FINITE_WIDTH)


def best_laws(pred: Prediction, wide: bool = True) -> dict[str, dict[int, Law]]:
    """Every quantity at every size: ``{"grad_sq_norm" | "1" | "2" | "inf": {size: Law}}``."""
    sq = {s: sq_norm_law(pred, s, wide) for s in pred.sizes}
    out = {SQ: sq}
    for q in NORM_KEYS:
        out[q] = {s: norm_law(pred, q, s, sq[s]) for s in pred.sizes}
    return out


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
