"""Shared test settings. Test modules keep their own helpers; this file stays small."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
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


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(root, url)``: a real HTTP server process with byte ranges (tests/range_server.py)
    serving ``root``, as an object store serves a bucket; what a test writes under ``root`` is
    at ``url/...``."""
    root = tmp_path_factory.mktemp("served")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("range_server.py")), str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        yield root, f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()
