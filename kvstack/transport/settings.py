"""What a cache server accepts and for how long it waits: the knobs against slow and hostile clients.

Kept apart from ``server.py`` (which needs aiohttp) so the CLI and tests can build and check
them anywhere. Defaults suit a LAN server; tests set them small.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvstack.errors import InputError

DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class ServerSettings:
    """``token=None`` disables auth. Timeouts are seconds:

    * ``header_timeout``: from a connection's start (or its last response) to a request's
      complete HTTP headers; a connection that sends no whole request in that time is closed
      (it also closes idle keep-alive connections);
    * ``body_idle_timeout``: longest wait for the next byte of an upload's body;
    * ``body_timeout``: longest an upload's body may take in all.

    ``max_uploads`` uploads run at once; more get 503 with ``Retry-After`` at once (never queued,
    so a crowd of stalled uploads cannot hold file descriptors and staging space).
    ``max_header_bytes`` bounds a stream's JSON header (parsed in a worker thread, never on the
    event loop). ``max_inflation``: decoded bytes per uploaded byte (``wire.Limits``), stricter
    than a reader's default 256 because a real upload decodes to a few times its size at most
    (packed codes are not dequantized) and the server keeps an upload's context ids whole.
    """

    token: str | None = field(default=None, repr=False)  # never in logs
    max_bytes: int = DEFAULT_MAX_BYTES
    max_uploads: int = 64
    header_timeout: float = 30.0
    body_idle_timeout: float = 60.0
    body_timeout: float = 3600.0
    max_header_bytes: int = 16 << 20
    max_inflation: int = 32

    def __post_init__(self) -> None:
        if self.token is not None and (not isinstance(self.token, str) or len(self.token) < 8):
            raise InputError("the server token must be at least 8 characters; generate one with `openssl rand -hex 16`")
        if self.token is not None and not (self.token.isascii() and self.token.isprintable()):
            raise InputError("the server token must be printable ASCII on one line (it travels in an HTTP header)")
        for name in ("max_bytes", "max_uploads", "max_header_bytes", "max_inflation"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name}={value!r}: give a whole number, at least 1")
        for name in ("header_timeout", "body_idle_timeout", "body_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise InputError(f"{name}={value!r}: give seconds, more than 0")
