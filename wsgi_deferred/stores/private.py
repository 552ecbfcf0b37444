"""Private places on a shared disk: the default store's directory and the files in it.

The default SQLite store lives under ``$TMPDIR``, often the world-writable ``/tmp``. There any
local user could read its tasks (request bodies, results, the ``bind`` secret) if its files were
readable, or create the directory first and so own the store (see docs/security.md). So:

* the directory is created ``0700``; one that exists must be a real directory (not a symbolic
  link: opened with ``O_NOFOLLOW``), owned by the current user, else :class:`ConfigurationError`;
  one of ours with a wider mode (an older release made it ``0755``) is narrowed to ``0700``;
* files are created ``0600`` with ``O_EXCL | O_NOFOLLOW`` (never through a planted link). SQLite
  gives its ``-wal`` and ``-shm`` files the mode of the database file, so creating the database
  ``0600`` before SQLite opens it makes all three private.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ..errors import ConfigurationError

__all__ = ["PRIVATE_DIR_MODE", "PRIVATE_FILE_MODE", "create_private_file", "private_directory"]

PRIVATE_DIR_MODE = 0o700  # rwx for the owner only
PRIVATE_FILE_MODE = 0o600  # rw for the owner only
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def private_directory(path: str) -> str:
    """Create *path* (mode 0700) or check that the existing one is private and ours."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, PRIVATE_DIR_MODE)
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        kind = "a symbolic link" if os.path.islink(path) else "not a directory we can open"
        raise ConfigurationError(
            f"refusing the store directory {path}: it is {kind} ({exc.strerror}); remove it "
            "or set store= to a path of your own"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISDIR(info.st_mode):
            raise ConfigurationError(f"refusing the store directory {path}: not a directory")
        if uid is not None and info.st_uid != uid:
            raise ConfigurationError(
                f"refusing the store directory {path}: it belongs to uid {info.st_uid}, not to "
                f"this process's uid {uid}; another user may have created it to read or plant "
                "tasks. Remove it or set store= to a path of your own"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(fd, PRIVATE_DIR_MODE)  # ours, but readable by others: narrow it
    finally:
        os.close(fd)
    return path


def create_private_file(path: str) -> bool:
    """Create an empty file at *path* with mode 0600 unless something is already there.
    Return True when this call created it. Never follows a symbolic link at *path*: a
    link (even a dangling one) counts as "already there" and is left to the caller."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True
