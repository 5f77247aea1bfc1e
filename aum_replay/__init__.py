"""aum-replay: record logits during training, replay Area Under the Margin (AUM) afterwards."""

from aum_replay._version import __version__
from aum_replay.compat import AUMCalculator, AUMRecord, DatasetWithIndex
from aum_replay.errors import (
    AumReplayError,
    FormatError,
    InputError,
    RecordingError,
    RunLockedError,
)
from aum_replay.flag import FlagResult, flag
from aum_replay.logger import LogitLogger
from aum_replay.plots import plot
from aum_replay.replay import ComputeResult, compute
from aum_replay.threshold import ThresholdSampleDataset

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
