"""An exclusive lock held by a living process: ``flock`` on a file that names its holder.

The kernel drops an ``flock`` when its holder ends in any way (kill -9 and power loss included), so
a lock file left behind by a dead process never blocks anyone: the next one simply takes it. The
holder's pid, host, command and start time are written into the file only to name it in messages.
Used for output folders (refuse at once) and for builds of the fused op (wait, with a bound).
"""
from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable


class ProcessLock:
    """``flock(LOCK_EX)`` on ``path``, which is created if needed and removed by :meth:`release`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def try_acquire(self, command: str = "") -> dict | None:
        """Take the lock now; return None when taken, else what its holder wrote (possibly ``{}``).
        Raises OSError when the lock file cannot be created (read-only or vanished folder)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._read_holder(fd)
                os.close(fd)
                return holder
            # The holder before us may have unlinked the file after we opened it: lock the file that is
            # there now, or we would share the lock with whoever creates the next one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return None

    def acquire_waiting(self, limit_s: float, on_wait: Callable[[dict], None] | None = None,
                        poll_s: float = 0.25) -> dict | None:
        """Take the lock, waiting at most ``limit_s`` seconds for a living holder. ``on_wait(holder)`` is
        called once when the wait starts. Returns None when taken, else the holder still in the way."""
        holder = self.try_acquire()
        if holder is None:
            return None
        if on_wait is not None:
            on_wait(holder)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            time.sleep(poll_s)
            holder = self.try_acquire()
            if holder is None:
                return None
        return holder

    @staticmethod
    def _read_holder(fd: int) -> dict:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it, so nobody locks a file we remove
        except OSError:
            pass  # a read-only or vanished folder: the kernel still drops the lock below
        finally:
            os.close(self.fd)
            self.fd = None


def describe_holder(info: dict) -> str:
    """``pid 123 on host, started 2026-12-07T10:00:00+00:00: gandid run`` (or 'process unknown')."""
    if not info:
        return "process unknown"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{info.get('command', '')}").strip().rstrip(":")
