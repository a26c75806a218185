"""The exchange's data folder: its lock, the configuration it runs with, and its store.

A data folder (``etx serve --data DIR``) holds the journal, the snapshots, a SQLite
registry when one is configured by a relative path, and two files of its own:

- ``etx.lock``: an OS file lock (``flock``), taken by whoever writes the folder: a
  running ``etx serve``, or an offline ``etx registry`` operation. The kernel releases
  it when the holder's process dies, however it dies. The file names the holder (pid,
  what it is, and for ``etx serve`` the address it listens on), so a second writer is
  refused at once with a message naming the first, before it has opened or touched
  anything else, and so ``etx registry`` can find the running exchange.
- ``exchange.toml``: a copy of the configuration the exchange last ran with, written by
  ``etx serve`` at each start (owner-only permissions: it names the users' secret
  hashes). Offline tools that rebuild the core from the journal (``etx registry``
  operations and ``etx registry audit --data``) build it from this copy, so they replay
  into the core the exchange itself ran, unless told otherwise with ``--config``.

Readers (``etx registry accounts``/``balances``/``history``/``audit``, ``etx journal
verify``) take no lock: they work on a running exchange's files.

A snapshot process forked by the exchange inherits the lock's descriptor; it closes it
first thing (``close_inherited``), so only the exchange itself holds the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

LOCK_FILE = "etx.lock"
CONFIG_COPY = "exchange.toml"
DEAD_HOLDER_WAIT_S = 2.0  # a holder that died leaves the lock to its dying children this long at most

_held: set[int] = set()  # descriptors of the locks this process holds


class FolderInUse(Exception):
    """Another process holds the data folder's lock."""

    def __init__(self, folder: Path, holder: dict[str, Any]) -> None:
        self.folder = folder
        self.holder = holder
        what = holder.get("what") or "a process"
        pid = holder.get("pid", "?")
        listen = f", listening on {holder['listen']}" if holder.get("listen") else ""
        super().__init__(f"the data folder {folder} is in use by process {pid} ({what}{listen})")


class DataFolder:
    """The lock on one data folder, held from construction until ``release()`` (or the
    process's end). Raises ``FolderInUse`` naming the holder when another process has
    it, and ``OSError`` when the folder cannot be created or written."""

    def __init__(self, path: str | Path, what: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {"pid": os.getpid(), "what": what}
        lock = self.path / LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                holder = _read(fd)
                # A live holder refuses at once. The lock outlives its holder only
                # while the holder's children die with it (a snapshot process), and a
                # reader probing with ``holder()`` holds it for an instant and names
                # nobody: wait for either, briefly.
                if _alive(holder.get("pid")) or time.monotonic() > deadline:
                    os.close(fd)
                    raise FolderInUse(self.path, holder) from None
                time.sleep(0.05)
        self.fd = fd
        _held.add(fd)
        self._write()

    def note(self, **info: Any) -> None:
        """Add to what the lock file says about its holder (e.g. ``listen``)."""
        self.info.update(info)
        self._write()

    def _write(self) -> None:
        data = json.dumps(self.info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd < 0:
            return
        _held.discard(self.fd)
        try:
            os.ftruncate(self.fd, 0)
        finally:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = -1

    def __enter__(self) -> DataFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | Path) -> dict[str, Any] | None:
    """Who holds the data folder's lock now (what its lock file says), or None."""
    lock = Path(path) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return _read(fd)
            raise
        return None  # nobody holds it (closing the descriptor drops the shared lock)
    finally:
        os.close(fd)


def close_inherited() -> None:
    """In a forked child: close the descriptors of the locks the parent holds, so that
    the child never holds them (closing a copy does not release the parent's lock)."""
    for fd in list(_held):
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data) if data else {}
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False  # nobody named: a prober, or a holder that has not written yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_config_copy(folder: str | Path, text: str) -> Path:
    """Write the configuration's text to the folder's copy, atomically, owner-only."""
    path = Path(folder) / CONFIG_COPY
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def config_copy(folder: str | Path) -> Path:
    return Path(folder) / CONFIG_COPY


def registry_url(folder: str | Path, registry: str) -> str:
    """The store a configuration's ``exchange.registry`` names, for this data folder: a
    PostgreSQL URL as it is, a relative SQLite path inside the folder."""
    if registry.startswith(("postgresql://", "postgres://")) or Path(registry).is_absolute():
        return registry
    return str(Path(folder) / registry)


def exchange_address(folder: str | Path, given: str = "") -> tuple[str, int]:
    """Where a tool reaches the exchange: ``given`` (HOST:PORT) when there is one, else
    the address its running ``etx serve`` names in the data folder's lock. ValueError
    (saying what to do) when neither works."""
    where = given
    if not where:
        running = holder(folder)
        if not running or not running.get("listen"):
            raise ValueError(f"no exchange is running on {folder} (give --data DIR, or --exchange HOST:PORT)")
        where = str(running["listen"])
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {where!r}")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"  # the exchange listens everywhere: reach it here
    return host.strip("[]"), int(port)

