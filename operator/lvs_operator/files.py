"""Replacing a small state file atomically (the ownership record, the drain timers).

Written with `os` alone: `tempfile` pulls in `shutil`, `random` and the compression modules,
and under the test VM's emulation importing those cost more than a tenth of `ipvs apply`'s
whole time.
"""

from __future__ import annotations

import contextlib
import itertools
import os

_counter = itertools.count()


def replace_file(path: str | os.PathLike[str], text: str) -> None:
    """Make `path` hold `text` (UTF-8), atomically: readers see the old or the new content.

    The text goes to a new file beside `path` (mode 0600, created exclusively), is flushed to
    disk, then renamed over `path`. The folder is created if missing.

    Raises:
        OSError: when the folder or the file cannot be written.
    """
    folder, name = os.path.split(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue  # left by a crashed process that had the same pid
        break
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            # Without it a crash soon after the rename can leave an empty record behind.
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
