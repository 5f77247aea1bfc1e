"""Lightning: record every training batch's logits with one callback, ``LogitLoggerCallback``.

Works with the ``lightning`` package (``import lightning as L``) and, when that is not installed,
with the older ``pytorch_lightning`` name; ``pip install "aum-replay[lightning]"``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from aum_replay.errors import InputError
from aum_replay.integrations._common import check_logger_options, missing_extra

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise missing_extra(
            "aum_replay.integrations.lightning", "PyTorch Lightning", "lightning"
        ) from None

__all__ = ["LogitLoggerCallback"]

SOURCES = ("outputs", "forward")


class LogitLoggerCallback(pl.Callback):
    """Record the logits, targets and sample ids of every training batch with a ``LogitLogger``.

    ``Trainer(callbacks=[LogitLoggerCallback("runs/exp1")])`` writes one shard per epoch and rank
    into ``runs/exp1``, exactly as :class:`aum_replay.LogitLogger` does in a hand-written loop, so
    ``aum-replay compute``/``flag``/``plot`` read it unchanged.

    Where the rows come from
    ------------------------
    Sample ids always come from the batch: the last element of a tuple/list batch (a dataset wrapped
    in :class:`aum_replay.DatasetWithIndex` gives ``(x, y, index)``), or ``batch[id_key]`` of a
    dict batch. The logits, by ``source``:

    - ``"outputs"`` (default): ``training_step`` returns a dict with the loss and the logits,
      ``{"loss": loss, "logits": logits}`` (key ``logits_key``). This is explicit - the rows are
      exactly the logits the loss was computed from - and works whatever the module calls inside
      ``training_step``. Targets are ``outputs[targets_key]`` when present, else from the batch.
    - ``"forward"``: no change to the module. The callback installs a forward hook on the
      LightningModule (or on its submodule ``forward_module``, e.g. ``"model"`` when
      ``training_step`` calls ``self.model(x)``) and records the first output of that module in
      each training batch, in training mode only. The output is the logits tensor, the first
      element of a tuple, ``output.logits`` or ``output[logits_key]``. Targets come from the batch.
      Use it when ``training_step`` runs the module once per batch on the whole batch.

    Targets from the batch are the second element of a tuple/list batch, or ``batch[label_key]``.

    Behaviour
    ---------
    - The epoch is ``trainer.current_epoch``; rank and world size are ``trainer.global_rank`` and
      ``trainer.world_size`` (each DDP rank writes its own shard, no collectives).
    - The ``LogitLogger`` is created in ``setup`` of the ``fit`` stage (when the process group
      exists; ``ddp_spawn`` pickles the callback before that), published at the end of each
      training epoch, closed in ``on_train_end``; on an exception (``on_exception``, Ctrl-C
      included) the unfinished epoch is discarded and the published ones are kept.
    - Every training batch is recorded once, also with gradient accumulation (one row per sample
      per micro-batch) and ``limit_train_batches`` (only the batches that ran). Validation, test
      and the sanity check are never recorded.
    - Resuming with ``trainer.fit(..., ckpt_path=...)`` continues the run directory: an epoch that
      is trained again replaces its shard (with a warning), never doubles. Resume from end-of-epoch
      checkpoints: after a mid-epoch checkpoint that epoch's shard holds only the batches that ran
      after the resume.

    Parameters
    ----------
    run_dir
        The run directory (created if missing; an existing one is resumed).
    source
        ``"outputs"`` (default) or ``"forward"``, see above.
    logits_key, targets_key
        Keys of the logits and (optionally) the targets in ``training_step``'s output dict
        (``logits_key`` also picks the logits out of a dict-like forward output).
    id_key, label_key
        Keys of the sample ids and the targets in a dict batch (defaults ``"sample_id"``,
        ``"labels"``).
    forward_module
        With ``source="forward"``: dotted name of the submodule to hook (default: the
        LightningModule itself).
    **logger_options
        Passed to :class:`aum_replay.LogitLogger` (``storage``, ``compression``, ``chunk_bytes``,
        ``max_pending``, ``metadata``, ``threshold_samples``); ``rank`` and ``world_size`` come from
        the trainer.

    Examples
    --------
    >>> class Classifier(L.LightningModule):  # doctest: +SKIP
    ...     def training_step(self, batch, batch_idx):
    ...         x, y, _ids = batch  # DatasetWithIndex(TensorDataset(x, y))
    ...         logits = self.net(x)
    ...         return {"loss": F.cross_entropy(logits, y), "logits": logits}
    >>> L.Trainer(max_epochs=3, callbacks=[LogitLoggerCallback("runs/exp1")])  # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        source: str = "outputs",
        logits_key: str = "logits",
        targets_key: str = "targets",
        id_key: str = "sample_id",
        label_key: str = "labels",
        forward_module: str | None = None,
        **logger_options: Any,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise InputError(f"source must be one of {SOURCES}, not {source!r}")
        if forward_module is not None and source != "forward":
            raise InputError('forward_module is only used with source="forward"')
        self.run_dir = run_dir
        self.source = source
        self.logits_key, self.targets_key = logits_key, targets_key
        self.id_key, self.label_key = id_key, label_key
        self.forward_module = forward_module
        self.logger_options = check_logger_options(logger_options)
        self.logger: Any = None  # the LogitLogger, from setup("fit") on
        self._hook: Any = None
        self._batch: Any = None  # the training batch in flight (forward source)
        self._trainer: Any = None
        self._captured = False
        self._epoch_open = False

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        from aum_replay.logger import LogitLogger

        self._shut(publish=False)  # a previous fit that did not end cleanly
        self.logger = LogitLogger(
            self.run_dir,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            **self.logger_options,
        )
        if self.source == "forward":
            target = pl_module
            if self.forward_module:
                try:
                    target = pl_module.get_submodule(self.forward_module)
                except AttributeError as exc:
                    raise InputError(f"forward_module {self.forward_module!r}: {exc}") from None
            self._hook = target.register_forward_hook(self._on_forward)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch, self._captured, self._trainer = batch, False, trainer

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = None
        if self.logger is None:
            return
        if self.source == "forward":
            if not self._captured:
                name = self.forward_module or "the LightningModule"
                raise InputError(
                    f"no forward call of {name} in training batch {batch_idx}: hook the module "
                    'that computes the logits with forward_module="..." (e.g. "model"), or return '
                    'them from training_step with source="outputs"'
                )
            return
        if not isinstance(outputs, Mapping) or self.logits_key not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise InputError(
                f"training_step must return a dict with the loss and the logits under "
                f"{self.logits_key!r} (got {got}); or use "
                'LogitLoggerCallback(..., source="forward"), which needs no change to the module'
            )
        targets = outputs.get(self.targets_key)
        if targets is None:
            targets = self._from_batch(batch, self.label_key, 1, "targets")
        self._log(trainer, outputs[self.logits_key], targets, batch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.logger is not None:
            self.logger.end_epoch()
            self._epoch_open = False

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._shut(publish=True)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._epoch_open:
            warnings.warn(
                f"{self.run_dir}: training stopped by {type(exception).__name__}; the unfinished "
                "epoch is not published, earlier epochs are intact",
                stacklevel=2,
            )
        self._shut(publish=False)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":  # on_train_end already closed the logger unless fit never trained
            self._shut(publish=True)

    # ------------------------------------------------------------------ helpers
    def _on_forward(self, module: Any, args: Any, output: Any) -> None:
        if self._batch is None or self._captured or not module.training:
            return
        self._captured = True
        batch = self._batch
        logits = output
        if hasattr(output, "logits"):
            logits = output.logits
        elif isinstance(output, Mapping):
            logits = output[self.logits_key]
        elif isinstance(output, (tuple, list)):
            logits = output[0]
        self._log(
            self._trainer, logits, self._from_batch(batch, self.label_key, 1, "targets"), batch
        )

    def _log(self, trainer: Any, logits: Any, targets: Any, batch: Any) -> None:
        ids = self._from_batch(batch, self.id_key, -1, "sample ids")
        self.logger.log(logits, targets, ids, epoch=trainer.current_epoch)
        self._epoch_open = True

    def _from_batch(self, batch: Any, key: str, position: int, what: str) -> Any:
        if isinstance(batch, Mapping):
            if key not in batch:
                raise InputError(
                    f"the batch has no {key!r} key for the {what} (keys: {sorted(batch)}); "
                    "set id_key=/label_key= on LogitLoggerCallback"
                )
            return batch[key]
        if isinstance(batch, (tuple, list)) and len(batch) >= 3:
            return batch[position]
        raise InputError(
            f"cannot find the {what} in a batch of type {type(batch).__name__}: use a tuple batch "
            "(x, y, ..., sample_id), e.g. from DatasetWithIndex, or a dict batch with id_key"
        )

    def _shut(self, *, publish: bool) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        logger, self.logger = self.logger, None
        self._batch, self._epoch_open = None, False
        if logger is not None:
            if publish:
                logger.close()
            else:
                logger.abort()
