"""Atomic file writing: write to a temporary name in the target folder, then rename.

A crash, an interrupt or an error while writing never leaves a half-written file under the
final name, and an existing file is never replaced unless ``overwrite=True``. The results get the
modes a plain ``open()`` / ``mkdir`` would give them under the process's umask (temporary files and
folders are created private, so they are opened up before use: shared render machines and ComfyUI
servers read outputs as other users).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError, OutputExistsError, reason


def check_writable(path: str | os.PathLike, overwrite: bool, kind: str | None = None) -> Path:
    """Refuse an existing ``path`` unless ``overwrite``; return it as a Path.

    ``kind`` (``"file"`` or ``"folder"``): also refuse an existing path of the other kind, which
    ``overwrite`` would not fix.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise InputError(f"{path} is a folder; give the name of a file to write")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(f"{path} is a file; give the name of a folder to write")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")
    return path


def current_umask() -> int:
    """The process's umask, read without changing it where Linux tells it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (restored at once)
    os.umask(mask)
    return mask


def _reason(err: OSError) -> str:
    return err.strerror or reason(err)


# What a writer killed mid-way leaves beside its target ``<name>``: atomic_path's ".<name>.<random>.tmp<suffix>"
# files, atomic_dir's ".<name>.<random>.tmp" and ".<name>.old" folders (the names made below). Group "name":
# the target's name.
TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?:[A-Za-z0-9_]+\.tmp(?:\.\w+)?|old)$")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = check_writable(path, overwrite, "file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as err:
        raise InputError(f"{path}: cannot write here ({_reason(err)})") from err
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.exists() and not overwrite:  # appeared while we were writing
            raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")
        # mkstemp makes the file 0600 (and some writers replace it with their own private file): set the
        # mode a plain open() would have given it, last
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success move it to ``path``.

    With ``overwrite`` an existing folder is replaced only after the new one is complete.
    """
    import shutil

    path = check_writable(path, overwrite, "folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp_path, 0o777 & ~current_umask())  # mkdtemp makes it 0700
    except OSError as err:
        raise InputError(f"{path}: cannot write here ({_reason(err)})") from err
    try:
        yield tmp_path
        if path.exists():
            if not overwrite:
                raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)
