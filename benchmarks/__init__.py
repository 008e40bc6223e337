"""Benchmarks (not tests): speed as ratios against baselines measured in the same run."""
