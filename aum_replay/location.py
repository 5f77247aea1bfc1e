"""Where a run's shards are read from: a local directory, or an fsspec URL.

A run directory given as a URL (``s3://bucket/runs/a``, ``gcs://...``, ``http://host/runs/a/``,
``file:///mnt/runs/a``, or a chained URL such as ``simplecache::s3://...``) is read through
`fsspec <https://filesystem-spec.readthedocs.io>`_, which is imported only then: the replay
reads a v2 shard's manifest and rows at byte offsets (:class:`Blob`), and hands HDF5 an fsspec
file object for what it must read itself (v1 shards, compressed chunks). Credentials and
options come from fsspec's own configuration (environment variables, config files), as for any
fsspec user.

Every reader opens shards through :func:`open_blob`, which gives a local file (``os.pread`` /
``os.preadv``) or a remote one the same interface; nothing else in the package tells them apart.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aum_replay.errors import FormatError, InputError

#: ``scheme://`` or a chained ``a::b://``: what makes a run directory a URL.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(::|://)")


def is_url(value: object) -> bool:
    return isinstance(value, (str, URL)) and bool(_URL.match(str(value)))


@dataclass(frozen=True)
class URL:
    """A run directory or shard given as an fsspec URL; behaves like the part of
    :class:`pathlib.Path` that the readers use (``name``, ``parent``, ``/``, ``str``). It holds
    only the text, so a Dask task opens it again on its worker. A URL with a query string (a
    signed HTTP URL) cannot name a run directory: shard names are appended to the path."""

    url: str

    def __post_init__(self) -> None:
        scheme, sep, rest = self.url.rpartition("://")
        if sep and rest.rstrip("/"):  # "s3://bucket/run/" -> "s3://bucket/run"; "file:///" stays
            object.__setattr__(self, "url", f"{scheme}{sep}{rest.rstrip('/')}")

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str) -> URL:
        return URL(f"{self.url}/{name}")

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def parent(self) -> URL:
        return URL(self.url.rsplit("/", 1)[0])


#: A run directory or shard: a local path or a URL.
Location = Path | URL

#: What the library's functions take for a run directory: a path, or a URL as text.
RunDirLike = str | os.PathLike[str] | URL


def location(value: RunDirLike) -> Location:
    """``value`` as a :class:`URL` if it is one, else as an expanded local path.

    Text that looks like a URL but names an existing local file or directory (a directory
    called ``run::2``) is that path: a local name the user can see wins.
    """
    if isinstance(value, URL):
        return value
    if isinstance(value, str) and is_url(value) and not os.path.lexists(value):
        return URL(value)
    return Path(value).expanduser()


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise InputError(
            "reading a run from a URL needs fsspec: pip install 'aum-replay[remote]' "
            "(and the filesystem's own package, e.g. s3fs for s3://)"
        ) from None
    return fsspec


def _filesystem(url: URL) -> tuple[Any, str]:
    """``(filesystem, path within it)`` of ``url``; fsspec caches filesystem instances."""
    try:
        return _fsspec().core.url_to_fs(url.url)
    except (ImportError, ValueError) as exc:  # an unknown scheme, or its package missing
        raise InputError(f"{url}: fsspec cannot open this URL ({exc})") from None


@dataclass(frozen=True)
class Entry:
    """One file of a run directory: its name, location and whether it is a regular file."""

    name: str
    path: Location
    is_file: bool


def list_dir(run_dir: Location) -> list[Entry]:
    """The entries of ``run_dir``; :class:`FormatError` if it is missing or not a directory."""
    if isinstance(run_dir, Path):
        if not run_dir.exists():
            raise FormatError(f"{run_dir}: run directory does not exist")
        if not run_dir.is_dir():
            raise FormatError(f"{run_dir}: not a directory")
        with os.scandir(run_dir) as entries:
            return [Entry(e.name, Path(e.path), e.is_file()) for e in entries]
    fs, root = _filesystem(run_dir)
    try:
        listed = fs.ls(root, detail=True)
    except FileNotFoundError:
        raise FormatError(f"{run_dir}: run directory does not exist") from None
    except Exception as exc:  # a client's own errors (aiohttp, botocore) are not OSErrors
        raise FormatError(f"{run_dir}: cannot be listed ({_describe(exc)})") from None
    found = []
    for item in listed:
        name = str(item["name"]).rstrip("/").rsplit("/", 1)[-1]
        if str(item["name"]).rstrip("/") == root.rstrip("/"):
            if item.get("type") == "file":  # ls of a file lists the file itself
                raise FormatError(f"{run_dir}: not a directory")
            continue
        found.append(Entry(name, run_dir / name, item.get("type") == "file"))
    return found


class Blob:
    """A shard opened for reading at byte offsets (:class:`LocalBlob`, :class:`RemoteBlob`).

    ``identity`` says which file this is: a reader refuses a file replaced since it was
    validated (a resumed run republishes shards), whose chunks may lie elsewhere.
    """

    path: Location
    size: int
    identity: tuple[Any, ...]

    def pread(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset`` (fewer only at the end of the file)."""
        buffer = bytearray(size)
        return bytes(buffer[: self.readinto(memoryview(buffer), offset)])

    def readinto(self, buffer: memoryview, offset: int) -> int:
        """Fill ``buffer`` from ``offset``; returns the bytes read, fewer only at the end."""
        raise NotImplementedError

    def h5_target(self) -> Any:
        """What ``h5py`` opens: the encoded path (HDF5's own driver), or a file object."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Blob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalBlob(Blob):
    """A local shard: ``os.preadv`` straight into the caller's buffer, the GIL released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        st = os.fstat(self._fd)
        self.size = st.st_size
        # Not st_dev: a Dask worker on another host sees the same shared file under another
        # device number; the path fixes the filesystem, and a republished shard has a new inode
        # and mtime.
        self.identity = (st.st_ino, st.st_size, st.st_mtime_ns)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        got, want = 0, len(buffer)
        while got < want:
            step = os.preadv(self._fd, [buffer[got:]], offset + got)
            if step <= 0:
                break
            got += step
        return got

    def h5_target(self) -> Any:
        return os.fsencode(self.path)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RemoteBlob(Blob):
    """A shard opened through fsspec: its buffered file object, read at offsets."""

    #: fsspec's read-ahead: a block of rows is one request, a manifest one or two.
    BLOCK_SIZE = 8 << 20

    #: Fields of ``fs.info`` that change when an object is rewritten, by filesystem.
    _STAMPS = (
        "mtime", "LastModified", "Last-Modified", "ETag", "etag", "md5Hash", "updated",
        "created", "generation",
    )  # fmt: skip

    def __init__(self, path: URL, handle: Any, details: dict[str, Any]) -> None:
        self.path = path
        self._file: Any = handle
        self.size = int(details["size"])
        stamps = tuple(str(details[k]) for k in self._STAMPS if details.get(k) is not None)
        self.identity = (self.size, *stamps)

    def readinto(self, buffer: memoryview, offset: int) -> int:
        got, want = 0, len(buffer)
        try:
            self._file.seek(offset)
            while got < want:
                data = self._file.read(want - got)
                if not data:
                    break
                buffer[got : got + len(data)] = data
                got += len(data)
        except OSError:
            raise
        except Exception as exc:  # aiohttp's ClientResponseError (a 5xx, a 403) is no OSError
            raise OSError(_describe(exc)) from exc
        return got

    def h5_target(self) -> Any:
        return self._file

    def close(self) -> None:
        if self._file is not None:
            handle, self._file = self._file, None
            with contextlib.suppress(Exception):  # closing a read-only remote file
                handle.close()


