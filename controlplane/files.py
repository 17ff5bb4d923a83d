"""Files replaced whole: a reader, or a restart after a crash, sees the old file or the new one, never half."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: str | Path, content: bytes, mode: int) -> None:
    """Writes to a temporary name beside `target` and renames it over, so that a reader (or a restart after
    a crash) sees the old file or the new one, never half of one."""
    target = Path(target)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
