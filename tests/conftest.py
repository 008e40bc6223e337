"""Shared test settings: deterministic Hypothesis runs, few threads (CI has 2 cores)."""

import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

settings.register_profile(
    "advdim",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
settings.load_profile("advdim")
