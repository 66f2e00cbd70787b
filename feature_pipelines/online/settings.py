"""Settings helpers shared by the server-backed online stores: profile values that arrive as text, and secrets kept out of text.

Profiles resolve `${VAR}` to strings, so ports and flags may come as "6379" or "true". Passwords
must never reach a repr, an error or a log line: `redact_url` drops a URL's userinfo and `scrub`
replaces a known secret should a client library echo it.
"""

from __future__ import annotations

from feature_pipelines.errors import StoreError


def as_int(value: object, name: str, store: str) -> int:
    """An integer setting given as int or digits, else a StoreError naming the setting and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip().isdigit()):
        raise StoreError(f"{store} online store setting {name} must be an integer, got {value!r}")
    return int(value)


def as_bool(value: object, name: str, store: str) -> bool:
    """A boolean setting given as bool or true/false/1/0/yes/no, else a StoreError naming the setting and the value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise StoreError(f"{store} online store setting {name} must be true or false, got {value!r}")


def as_seconds(value: object, name: str, store: str) -> float:
    """A positive number of seconds given as a number or its text, else a StoreError naming the setting and the value."""
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else float("nan")
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise StoreError(f"{store} online store setting {name} must be a positive number of seconds, got {value!r}")
    return seconds


def scrub(text: str, secret: str | None) -> str:
    """Replace the password, should any library ever echo it, with ***."""
    return text.replace(secret, "***") if secret else text


def redact_url(url: str) -> str:
    """The URL without its userinfo (user:password@); everything up to the last '@' goes, so an unescaped '/' or '@' in a password cannot leak."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable url>"
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"
