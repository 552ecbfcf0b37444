"""Bodies that stay in memory while small and spill to a temporary file past a threshold.

Request bodies are captured into a :class:`SpooledBody` before the ``202`` goes out, and
response bodies are buffered into one while the app runs, so neither a 100 MiB upload nor a
1 GiB report is ever held in memory (the model is waitress's ``buffers.py``).

A finished body can be opened any number of times; each :meth:`SpooledBody.open` returns an
independent reader, so two clients fetching the same result do not share a file position.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["COPY_CHUNK", "SPOOL_THRESHOLD", "SpooledBody"]

#: Bytes kept in memory before a body spills to a temporary file (about 1 MiB).
SPOOL_THRESHOLD = 1 << 20
#: Bytes read or written per step when copying bodies around (64 KiB).
COPY_CHUNK = 64 * 1024


class SpooledBody:
    """A write-once, read-many byte buffer that spills to disk past *threshold* bytes."""

    def __init__(self, threshold: int = SPOOL_THRESHOLD, directory: str | None = None) -> None:
        self.threshold = threshold  # bytes
        self.directory = directory
        self.size = 0  # bytes written so far
        self._chunks: list[bytes] | None = []
        self._file: BinaryIO | None = None
        self._path: str | None = None
        self._lock = threading.Lock()

    # -- writing ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._chunks is not None:
            if self.size + len(data) <= self.threshold:
                self._chunks.append(bytes(data))
                self.size += len(data)
                return
            self._spill()
        assert self._file is not None
        self._file.write(data)
        self.size += len(data)

    def _spill(self) -> None:
        fd, self._path = tempfile.mkstemp(prefix="wsgi-deferred-", dir=self.directory)
        self._file = os.fdopen(fd, "w+b")
        for chunk in self._chunks or ():
            self._file.write(chunk)
        self._chunks = None

    def fill_from(self, stream: BinaryIO, limit: int | None) -> int:
        """Copy up to *limit* bytes (all, when None) from *stream*; return bytes copied."""
        copied = 0
        while limit is None or copied < limit:
            want = COPY_CHUNK if limit is None else min(COPY_CHUNK, limit - copied)
            data = stream.read(want)
            if not data:
                break
            self.write(data)
            copied += len(data)
        return copied

    # -- reading ----------------------------------------------------------------------------

    @property
    def in_memory(self) -> bool:
        return self._chunks is not None

    @property
    def path(self) -> str | None:
        """The spill file's path, or None while the body is in memory."""
        return self._path

    def getvalue(self) -> bytes:
        """The whole body as bytes (only sensible for small bodies)."""
        with self.open() as reader:
            return reader.read()

    def open(self) -> BinaryIO:
        """A new, independent reader positioned at the start of the body."""
        with self._lock:
            if self._chunks is not None:
                return io.BytesIO(b"".join(self._chunks))
            if self._file is None or self._path is None:
                raise ValueError("body was discarded")
            self._file.flush()
            return open(self._path, "rb")

    def iter_chunks(self, chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
        with self.open() as reader:
            while True:
                data = reader.read(chunk_size)
                if not data:
                    return
                yield data

    # -- cleanup ----------------------------------------------------------------------------

    def discard(self) -> None:
        """Free the memory or remove the spill file. Open readers keep working (POSIX)."""
        with self._lock:
            self._chunks = None
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)
                self._path = None

    def __enter__(self) -> SpooledBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
