"""The loss-gradient prefactor against the engine's Monte Carlo of ``--target loss`` (docs/theory.md, section 5).

For each member, init and size: the engine draws ``nets`` nets (``inputs`` Gaussian inputs each, labels
uniform) and measures ``||d_x L||_q`` and, with the same seed (the same nets and inputs),
``||d_x f_0||_q``.  Printed per row (a markdown table):

* ``v``: the predicted logit variance (``advdim.theory._loss.logit_law``; ``~`` when approximate);
* ``E||a||`` predicted: ``E||softmax(f) - e_y||_2`` under ``f ~ N(0, v I)``;
* ``paired``: measured ``E||d_x L||_q / E||d_x f_0||_q`` on the same nets, and its se (delta method over
  nets): the loss factor alone, free of the logit-norm prediction's own finite-width error;
* ``loss / theory``: measured ``E||d_x L||_q`` over ``Prediction.expected_loss_norm`` (se), and the
  same over the old prediction ``sqrt(1 - 1/K) E||d_x f_k||_q``.

Usage: ``python scripts/loss_validation.py [--nets 1000] [--inputs 4] [--seed 0] [--quick]``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from advdim.simulate._engine import sample_norms, shortcut_applies
from advdim.theory import predict
from advdim.theory._loss import logit_law, residual_moment

from advdim.arch import family
from advdim.build import Init

CASES = [
    ("dense", {}, (8, 32)),
    ("strided", {}, (8, 32)),
    ("strided", {"padding": "zeros"}, (8, 32)),
    ("avgpool", {}, (8, 32)),
    ("gap", {}, (8, 32)),
]
INITS = ("he", "glorot", "torch")


def ratio_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``mean(num) / mean(den)`` over i.i.d. units and its delta-method standard error."""
    r = float(num.mean() / den.mean())
    return r, float((num - r * den).std(ddof=1) / math.sqrt(num.size) / den.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the first size of each case only")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    print("| member | init | s | v | E||a|| | q | paired L/f [se] | loss / theory [se] | loss / old theory |")
    print("|---|---|---|---|---|---|---|---|---|")
    start = time.time()
    for name, params, sizes in CASES:
        fam = family(name, **params)
        for init in INITS:
            pred = predict(fam, sizes=sizes, init=init, symmetry=False)
            for s in sizes[:1] if args.quick else sizes:
                spec = fam.spec(s)
                law = logit_law(spec, init)
                weight = residual_moment(law.variances).value
                dense = shortcut_applies(spec, Init(init))
                nets, inputs = (args.nets * args.inputs, 1) if dense else (args.nets, args.inputs)
                loss = sample_norms(spec, nets, inputs, args.seed, "loss", init=Init(init))
                logit = sample_norms(spec, nets, inputs, args.seed, "logit", init=Init(init))
                for q in ("1", "2"):
                    lq, fq = loss[q].mean(axis=1), logit[q].mean(axis=1)  # per net: the i.i.d. units
                    paired, paired_se = ratio_se(lq, fq)
                    theory = pred.expected_loss_norm(float(q), s)
                    base = pred.expected_norm(float(q), s)
                    assert theory is not None and base is not None
                    mean, se = float(lq.mean()), float(lq.std(ddof=1) / math.sqrt(lq.size))
                    old = math.sqrt(1 - 1 / spec.n_classes) * base
                    v = f"{'~' if not law.exact else ''}{law.variance:.4g}"
                    print(f"| {fam.to_text()} | {init} | {s} | {v} | {weight:.4f} | {q} | {paired:.4f} "
                          f"[{paired_se:.4f}] | {mean / theory:.4f} [{se / theory:.4f}] | {mean / old:.4f} |",
                          flush=True)
    print(f"\n{time.time() - start:.0f} s; nets {args.nets} x inputs {args.inputs} per cell (dense: "
          f"{args.nets * args.inputs} independent nets, the exact shortcut), seed {args.seed}")


if __name__ == "__main__":
    main()
