"""Atomic file writes: the one way the project writes a file that others read (checkpoints, profiles, exports,
results), so that a crash or an error never leaves a half-written file under the final name."""
from __future__ import annotations

import contextlib
import os
import tempfile


def _fsync_folder(folder: str) -> None:
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


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, make_folder: bool = False):
    """Yield a temporary file name beside ``path`` to write to; when the block ends normally the file is fsync'ed,
    given the permissions of a plainly created file (0666 less the umask, not mkstemp's 0600) and renamed over
    ``path`` (the folder fsync'ed too); when it raises, the temporary file is removed and ``path`` is untouched.

    Args:
        make_folder: create ``path``'s folder first (otherwise it must exist).
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if make_folder:
        os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(name)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial" + suffix)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        _fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_partial_write(name: str, target: str) -> bool:
    """Whether the file ``name`` is a temporary that ``atomic_write`` left for ``target`` (a killed process)."""
    return name.startswith(f".{target}.") and ".partial" in name
