"""The dimension experiment (Section 4.2) on three architectures, init vs trained, for docs/empirical.md.

A reduced `small` preset that fits a loaded 2-core CPU: up-sampled Fashion-MNIST at sides 28, 56 and
112, plain and PGD (eps 0.01) training, 2 seeds, 2 epochs on 1000 images, 300 test points.  The
same analysis as `advdim experiment dimension --arch` (advdim.empirical._dimension).

    python scripts/dimension_zoo.py --out dimension-zoo            # CNN, ResNet, ViT in turn
    python scripts/dimension_zoo.py --only resnet --out dimension-zoo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from advdim.empirical import _experiments as ex

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {"cnn": ex.DEFAULT_ARCH, "resnet": f"{ROOT}/examples/zoo.py:resnet_small",
         "vit": f"{ROOT}/examples/zoo.py:vit_small"}
PRESET = {"base": {**ex.PRESETS["dimension"]["small"]["base"], "n_train": 1000, "epochs": 2, "n_test": 300,
                   "n_eval": 300},
          "sizes": [28, 56, 112], "eps": [0.0, 0.01], "seeds": [0, 1]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="dimension-zoo")
    ap.add_argument("--only", choices=sorted(ARCHS), action="append")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    ex.PRESETS["dimension"]["zoo"] = PRESET
    for name in args.only or list(ARCHS):
        t0 = time.perf_counter()
        summary = ex.run_experiment("dimension", "zoo", Path(args.out) / name, workers=args.workers, progress=False,
                                    arch=ARCHS[name])
        summary["seconds"] = time.perf_counter() - t0
        (Path(args.out) / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{name}: {summary['seconds']:.0f} s", flush=True)
        for line in summary["trends"]:
            if "at init" in line:
                print("  " + line, flush=True)


if __name__ == "__main__":
    main()
