"""aum-replay: record logits during training, replay Area Under the Margin (AUM) afterwards.

The replay side is imported here; the torch side (``LogitLogger``, ``AUMCalculator``, the
dataset wrappers) and the plots on first use (PEP 562), so that ``import aum_replay`` and the
``aum-replay`` command never pay for torch (1.5-2 s) or matplotlib unless they use them.
``flag`` is imported eagerly: its module shares the name, and importing the module later would
shadow the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aum_replay._version import __version__
from aum_replay.errors import (
    AumReplayError,
    FormatError,
    InputError,
    RecordingError,
    RunLockedError,
)
from aum_replay.flag import FlagResult, flag
from aum_replay.replay import ComputeResult, compute

if TYPE_CHECKING:
    from aum_replay.compat import AUMCalculator, AUMRecord, DatasetWithIndex
    from aum_replay.logger import LogitLogger
    from aum_replay.plots import plot
    from aum_replay.threshold_data import ThresholdSampleDataset

_LAZY = {
    "AUMCalculator": "aum_replay.compat",
    "AUMRecord": "aum_replay.compat",
    "DatasetWithIndex": "aum_replay.compat",
    "LogitLogger": "aum_replay.logger",
    "ThresholdSampleDataset": "aum_replay.threshold_data",
    "plot": "aum_replay.plots",
}

__all__ = [
    "AUMCalculator",
    "AUMRecord",
    "AumReplayError",
    "ComputeResult",
    "DatasetWithIndex",
    "FlagResult",
    "FormatError",
    "InputError",
    "LogitLogger",
    "RecordingError",
    "RunLockedError",
    "ThresholdSampleDataset",
    "__version__",
    "compute",
    "flag",
    "plot",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aum_replay' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