def open_blob(path: Location) -> Blob:
    """Open the shard at ``path`` for reading; ``OSError`` if it cannot be (a remote client's
    own exceptions too, so that every reader names the shard in one line)."""
    if isinstance(path, Path):
        return LocalBlob(path)
    fs, inner = _filesystem(path)
    try:
        details = fs.info(inner)
    except OSError:
        raise
    except Exception as exc:
        raise OSError(_describe(exc)) from exc
    if details.get("type") not in (None, "file"):
        raise IsADirectoryError(f"a {details.get('type')}, not a file")
    if not isinstance(details.get("size"), int):  # an HTTP server that gives no length
        raise OSError("the store does not say the file's size")
    try:
        handle = fs.open(inner, "rb", block_size=RemoteBlob.BLOCK_SIZE)
    except OSError:
        raise
    except Exception as exc:
        raise OSError(_describe(exc)) from exc
    return RemoteBlob(path, handle, details)


def _describe(exc: BaseException) -> str:
    """One line for a remote client's error (aiohttp's carry the status and the URL)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def absolute(path: Location) -> Location:
    """``path`` resolved, as a summary records it; a URL as it is."""
    return path.resolve() if isinstance(path, Path) else path


def same(a: Location, b: Location) -> bool:
    """Whether ``a`` and ``b`` name the same directory or file (URLs: the same text)."""
    if isinstance(a, Path) and isinstance(b, Path):
        try:
            return os.path.samefile(a, b)
        except OSError:
            return a.resolve() == b.resolve()
    return str(a) == str(b)


def size(path: Location) -> int:
    if isinstance(path, Path):
        return path.stat().st_size
    fs, inner = _filesystem(path)
    return int(fs.info(inner)["size"])
