"""The README runs as written: every code block marked ``<!-- runnable -->`` is executed, in
order, in one empty directory (Python blocks with this interpreter, bash blocks with bash, the
installed ``aum-replay`` on PATH), and must exit 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- runnable -->\n```(python|bash)\n(.*?)\n```", re.DOTALL)


def runnable_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(README.read_text())]


def test_the_readme_marks_its_quick_start_runnable() -> None:
    kinds = [kind for kind, _ in runnable_blocks()]
    assert kinds.count("python") >= 3 and kinds.count("bash") >= 2, kinds


@pytest.mark.slow
def test_runnable_blocks_run_in_order(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    for i, (kind, code) in enumerate(runnable_blocks()):
        command = [sys.executable, "-c", code] if kind == "python" else ["bash", "-eu", "-c", code]
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"README block {i} ({kind}) failed:\n{code}\n{proc.stderr}"
    assert (tmp_path / "results" / "exp1" / "aum_values.csv").is_file()
    assert (tmp_path / "flags" / "mislabeled.csv").is_file()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "aum_histogram.png",
        "data_map.png",
        "flagged_per_class.png",
        "margins.png",
    ]
