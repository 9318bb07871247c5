"""Replacing a small state file atomically (the ownership record, the drain timers)."""

from __future__ import annotations

import contextlib
import os
import tempfile


def replace_file(path: str | os.PathLike[str], text: str) -> None:
    """Make `path` hold `text` (UTF-8), atomically: readers see the old or the new content.

    The text goes to a new file beside `path` (`tempfile.mkstemp`: mode 0600, a name no
    other file has), is flushed to disk, then renamed over `path`. The folder is created if
    missing.

    Raises:
        OSError: when the folder or the file cannot be written.
    """
    folder, name = os.path.split(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or os.curdir)
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
