"""The API's HTTP server: uvicorn on httptools, with the request head (line + headers) capped.

httptools keeps a request's partial headers in memory until they are complete, so eight
connections sending endless headers held hundreds of MB. ``HeadCappedProtocol`` counts the bytes of
a request head and answers ``431 Request Header Fields Too Large`` (and closes) past
``MAX_HEAD_BYTES``.
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
_DETAIL = (
    b'{"type":"about:blank","title":"Request Header Fields Too Large","status":431,'
    b'"detail":"the request line and headers are limited to %d bytes"}' % MAX_HEAD_BYTES
)


class HeadCappedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head longer than ``MAX_HEAD_BYTES`` with 431."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._heads = 0  # request heads completed on this connection
        self._messages = 0  # requests (head and body) completed on this connection

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a chunk that leaves a head incomplete and completed neither a head nor a message was
        head bytes (a chunk that ends a body and starts the next head is not counted: the next chunk is)."""
        heads, messages = self._heads, self._messages
        super().data_received(data)
        if self._heads != heads or self._messages != messages or not self._in_head or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_HEAD_BYTES:
            self.transport.write(_431 % (len(_DETAIL), _DETAIL))
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes, self._heads = False, 0, self._heads + 1
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._messages = True, self._messages + 1


def server_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn settings of the hub's API (the head-capped protocol; no access log: its arguments cost CPU)."""
    return uvicorn.Config(
        app, host=host, port=port, http=HeadCappedProtocol, log_level="warning", access_log=False, **options
    )
