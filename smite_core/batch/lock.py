"""One run per output folder: an exclusive lock on ``OUT`` (POSIX ``flock``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError, reason

LOCK_FILE = ".smite-batch.lock"



class FolderLock:
    """An exclusive lock on ``OUT`` for one run (POSIX ``flock``; no lock where it is missing)."""

    def __init__(self, out: Path):
        self.path, self.fd = Path(out) / LOCK_FILE, None

    def __enter__(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # Windows: one run per folder is up to the user
            return self
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR)
        except OSError as err:
            raise InputError(f"{self.path.parent}: cannot write here ({err.strerror or reason(err, 200)})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise InputError(f"{self.path.parent}: another smite batch is writing there") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
