"""aum-replay: record logits during training, replay Area Under the Margin (AUM) afterwards."""

from aum_replay._version import __version__
from aum_replay.compat import AUMCalculator, AUMRecord, DatasetWithIndex
from aum_replay.errors import AumReplayError, FormatError, InputError
from aum_replay.logger import LogitLogger
from aum_replay.replay import ComputeResult, compute

__all__ = [
    "AUMCalculator",
    "AUMRecord",
    "AumReplayError",
    "ComputeResult",
    "DatasetWithIndex",
    "FormatError",
    "InputError",
    "LogitLogger",
    "__version__",
    "compute",
]
