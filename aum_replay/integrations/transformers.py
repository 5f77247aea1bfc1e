"""Hugging Face ``Trainer``: record every training forward's logits with ``LogitLoggerCallback``.

``pip install "aum-replay[transformers]"`` (transformers and accelerate).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from aum_replay.errors import InputError
from aum_replay.integrations._common import check_logger_options, missing_extra

try:
    import transformers
except ImportError:
    raise missing_extra(
        "aum_replay.integrations.transformers", "transformers", "transformers"
    ) from None

__all__ = ["LogitLoggerCallback", "LogitLoggerTrainerMixin"]


class LogitLoggerCallback(transformers.TrainerCallback):
    """Record the logits, labels and sample ids of every training forward with a ``LogitLogger``.

    ``Trainer(..., callbacks=[LogitLoggerCallback("runs/exp1")])`` writes one shard per epoch and
    rank into ``runs/exp1``, as :class:`aum_replay.LogitLogger` does in a hand-written loop.

    The dataset must carry each sample's id in a column (``id_column``, default ``"sample_id"``;
    ints or strings) and the Trainer must keep it: ``TrainingArguments(...,
    remove_unused_columns=False)``, since the Trainer drops every column that the model's
    ``forward`` does not name. (With a ``datasets.Dataset``, remove the columns the model does not
    take yourself, e.g. the raw text after tokenising.)

    How the rows are captured
    -------------------------
    A ``TrainerCallback`` is never shown the logits, so the callback installs two hooks on the model
    (when the Trainer is built, ``on_init_end``, or at the latest ``on_train_begin``):

    - a forward *pre*-hook pops the id column from the model's keyword inputs - always, also in
      evaluation and prediction, so the model never sees it - and keeps the ids and
      ``labels`` (``label_column``) of a training forward: the model in training mode with grad
      enabled, between ``on_train_begin`` and ``on_train_end``;
    - a forward hook takes the logits from that forward's output (``output.logits``,
      ``output["logits"]``, or the tuple's second element when labels were given, else its first)
      and logs them with those ids and labels.

    Nothing in ``Trainer`` needs subclassing. :class:`LogitLoggerTrainerMixin` is optional: the
    Trainer has no exception event, so without it an exception out of ``train()`` leaves the
    unfinished epoch unpublished (it is discarded by the next ``train()`` or at exit; published
    epochs are intact) and the writer thread running until then; the mixin discards it at once.

    Behaviour
    ---------
    - The epoch is ``int(state.epoch)`` at ``on_epoch_begin`` (the Trainer's fractional epoch
      counts optimizer steps); rank and world size are ``args.process_index`` and
      ``args.world_size``, from the Trainer's distributed state.
    - Gradient accumulation: every micro-batch is one forward, recorded once. Evaluation passes
      run the model in eval mode under ``no_grad`` and are never recorded.
    - ``resume_from_checkpoint``: the run directory is continued; an epoch trained again replaces
      its shard (with a warning), never doubles. From a mid-epoch checkpoint the Trainer skips the
      batches already done, so that epoch's shard holds the rest of the epoch only: prefer
      ``save_strategy="epoch"``.
    - Mixed precision (``fp16``/``bf16``): the logits are recorded as the model returns them
      (accelerate converts outputs to float32), bit-exact.
    - Not supported: ``label_smoothing_factor > 0`` or a ``compute_loss_func``, with which the
      Trainer pops the labels before the forward (the callback then raises).

    Parameters
    ----------
    run_dir
        The run directory (created if missing; an existing one is resumed).
    id_column
        The input column with the sample ids (default ``"sample_id"``).
    label_column
        The input with the labels (default ``"labels"``, what the Trainer's collators produce).
    logits_key
        Where the logits are in the model's output (default ``"logits"``).
    **logger_options
        Passed to :class:`aum_replay.LogitLogger` (``storage``, ``compression``, ``chunk_bytes``,
        ``max_pending``, ``metadata``, ``threshold_samples``); ``rank`` and ``world_size`` come from
        the Trainer.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        id_column: str = "sample_id",
        label_column: str = "labels",
        logits_key: str = "logits",
        **logger_options: Any,
    ) -> None:
        self.run_dir = run_dir
        self.id_column, self.label_column, self.logits_key = id_column, label_column, logits_key
        self.logger_options = check_logger_options(logger_options)
        self.logger: Any = None  # the LogitLogger, from on_train_begin to on_train_end
        self._epoch = 0
        self._epoch_open = False
        self._pending: tuple[Any, Any] | None = None
        self._hooked: dict[int, tuple[Any, Any]] = {}  # id(model) -> hook handles

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if model is not None:
            self._install(model)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        from aum_replay.logger import LogitLogger

        if self.logger is not None:  # a train() that raised: its unfinished epoch is dropped
            self.abort()
        if model is None:
            raise InputError("the Trainer passed no model to on_train_begin")
        self._install(model)  # also a model made by model_init
        self.logger = LogitLogger(
            self.run_dir,
            rank=args.process_index,
            world_size=args.world_size,
            **self.logger_options,
        )

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._epoch = math.floor((state.epoch or 0) + 1e-9)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.logger is not None:
            self.logger.end_epoch()
            self._epoch_open = False

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        logger, self.logger = self.logger, None
        self._pending, self._epoch_open = None, False
        if logger is not None:
            logger.close()

    # ------------------------------------------------------------------ public helpers
    def abort(self) -> None:
        """Discard the unfinished epoch (published epochs stay) and stop the logger."""
        logger, self.logger = self.logger, None
        if logger is not None:
            if self._epoch_open:
                warnings.warn(
                    f"{self.run_dir}: training did not finish; epoch {self._epoch} is not "
                    "published, earlier epochs are intact",
                    stacklevel=2,
                )
            logger.abort()
        self._pending, self._epoch_open = None, False

    def remove_hooks(self) -> None:
        """Take the hooks off every model they were installed on (the id column then reaches
        the model's ``forward`` again)."""
        for pre, post in self._hooked.values():
            pre.remove()
            post.remove()
        self._hooked.clear()

    # ------------------------------------------------------------------ hooks
    def _install(self, model: torch.nn.Module) -> None:
        if id(model) in self._hooked:
            return
        pre = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        post = model.register_forward_hook(self._after_forward)
        self._hooked[id(model)] = (pre, post)

    def _before_forward(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        ids = kwargs.pop(self.id_column, None)
        self._pending = None
        if self.logger is None or not module.training or not torch.is_grad_enabled():
            return args, kwargs
        if ids is None:
            raise InputError(
                f"the training batch has no {self.id_column!r} column (inputs: {sorted(kwargs)}): "
                "give the dataset a sample-id column and pass "
                "TrainingArguments(remove_unused_columns=False), or set id_column="
            )
        labels = kwargs.get(self.label_column)
        if labels is None:
            raise InputError(
                f"the training forward has no {self.label_column!r} input: the Trainer pops the "
                "labels with label_smoothing_factor > 0 or a compute_loss_func, which "
                "LogitLoggerCallback does not support; or set label_column="
            )
        self._pending = (ids, labels)
        return args, kwargs

    def _after_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self.logger is None:
            return
        ids, labels = pending
        if hasattr(output, self.logits_key):
            logits = getattr(output, self.logits_key)
        elif isinstance(output, Mapping):
            logits = output[self.logits_key]
        elif isinstance(output, (tuple, list)):
            logits = output[1] if len(output) > 1 else output[0]  # (loss, logits, ...)
        else:
            logits = output
        self.logger.log(logits, labels, ids, epoch=self._epoch)
        self._epoch_open = True


class LogitLoggerTrainerMixin:
    """Optional: ``class MyTrainer(LogitLoggerTrainerMixin, Trainer)`` discards the unfinished
    epoch of every :class:`LogitLoggerCallback` as soon as ``train()`` raises (the Trainer has
    no exception event a callback could use)."""

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)  # type: ignore[misc]
        except BaseException:
            for callback in self.callback_handler.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, LogitLoggerCallback):
                    callback.abort()
            raise
