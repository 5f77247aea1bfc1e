"""The integrations import their framework only when imported themselves, and without it the
error names the extra to install. Each check runs in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow  # every check is a fresh interpreter

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")


def run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_the_package_never_imports_a_framework() -> None:
    code = f"""
    import sys
    import aum_replay, aum_replay.integrations
    from aum_replay import LogitLogger, DatasetWithIndex, ThresholdSampleDataset
    print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))
    """
    assert run(code) == "[]"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("lightning", ["lightning", "pytorch_lightning"], "lightning"),
        ("transformers", ["transformers"], "transformers"),
    ],
)
def test_without_the_framework_the_error_names_the_extra(
    module: str, blocked: list[str], extra: str
) -> None:
    code = f"""
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # as if not installed
    from aum_replay import AumReplayError
    try:
        import aum_replay.integrations.{module}
    except ImportError as exc:
        assert isinstance(exc, AumReplayError), type(exc)
        print(exc)
    """
    message = run(code)
    assert f'pip install "aum-replay[{extra}]"' in message
    assert f"aum_replay.integrations.{module}" in message


def test_lightning_falls_back_to_pytorch_lightning() -> None:
    pytest.importorskip("pytorch_lightning")
    code = """
    import sys
    sys.modules["lightning"] = None
    import pytorch_lightning
    from aum_replay.integrations.lightning import LogitLoggerCallback
    print(issubclass(LogitLoggerCallback, pytorch_lightning.Callback))
    """
    assert run(code) == "True"
