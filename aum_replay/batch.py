"""Validation and normalisation of one logged batch, shared by the logger and the calculator.

Sample ids are normalised here, once, at the boundary: tensors and numpy arrays of integers become
an ``int64`` array, lists of strings an object array of ``str``. Tensors never become dict keys.
Integer ids are stored as ``int64``: an id outside ``[-2**63, 2**63)`` (a ``uint64`` of ``2**63``
or more, a Python int beyond int64) is refused, never wrapped onto another sample's id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from aum_replay.errors import InputError

__all__ = ["check_logits", "check_storable_ids", "check_targets", "normalize_ids"]


def check_logits(logits: Any) -> torch.Tensor:
    """Return ``logits`` detached, after checking it is a float tensor (B, C), C >= 2."""
    if not isinstance(logits, torch.Tensor):
        raise InputError(
            f"logits must be a torch.Tensor of shape (B, C), got {type(logits).__name__}"
        )
    if logits.ndim != 2:
        raise InputError(f"logits must have shape (B, C), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise InputError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[1] < 2:
        raise InputError(
            f"logits need at least 2 classes (columns) for a margin, got shape "
            f"{tuple(logits.shape)}"
        )
    return logits.detach()


def check_targets(targets: Any, rows: int, num_classes: int) -> np.ndarray:
    """Targets as an ``int64`` array of shape (B,), each in ``[0, num_classes)``.

    Empty targets of an empty batch are accepted whatever their dtype (``[]`` is float64 to numpy).
    """
    if rows == 0 and _is_empty(targets):
        return np.zeros(0, dtype=np.int64)
    if isinstance(targets, torch.Tensor):
        if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
            raise InputError(f"targets must hold integer labels, got dtype {targets.dtype}")
        array = targets.detach().cpu().reshape(-1).numpy()
        shape = tuple(targets.shape)
    else:
        array = np.asarray(targets)
        shape = array.shape
        if array.dtype.kind not in "iu":
            raise InputError(f"targets must hold integer labels, got {array.dtype} values")
        array = array.reshape(-1)
    if len(shape) > 1 or len(array) != rows:
        raise InputError(f"targets must have shape ({rows},) to match the logits, got {shape}")
    array = array.astype(np.int64, copy=False)
    bad = np.flatnonzero((array < 0) | (array >= num_classes))
    if len(bad):
        raise InputError(
            f"target {int(array[bad[0]])} (row {int(bad[0])}) is outside [0, {num_classes}) "
            f"for logits with {num_classes} classes"
        )
    return array


def normalize_ids(sample_ids: Any, rows: int) -> tuple[np.ndarray, str]:
    """Sample ids as ``(array, kind)``: ``int64`` (kind ``"int"``) or ``str`` objects (``"str"``).

    Accepts an integer tensor, a numpy array, or a list/tuple of ints or of strings; mixing ints
    and strings, other types, ids outside int64, or a count other than ``rows`` raises
    :class:`InputError`. Empty ids of an empty batch are accepted whatever their dtype.
    """
    if rows == 0 and _is_empty(sample_ids):
        return np.zeros(0, dtype=np.int64), "int"
    if isinstance(sample_ids, torch.Tensor):
        if sample_ids.is_floating_point() or sample_ids.dtype == torch.bool:
            raise InputError(
                f"sample ids must be integers or strings, got dtype {sample_ids.dtype}"
            )
        ids = _int64(sample_ids.detach().cpu().reshape(-1).numpy())
        if sample_ids.ndim > 1:
            raise InputError(f"sample ids must be 1-D, got shape {tuple(sample_ids.shape)}")
        kind = "int"
    elif isinstance(sample_ids, np.ndarray):
        if sample_ids.ndim != 1:
            raise InputError(f"sample ids must be 1-D, got shape {sample_ids.shape}")
        if sample_ids.dtype.kind in "iu":
            ids, kind = _int64(sample_ids), "int"
        elif sample_ids.dtype.kind in "US":
            ids, kind = _strings(sample_ids.tolist()), "str"
        elif sample_ids.dtype.kind == "O":
            ids, kind = normalize_ids(sample_ids.tolist(), rows)
        else:
            raise InputError(
                f"sample ids must be integers or strings, got a {sample_ids.dtype} array"
            )
    elif isinstance(sample_ids, (list, tuple)):
        ids, kind = _from_sequence(sample_ids)
    else:
        raise InputError(
            "sample ids must be a tensor, a numpy array or a list of ints or strings, got "
            f"{type(sample_ids).__name__}"
        )
    if len(ids) != rows:
        raise InputError(f"got {len(ids)} sample ids for {rows} rows of logits")
    return ids, kind


def _from_sequence(values: list[Any] | tuple[Any, ...]) -> tuple[np.ndarray, str]:
    if not values:
        return np.zeros(0, dtype=np.int64), "int"
    if set(map(type, values)) == {int}:  # the common case (ids.tolist()), checked in C
        try:
            return np.array(values, dtype=np.int64), "int"
        except OverflowError:
            pass  # the checks below name the value
    ints = strs = 0
    for v in values:
        if isinstance(v, str):
            strs += 1
        elif (isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))) or (
            isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point()
        ):
            ints += 1
        else:
            raise InputError(f"sample id {v!r} is neither an int nor a str")
    if ints and strs:
        raise InputError("sample ids mix ints and strings in one batch; use one kind per run")
    if strs:
        return _strings(values), "str"
    ints_list = [int(v) for v in values]
    try:
        return np.array(ints_list, dtype=np.int64), "int"
    except OverflowError:
        bad = next(v for v in ints_list if not _INT64_MIN <= v <= _INT64_MAX)
        raise _out_of_range(bad) from None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _out_of_range(value: int) -> InputError:
    return InputError(
        f"sample id {value} is outside the int64 range the shards store "
        "(-2**63 <= id < 2**63); it would wrap onto another id"
    )


def _int64(ids: np.ndarray) -> np.ndarray:
    """Integer ids as ``int64``; a ``uint64`` id of 2**63 or more is refused, not wrapped."""
    if ids.dtype == np.uint64 and len(ids):
        top = int(ids.max())
        if top > _INT64_MAX:
            raise _out_of_range(top)
    return ids.astype(np.int64)


def _is_empty(values: Any) -> bool:
    if isinstance(values, (torch.Tensor, np.ndarray)):
        return values.ndim == 1 and values.shape[0] == 0
    return isinstance(values, (list, tuple)) and len(values) == 0


def check_storable_ids(ids: np.ndarray) -> None:
    """Raise :class:`InputError` for string ids that an HDF5 UTF-8 string cannot hold.

    A NUL character or a lone surrogate would otherwise fail later, in the logger's writer
    thread, and lose the whole epoch.
    """
    joined = "".join(ids)  # one pass in C instead of a check per id
    if "\x00" in joined:
        bad = next(v for v in ids if "\x00" in v)
        raise InputError(f"sample id {bad!r} contains a NUL character, which HDF5 cannot store")
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        bad = next(v for v in ids if not _encodable(v))
        raise InputError(f"sample id {bad!r} cannot be encoded as UTF-8") from None


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    try:
        out[:] = [v.decode() if isinstance(v, bytes) else str(v) for v in values]
    except UnicodeDecodeError as exc:
        raise InputError(f"sample ids given as bytes must be UTF-8: {exc}") from None
    return out
