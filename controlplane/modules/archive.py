"""Takes a module out of the gzip and tar wrappers that release pages and container image layers use."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib

from controlplane.modules.download import FetchFailed

GZIP_MAGIC = b"\x1f\x8b"


def unpack(content: bytes, max_bytes: int, member: str = "") -> bytes:
    """Gunzips, then takes from a tar archive the file named `member` (any folder), or else its first
    `.wasm` file, or else its first file. Content in neither wrapper comes back as it is."""
    if content.startswith(GZIP_MAGIC):
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(content)) as stream:
                content = stream.read(max_bytes + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise FetchFailed(f"bad gzip data: {exc}") from None
        if len(content) > max_bytes:
            raise FetchFailed(f"unpacked module is larger than the limit of {max_bytes} bytes")
    if len(content) > 262 and content[257:262] == b"ustar":
        return _from_tar(content, max_bytes, member)
    if member:
        raise FetchFailed(f"layer is not a tar archive holding {member}")
    return content


def _from_tar(content: bytes, max_bytes: int, member: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            files = [m for m in archive.getmembers() if m.isfile()]
            if member:
                chosen = [m for m in files if m.name.rsplit("/", 1)[-1] == member]
                if not chosen:
                    raise FetchFailed(f"tar archive holds no {member}")
            else:
                chosen = [m for m in files if m.name.endswith(".wasm")] or files
            if not chosen:
                raise FetchFailed("tar archive holds no file")
            if chosen[0].size > max_bytes:
                raise FetchFailed(f"{chosen[0].name} is larger than the limit of {max_bytes} bytes")
            extracted = archive.extractfile(chosen[0])
            assert extracted is not None
            return extracted.read()
    except tarfile.TarError as exc:
        raise FetchFailed(f"bad tar archive: {exc}") from None
