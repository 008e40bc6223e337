"""Start-up time of the ``advdim`` command as a ratio to ``python -c "import torch"`` measured in
the same run (issue 13: ``advdim --help`` <= 0.25x, ``advdim theory dense`` <= 0.6x).

    .venv/bin/python benchmarks/bench_startup.py [--reps 5]   (prints JSON)

Each command is a fresh interpreter; the commands are run round-robin ``reps`` times after one
warm-up round (so that every one sees the same page cache) and the medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "advdim --help": [sys.executable, "-m", "advdim", "--help"],
    "advdim arch show dense --size 16": [sys.executable, "-m", "advdim", "arch", "show", "dense", "--size", "16"],
    "advdim theory dense": [sys.executable, "-m", "advdim", "theory", "dense"],
}
TARGETS = {"advdim --help": 0.25, "advdim theory dense": 0.6}


def _seconds(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv: list[str]) -> dict[str, object]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for rep in range(args.reps + 1):
        for name, cmd in COMMANDS.items():
            t = _seconds(cmd)
            if rep:
                times[name].append(t)
    median = {name: statistics.median(v) for name, v in times.items()}
    base = median["import torch"]
    result: dict[str, object] = {
        "benchmark": "startup", "reps": args.reps, "seconds": median,
        "ratio_to_import_torch": {name: m / base for name, m in median.items()},
        "targets": {name: {"ratio": median[name] / base, "target": t, "met": median[name] / base <= t}
                    for name, t in TARGETS.items()},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
