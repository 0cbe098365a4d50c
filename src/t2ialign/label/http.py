"""The HTTP server side of ``t2ialign label serve``: uvicorn's h11 protocol with a deadline for the
request head.

uvicorn times out an idle keep-alive connection only after a first response; a client that connects and
sends nothing, or sends its headers a byte at a time (slowloris), holds a connection forever. Here every
connection must deliver a complete request head within ``head_timeout`` seconds of connecting (and of its
previous response), or it is closed. A slow or unfinished body is the app's to time out (``BodyLimit``).
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEAD_TIMEOUT_SECONDS = 10.0


class HeadTimeoutH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose request head has not arrived within ``head_timeout``."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT_SECONDS  # a subclass per server sets it (see ``protocol``)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._head_timer = None

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()  # no request in progress: nothing to answer, just let the socket go

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a complete request head arrived: the app has it now
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request on this connection gets the same deadline


def protocol(head_timeout: float) -> type[H11Protocol]:
    """The protocol class to pass as ``uvicorn.run(http=...)``."""
    if not 0 < head_timeout <= 3600:
        raise ValueError(f"the head timeout must be in (0, 3600] seconds, got {head_timeout!r}")
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"head_timeout": float(head_timeout)})
