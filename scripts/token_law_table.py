"""Monte Carlo check of the token-readout law (docs/theory.md, "Class-token and token-mean readouts").

Real vision transformers built by timm and torchvision, at initialisation, a new model per size and
draw: the exponent of ``E||d_x f_0||_q`` in d fitted with its 1/N term over the sizes with at least
``MIN_TOKENS`` patch tokens, against the law's ``1/q - 1`` (q = inf: with its log factor), and the
same fit with the 4-token size added (why the threshold).  Needs the zoo venv::

    .venv-zoo/bin/python scripts/token_law_table.py [--draws 16] [--json token_law.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np
import torch
from advdim.theory._tokens import MIN_TOKENS, TokenLaw, exponent, finite_size_term, judge
from torch import nn

from advdim.gradients import input_gradient, lp_norm
from advdim.stats import fit_slope

KEYS = ("1", "2", "inf")


def timm_vit(depth: int, patch: int, pool: str = "token", dim: int = 192) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        import timm

        return timm.models.vision_transformer.VisionTransformer(
            img_size=side, patch_size=patch, embed_dim=dim, depth=depth, num_heads=3, num_classes=10,
            global_pool=pool, class_token=pool == "token")
    return build


def tv_vit(depth: int, patch: int, dim: int = 192) -> Callable[[int], nn.Module]:
    def build(side: int) -> nn.Module:
        import torchvision

        m = torchvision.models.VisionTransformer(image_size=side, patch_size=patch, num_layers=depth, num_heads=3,
                                                 hidden_dim=dim, mlp_dim=4 * dim, num_classes=10)
        m.heads.head.reset_parameters()  # torchvision zero-initialises it: the gradient would be 0
        return m
    return build


#: (name, builder, patch side, input sides): the first side has 4 patch tokens, the others >= MIN_TOKENS
CONFIGS = [
    ("timm ViT, 1 block, patch 4, class token", timm_vit(1, 4), 4, (8, 16, 32, 64, 128)),
    ("timm ViT, 4 blocks, patch 4, class token", timm_vit(4, 4), 4, (8, 16, 32, 64, 128)),
    ("timm ViT, 4 blocks, patch 4, token mean", timm_vit(4, 4, "avg"), 4, (8, 16, 32, 64, 128)),
    ("timm vit_tiny (12 blocks, patch 16), class token", timm_vit(12, 16), 16, (32, 64, 128, 256, 512)),
    ("torchvision ViT, 4 layers, patch 4, class token", tv_vit(4, 4), 4, (8, 16, 32, 64, 128)),
]


def measure(build: Callable[[int], nn.Module], sides: tuple[int, ...], draws: int, inputs: int
            ) -> dict[str, np.ndarray]:
    out = {k: np.zeros((draws, len(sides))) for k in KEYS}
    for j, side in enumerate(sides):
        for u in range(draws):
            torch.manual_seed(10_000 * side + u)
            model = build(side).eval()
            g = input_gradient(model, torch.randn(inputs, 3, side, side)).double()
            for k in KEYS:
                out[k][u, j] = float(lp_norm(g, k).mean())
    return out


def row(name: str, patch: int, sides: tuple[int, ...], values: dict[str, np.ndarray], seconds: float) -> dict:
    d = [3 * s * s for s in sides]
    tokens = tuple((s // patch) ** 2 for s in sides)
    law = TokenLaw("class token", tokens)
    idx = law.usable()
    rec: dict = {"model": name, "sides": list(sides), "tokens": list(tokens), "seconds": round(seconds, 1), "q": {}}
    for k in KEYS:
        v = values[k]
        plain = fit_slope([d[i] for i in idx], v[:, idx])
        j = judge(law, d, v, k)
        fit, word, ref, tol = j, j.word, j.reference, j.tol
        with4 = fit_slope(d, v, correction=[1.0 / t for t in tokens])
        term = finite_size_term(law, d, v.mean(axis=0))
        rec["q"][k] = {"means": v.mean(axis=0).tolist(), "term_at_min": term, "law": ref, "exponent": exponent(k),
                       "plain": plain.slope, "corrected": fit.slope,
                       "se": fit.se, "tol": tol, "word": word, "z": (fit.slope - ref) / fit.se,
                       "with_4_tokens": with4.slope, "with_4_z": (with4.slope - ref) / with4.se}
    return rec


def table(rows: list[dict], draws: int, inputs: int) -> str:
    lines = [f"{draws} draws per size (a new model each), {inputs} Gaussian inputs per draw; fit over the sizes with "
             f">= {MIN_TOKENS} patch tokens; z = (corrected - law) / se.", "",
             "| model | patch tokens | q | law | plain slope | corrected slope (se) | z | word "
             "| 1/N term at 16 | with the 4-token size (z) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for k, q in r["q"].items():
            lines.append(f"| {r['model']} | {', '.join(map(str, r['tokens'][1:]))} | {k} | {q['law']:+.3f} | "
                         f"{q['plain']:+.3f} | {q['corrected']:+.3f} ({q['se']:.3f}) | {q['z']:+.1f} | "
                         f"{q['word']} | {q['term_at_min']:+.2f} | "
                         f"{q['with_4_tokens']:+.3f} ({q['with_4_z']:+.1f}) |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--json")
    ap.add_argument("--only", action="append", help="a substring of the model names to run")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    start = time.time()
    for name, build, patch, sides in CONFIGS:
        if args.only and not any(s in name for s in args.only):
            continue
        t0 = time.time()
        values = measure(build, sides, args.draws, args.inputs)
        rows.append(row(name, patch, sides, values, time.time() - t0))
        print(f"{name}: {rows[-1]['seconds']} s", flush=True)
    print(table(rows, args.draws, args.inputs))
    print(f"\n{time.time() - start:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"draws": args.draws, "inputs": args.inputs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
