"""Atomic file writes: readers see the old file or the whole new one, never a partial file.

Every file metis writes for others to read (checkpoints, exports, shards, manifests, reports, wavs)
goes through `atomic_write`: the bytes go to a temporary file in the destination folder (the same
file system, so the rename is atomic), are flushed to disk, and the file is renamed over the
destination; on an error the temporary file is removed and any previous file is left intact.
This module imports only the standard library, so any module can use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)  # read once (it can only be read by setting it) so new files get the usual mode
os.umask(_UMASK)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (where the platform lets a folder be opened)."""
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


class atomic_write:
    """Write `path` through a temporary file beside it.

        with atomic_write("out/model.safetensors") as tmp:
            save_file(tensors, tmp)          # any writer that takes a path

    On a clean exit the temporary file is fsync'ed and renamed to `path`; on an exception it is
    removed. `commit()` / `abort()` do the same by hand for writers that outlive one `with` block.
    The destination folder is created if needed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        os.chmod(self.tmp, 0o666 & ~_UMASK)  # mkstemp makes it private (0600); a plain open would not

    def commit(self) -> Path:
        try:
            with open(self.tmp, "rb+") as f:  # most writers close without fsync: push the bytes to disk
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """`obj` as JSON (indent 2 unless `dumps` says otherwise)."""
    return write_text(path, json.dumps(obj, **{"indent": 2, **dumps}))
