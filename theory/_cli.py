"""CLI commands of advdim.theory (registered on the main app by ``advdim.cli``)."""

from __future__ import annotations

import typer

DEFAULT_SIZES = (8, 16, 32, 64)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


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
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """The law of ||d_x f_k||_q predicted by the paper's path-sum argument (Theorems 4-5, Corollary 6)."""
        from advdim.theory import predict

        from advdim.arch import TargetKind, resolve_target
        from advdim.cli import emit_json, out, table
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
        if as_json:
            emit_json(pred.to_json())
            return
        rows = [[k, "yes" if pred.hypotheses[k] else "NO", pred.reasons[k]] for k in pred.hypotheses]
        out.print(table(f"hypotheses: {obj.to_text()} (init {pred.init})", ["", "holds", "why"], rows))
        if not pred.has_law:
            out.print(pred.reasons.get('law', 'no law'), highlight=False)
            return
        out.print(f"E||d_x f_k||_2^2 = {pred.grad_sq_norm_expr}"
                  + ("" if pred.expr_exact else "   (bulk law; exact path sums below)"), highlight=False)
        if pred.beta is not None:
            out.print(f"E||d_x f_k||_q ~ d^(1/q - 1/2 + beta/2), beta = {pred.beta:.4g};  q = inf: d^(-1/2 + beta/2)"
                      " sqrt(2 log 2d)", highlight=False)
        from advdim.theory._maxnorm import model_applies

        inf_how = ("q = inf by the path-sum model's own law with channel gates (Monte Carlo, docs/theory.md)"
                   if model_applies(pred.spec_at(pred.sizes[0]), pred.init) else "q = inf by extreme values")
        out.print("coordinates ~ N(0, sigma_i^2) with sigma_i^2 the exact path sums; "
                  f"E||g||_q = (sum sigma_i^q E|Z|^q)^(1/q) (delta-method Jensen term), {inf_how}",
                  highlight=False)
        if "law" in pred.reasons:
            out.print(f"note: {pred.reasons['law']}", highlight=False)
        size_rows = []
        for s in pred.sizes:
            size_rows.append([s, pred.dim(s), _fmt(pred.grad_sq_norm(s), 6),
                              *(_fmt(pred.expected_norm(q, s), 5) for q in (1, 2, float("inf"))),
                              f"{100 * pred.breaking_share.get(s, 0.0):.1f}%"])
        out.print(table("finite-d prediction", ["s", "d", "E||g||_2^2", "E||g||_1", "E||g||_2", "E||g||_inf",
                                                 "S-breaking nodes"], size_rows))
        out.print(table("exponents in d", ["q", "asymptotic exponent", "predicted slope over sizes"],
                        [[q, _fmt(pred.exponent[q]), _fmt(pred.predicted_slope[q])] for q in ("1", "2", "inf")]))
