"""``python -m benchmarks``: run every benchmark module."""

from benchmarks import bench_simulate

if __name__ == "__main__":
    bench_simulate.main()
