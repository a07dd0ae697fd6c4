"""Writing a deploy output without leaving a half-written file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_target(path: str, make_folder: bool = False):
    """A temporary file name next to ``path`` (same suffix) to write to; renamed to ``path`` when the block ends
    normally, removed when it raises. ``make_folder`` creates ``path``'s folder first (else it must exist)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if make_folder:
        os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(name)[1]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial" + suffix)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the permissions of a plainly created file, not mkstemp's 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
