"""Reads a file that users name (a config file, a `file://` module) without ever blocking on it."""

from __future__ import annotations

import errno
import os
import stat

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def read_regular_file(path: str, max_bytes: int) -> bytes:
    """At most `max_bytes + 1` bytes of the file at `path` (one more than allowed, so that the caller can
    tell a file over its limit). Opened without blocking and checked before any read: a FIFO named like a
    config file would otherwise hold the reader until someone writes to it, and a device never ends.
    Raises OSError (with a `strerror` fit for users) for anything but a regular file."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(descriptor, "rb", closefd=True) as handle:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise OSError(errno.EINVAL, f"{kind}, not a regular file")
        return handle.read(max_bytes + 1)
