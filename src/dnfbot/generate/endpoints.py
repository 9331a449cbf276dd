"""Where requests to an OpenAI-compatible server go, and with which key: one policy for `synth qa`, the `openai`
answer back end and the servers' bind warnings.

Base URL: the flag or setting, else $OPENAI_BASE_URL, else api.openai.com. Key: $OPENAI_API_KEY only (never from
files or flags). A local server needs no key; a remote one without a key is refused before any request leaves the
machine. "Local" is decided here and nowhere else: localhost (and *.localhost), loopback addresses (127.0.0.0/8,
::1) and, for a client, the unspecified address (0.0.0.0, ::); a server binding anything but loopback is exposed.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

from dnfbot.errors import InputError

OPENAI_URL = "https://api.openai.com/v1"
LOCAL_KEY = "not-needed"  # clients insist on some key; local servers ignore it


def is_loopback(host: str | None) -> bool:
    """localhost (and *.localhost) or a loopback address: reachable from this machine only (a safe bind)."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_local_host(host: str | None) -> bool:
    """A server on this machine, as a client sees it: loopback, or the unspecified address (0.0.0.0, ::) — which
    a client can only reach locally, though a server bound to it listens on every interface."""
    if is_loopback(host):
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_unspecified
    except ValueError:
        return False


def is_local(url: str) -> bool:
    return is_local_host(urlparse(url).hostname)


def api_key() -> str | None:
    return os.environ.get("OPENAI_API_KEY", "").strip() or None


def configured_base_url(given: str | None = None) -> str | None:
    """The base URL the user chose (flag/setting, else $OPENAI_BASE_URL), or None."""
    return (given or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/") or None


def resolve_base_url(given: str | None = None) -> str:
    """The chosen base URL, else api.openai.com; it must be http(s)."""
    url = configured_base_url(given) or OPENAI_URL
    if urlparse(url).scheme not in ("http", "https"):
        raise InputError(f"base URL '{url}' is not an http(s) URL")
    return url


def resolve_api_key(base_url: str) -> str:
    """$OPENAI_API_KEY; required for a remote server, optional (LOCAL_KEY) for a local one."""
    key = api_key()
    if key:
        return key
    if is_local(base_url):
        return LOCAL_KEY
    raise InputError(
        f"OPENAI_API_KEY is not set; it is required for {base_url} "
        "(export it, or point --base-url at a local server)"
    )
