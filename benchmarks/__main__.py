"""``python -m benchmarks``: run every benchmark module with its defaults (figures as JSON on stdout)."""

from benchmarks import (
    bench_blocks,
    bench_simulate,
    bench_startup,
    bench_targets,
    bench_theory_scaling,
    bench_training,
)

if __name__ == "__main__":
    bench_startup.main([])
    bench_simulate.main([])
    bench_targets.main([])
    bench_blocks.main([])
    bench_training.main([])
    bench_theory_scaling.main([])
