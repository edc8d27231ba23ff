"""Atomic writes of a few named files into a folder that may hold anything else.

``write_files(folder, {"a.json": b"...", "b.safetensors": b"..."})`` guarantees:

* every other file and subfolder of ``folder`` is left byte for byte (a Trainer ``output_dir``
  with its ``checkpoint-N/`` folders, a ``tokenizer.json`` beside the adapter);
* each named file is either its old content or its complete new content, never a mix: all new
  contents are first written to temporary files in ``folder`` itself (same file system, so the
  final ``os.replace`` is one atomic rename), and only when every one of them is on disk are they
  renamed into place — an interruption while writing leaves every named file as it was;
* nothing stray remains after success, failure or an interruption (temporary files are removed,
  and folders this call created are removed again if the write failed);
* folders and files get the usual permissions (``0o777`` / ``0o666`` minus the umask, so 0755 and
  0644 under umask 022);
* a ``folder`` that is an existing file is refused with a one-line :class:`DestinationError`.

Used by adapter saving (``save_adapter``, ``export_peft``) and meant for any artifact writer.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TEMP_MARK = ".tmp-"


class DestinationError(ValueError):
    """The destination cannot take the files (it is a file, or a named file is a folder)."""


def write_files(folder: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Write ``files`` (name → content) into ``folder`` atomically; return the folder path."""
    dest = Path(folder)
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest} is an existing file, not a folder; choose a folder path")
    for name in files:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise DestinationError(f"{name!r} is not a plain file name")
        if (dest / name).is_dir():
            raise DestinationError(f"{dest / name} is a folder; refusing to replace it with a file")
    created = _make_folders(dest)
    temps: list[Path] = []
    try:
        for name, content in files.items():
            temps.append(write_temp(dest, name, content))
        for tmp, name in zip(temps, files):
            os.replace(tmp, dest / name)
        temps = []
        _fsync_folder(dest)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for made in reversed(created):
            try:
                made.rmdir()  # only if still empty
            except OSError:
                break
        raise
    return dest


def write_file(path: str | os.PathLike, content: bytes) -> Path:
    """Replace one file atomically (see :func:`write_files`); return its path."""
    path = Path(path)
    write_files(path.parent, {path.name: content})
    return path


def write_temp(folder: Path, name: str, content: bytes) -> Path:
    """Write ``content`` to a new temporary file beside ``folder/name`` and flush it to disk."""
    tmp = folder / f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _make_folders(dest: Path) -> list[Path]:
    """Create ``dest`` and missing parents (umask-default mode); return those created, outermost first."""
    missing: list[Path] = []
    p = dest
    while not p.exists():
        missing.append(p)
        p = p.parent
    for m in reversed(missing):
        try:
            m.mkdir()
        except (FileExistsError, NotADirectoryError):
            if not m.is_dir():
                raise DestinationError(f"{m.parent} is not a folder; cannot create {m}") from None
    return list(reversed(missing))


def _fsync_folder(folder: Path) -> None:
    """Make the renames durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
