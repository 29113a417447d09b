"""Atomic file writes: a reader (another rank, a resumed run, a data loader) never sees half a file.

Every file maskinit writes that something else reads back goes through `write_atomically`: the
content goes to a temporary file in the same folder, is flushed to disk, and is renamed over the
target, which the operating system does in one step. A failure leaves the old file as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

Content = str | bytes | Callable


def write_atomically(path: str | Path, content: Content, check: Callable[[Path], None] | None = None,
                     mode: int | None = None) -> Path:
    """Write `content` (text, bytes, or a function writing to a binary file handle) to `path`.

    `check`, when given, is called with the complete temporary file before it is renamed into place;
    whatever it raises stops the write (the old file stays). `mode` sets the file's permissions (the
    temporary file is created readable by its owner only). Raises what the write raised (OSError, or
    torch.save's RuntimeError), with no temporary left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(content):
                content(stream)
            else:
                stream.write(content.encode() if isinstance(content, str) else content)
            stream.flush()
            os.fsync(stream.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        if check is not None:
            check(Path(temporary))
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path
