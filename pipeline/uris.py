"""Store URIs fit to print and write: the one place a password or token in a URI is masked. Standard library only,
so the params schema can use it before any heavy import."""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"  # SQLAlchemy's way of showing a URL's password
SECRET_QUERY_KEYS = re.compile(r"(?i)([?&](?:password|passwd|pwd|token|secret|access_key)[^=&]*=)[^&]*")


def masked_uri(uri: str) -> str:
    """`uri` fit to write or print: a password in it (`scheme://user:PASSWORD@host`, `?password=`) becomes ***, and
    so does a bare user part of a server URL (`https://TOKEN@host`), where a token is what it usually holds. Files
    that name the store keep this form; the real URI always comes from params.yaml or the environment."""
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        user, has_password, _ = netloc.rpartition("@")[0].partition(":")
        host = netloc.rpartition("@")[2]
        bare_token = not has_password and parts.scheme in ("http", "https")
        netloc = f"{MASK}@{host}" if bare_token else f"{user}{':' + MASK if has_password else ''}@{host}"
    query = SECRET_QUERY_KEYS.sub(lambda m: m.group(1) + MASK, f"?{parts.query}")[1:] if parts.query else ""
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
