"""Callbacks that record logits where people train: Lightning and the Hugging Face ``Trainer``.

Each integration is a thin adapter over :class:`aum_replay.LogitLogger` (same shards, atomic epochs,
resume and DDP), in a module of its own that imports its framework only when it is imported:

- :mod:`aum_replay.integrations.lightning`: ``LogitLoggerCallback`` for ``lightning`` (or the older
  ``pytorch_lightning``); ``pip install "aum-replay[lightning]"``.
- :mod:`aum_replay.integrations.transformers`: ``LogitLoggerCallback`` for ``transformers.Trainer``;
  ``pip install "aum-replay[transformers]"``.

This package itself imports nothing.
"""
