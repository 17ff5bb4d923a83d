"""How a module url is shown in logs, status views and error messages: without anything that may be a
credential. Works on the text as written, before any parsing, as a malformed url (an unescaped `/` or `?`
in a password, a space) is exactly the one a parser splits in the wrong place and then quotes back."""

from __future__ import annotations

import re

_DIGEST_AT = re.compile(r"@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}")
"""`@sha256:<hex>` in an image reference: a digest, not the end of a login."""
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact(url: str) -> str:
    """The url without user information, query or fragment. Everything up to the last `@` that does not
    start a digest counts as a login, wherever its `/`, `:` or `?` are: a query that holds an `@` is cut
    too much, never too little."""
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(0) if scheme_match else ""
    rest = url[len(scheme) :]
    login_end = 0
    for at in re.finditer("@", rest):
        if not _DIGEST_AT.match(rest, at.start()):
            login_end = at.end()
    rest = rest[login_end:]
    return scheme + re.split(r"[?#]", rest, maxsplit=1)[0]
