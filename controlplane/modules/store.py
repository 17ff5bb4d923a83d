"""A content-addressed folder of verified modules: a module's file name is its sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


class ModuleStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.wasm"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, content: bytes) -> str:
        """Stores `content` and returns its sha256. Written to a temporary name and renamed, so a reader
        never sees half a module."""
        sha256 = hashlib.sha256(content).hexdigest()
        target = self.path(sha256)
        if not target.is_file():
            handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
            try:
                with os.fdopen(handle, "wb") as out:
                    out.write(content)
                os.chmod(temporary, 0o644)
                os.replace(temporary, target)
            except BaseException:
                os.unlink(temporary)
                raise
        return sha256
