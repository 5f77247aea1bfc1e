"""Shared test settings. Test modules keep their own helpers; this file stays small."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# One torch thread: the suite runs on 2-core machines shared with other work.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci")
