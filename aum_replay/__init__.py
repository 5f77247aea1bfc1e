"""aum-replay: record logits during training, replay Area Under the Margin (AUM) afterwards.

Every name below is imported on first use (PEP 562), so that ``import aum_replay`` and the
``aum-replay`` command pay only for what they use: torch (1.5-2 s) only for the training side
(``LogitLogger``, ``AUMCalculator``, the dataset wrappers), polars and h5py only for a replay,
matplotlib only for plots.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from aum_replay._version import __version__
from aum_replay.errors import (
    AumReplayError,
    FormatError,
    InputError,
    RecordingError,
    RunLockedError,
)

if TYPE_CHECKING:
    from aum_replay.compat import AUMCalculator, AUMRecord, DatasetWithIndex
    from aum_replay.dynamics import dynamics
    from aum_replay.flag import FlagResult, flag
    from aum_replay.logger import LogitLogger
    from aum_replay.plots import plot
    from aum_replay.replay import ComputeResult, compute
    from aum_replay.threshold_data import ThresholdSampleDataset

_LAZY = {
    "AUMCalculator": "aum_replay.compat",
    "AUMRecord": "aum_replay.compat",
    "ComputeResult": "aum_replay.replay",
    "DatasetWithIndex": "aum_replay.compat",
    "FlagResult": "aum_replay.flag",
    "LogitLogger": "aum_replay.logger",
    "ThresholdSampleDataset": "aum_replay.threshold_data",
    "compute": "aum_replay.replay",
    "dynamics": "aum_replay.dynamics",
    "flag": "aum_replay.flag",
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
    "dynamics",
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


#: Functions named like the submodule that holds them.
_SHADOWED = frozenset(name for name, module in _LAZY.items() if module == f"{__name__}.{name}")


class _Package(types.ModuleType):
    """This package's module type: ``aum_replay.flag`` and ``aum_replay.dynamics`` stay the
    functions.

    Importing the submodule ``aum_replay.flag`` makes Python set the package's attribute ``flag``
    to that module, which would shadow the lazily imported function of the same name.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the module is in sys.modules; the attribute is the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
