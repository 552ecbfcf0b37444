"""Cross-process wake-ups for :class:`~wsgi_deferred.stores.sqlite.SQLiteStore` long polls.

SQLite has no notification between processes (no LISTEN/NOTIFY, no change feed a reader can
block on), so a long poll in one worker of ``gunicorn -w 4`` would only learn of a finish made
by another worker by reading the row again and again. Instead, every process that waits binds
one Unix datagram socket in ``<database>.wake/`` (a directory only the owner may enter); a
process that ends a task sends one byte to each socket there, and the receiving process's
listener thread wakes its waiters, which then read the row once (docs/protocol.md, "Holds").

Datagrams are best effort (a full receive buffer drops them), so waiters still re-read the
row every :data:`FALLBACK_SECONDS`. A socket whose process died refuses the datagram and is
removed by the sender. Where Unix sockets are missing, or the path is too long for one
(``AF_UNIX`` paths are limited to about 100 bytes), the store falls back to polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable

from ..background import start_thread

__all__ = ["FALLBACK_SECONDS", "WakeChannel"]

logger = logging.getLogger("wsgi_deferred")

#: Seconds between two reads of a waited-for row while wake-ups are on (a lost datagram
#: costs at most this).
FALLBACK_SECONDS = 0.5
_MAX_SOCKET_PATH = 100  # bytes; sockaddr_un.sun_path is 104 (BSD) or 108 (Linux)
_SUFFIX = ".sock"


class WakeChannel:
    """This process's end of the wake-up directory of one database."""

    def __init__(self, database_path: str, on_wake: Callable[[], None]) -> None:
        self.directory = database_path + ".wake"
        self.on_wake = on_wake
        self._lock = threading.Lock()
        self._pid = 0
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._sender: socket.socket | None = None
        self._sender_pid = 0
        self._disabled = not hasattr(socket, "AF_UNIX")

    @property
    def listening(self) -> bool:
        """True when this process receives wake-ups (waiters may then poll slowly)."""
        return self._sock is not None and self._pid == os.getpid()

    def listen(self) -> bool:
        """Bind this process's socket and start its listener, once per process."""
        if self.listening or self._disabled:
            return self.listening
        with self._lock:
            if self.listening:
                return True
            self._sock = self._sender = None  # a fork's copies belong to the parent
            path = os.path.join(self.directory, f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}")
            if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
                logger.info("SQLite store: %s too long for a socket; polling instead", path)
                self._disabled = True
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                sock.bind(path)
            except OSError as exc:
                sock.close()
                logger.info("SQLite store: no wake-up socket (%s); polling instead", exc)
                self._disabled = True
                return False
            self._sock, self._path, self._pid = sock, path, os.getpid()
            start_thread(self._receive, name="sqlite-wake", args=(sock,))
            return True

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv(64)
            except OSError:
                return
            if self._sock is not sock:  # close() woke us: this socket is retired
                sock.close()
                return
            with contextlib.suppress(Exception):  # a wake-up must never kill the listener
                self.on_wake()

    def broadcast(self) -> None:
        """Wake every other process waiting on this database (best effort, non-blocking)."""
        try:
            entries = [e.path for e in os.scandir(self.directory) if e.name.endswith(_SUFFIX)]
        except OSError:
            return  # no directory: nobody ever waited
        own = self._path if self.listening else None
        sender = self._sending_socket()
        if sender is None:
            return
        for path in entries:
            if path == own:
                continue  # this process's waiters are woken directly
            try:
                sender.sendto(b"!", path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its process is gone
            except OSError:
                pass  # receive buffer full (it has wake-ups pending anyway), or similar

    def _sending_socket(self) -> socket.socket | None:
        if self._disabled:
            return None
        sender = self._sender
        if sender is None or self._sender_pid != os.getpid():
            with self._lock:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
                self._sender, self._sender_pid = sender, os.getpid()
        return sender

    def close(self) -> None:
        """Stop listening (the store may listen again later) and remove this process's socket."""
        with self._lock:
            sock, path, mine = self._sock, self._path, self._pid == os.getpid()
            self._sock, self._path, self._pid = None, None, 0
        if not mine or sock is None or path is None:
            return
        try:  # wake the listener, which sees its socket retired and closes it
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sender.sendto(b"", path)
            finally:
                sender.close()
        except OSError:
            sock.close()  # the listener's recv then fails and it returns
        with contextlib.suppress(OSError):
            os.unlink(path)
