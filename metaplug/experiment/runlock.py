"""One writer per run directory: an exclusive lock that ``train`` and ``train --resume`` hold.

``RUN_DIR/.lock`` is locked with ``flock`` (``msvcrt.locking`` on Windows) for the whole
life of a run. The operating system releases the lock when its process ends, however it
ends (``kill -9`` included), so the lock of a dead run is never stale: the next writer
simply takes it. While held, the file names its holder (process id, host, command), which
is what a second writer is told.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from metaplug.errors import MetaplugError
from metaplug.experiment.files import RunFileError

LOCK_FILE = ".lock"

UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
"""``flock`` errors of file systems without locks: the run goes on unlocked, with a warning."""

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover  (Windows)
    import msvcrt

    _REGION = 1 << 30  # lock a byte far past the holder's record, which stays readable

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _REGION, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _REGION, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


class RunInUseError(MetaplugError):
    """Another live process is writing the run directory."""


class RunLock:
    """The exclusive lock of ``run_dir``; :meth:`acquire` fails at once if a live process holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock and record this process as its holder, or raise :class:`RunInUseError`."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunFileError(f"cannot lock run directory {self.run_dir}: {exc.strerror or exc}") from exc
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            if exc.errno not in UNSUPPORTED:
                os.close(fd)
                raise RunFileError(f"cannot lock run directory {self.run_dir}: {exc.strerror or exc}") from exc
            warnings.warn(
                f"run directory {self.run_dir} cannot be locked on this file system ({exc.strerror or exc}); "
                "make sure that no other process writes to it",
                stacklevel=2,
            )
            locked = True
        if not locked:
            holder = describe_holder(_read_holder(fd))
            os.close(fd)
            raise RunInUseError(
                f"run directory {self.run_dir} is in use by {holder}; wait for it to finish or stop it, "
                "or choose another --run-dir"
            )
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": _command()}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(record).encode())
        except OSError:
            pass  # the lock holds without the record; a second writer is then told less
        return self

    def release(self) -> None:
        """Clear the holder record and let the next writer in (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)
        except OSError:
            pass  # closing the descriptor releases the lock anyway
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit, the OS releases it anyway
            self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def describe_holder(record: dict[str, Any]) -> str:
    """``process 1234 on host 'gpu1' ('metaplug train ...', since 2026-12-01 21:30:05)``."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return "another process (it is starting up)"
    text = f"process {pid}"
    host = record.get("host")
    if isinstance(host, str) and host != socket.gethostname():
        text += f" on host {host!r}"
    details = []
    if isinstance(record.get("command"), str):
        details.append(repr(record["command"]))
    if isinstance(record.get("started"), (int, float)):
        details.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["started"])))
    return f"{text} ({', '.join(details)})" if details else text


def _command() -> str:
    """How this process was started, shortened: ``metaplug train --seed 1``."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("__main__.py", "metaplug"):
        argv[0] = "metaplug"
    text = " ".join(argv)
    return text if len(text) <= 100 else text[:97] + "..."
