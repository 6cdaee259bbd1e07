"""Who may be served: a non-loopback address needs keys. Light on imports (no web stack, no torch), so
`demi serve` refuses a bad binding at once, before it loads anything."""

from __future__ import annotations


class BindingRefused(ValueError):
    """A non-loopback address without an API key: the model would be open to the whole network."""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or "localhost") only reaches this machine; anything else, a host name
    or the empty string (all interfaces) included, counts as reachable from the network."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None, keys_file: str | None = None) -> None:
    """Refuse to serve a non-loopback address without a (non-blank) API key or a keys file. The CLI checks
    before it loads the model; `run` and `ServerThread` check again with the bound address, so embedding
    the server cannot skip the rule."""
    if api_key is not None and not api_key.strip():
        raise BindingRefused("demi serve: the API key is empty; pass a non-blank --api-key KEY or DEMI_API_KEY")
    if not is_loopback(host) and not api_key and not keys_file:
        raise BindingRefused(
            f"demi serve: binding {host or '(all interfaces)'} (not a loopback address) needs "
            "an API key: pass --keys-file PATH (or set DEMI_KEYS_FILE), or --api-key KEY (or set DEMI_API_KEY)"
        )
