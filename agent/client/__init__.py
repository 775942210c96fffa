"""The app vendors' library: register with memagent, free memory on request.

Two APIs over one core (:mod:`memagent.client.base`): :class:`Client`,
synchronous (``connect()`` then ``run_forever()``, or ``poll(timeout_ms)``
from an app's own loop), and :class:`AsyncClient` on ``memagent.aio``
(``await run()``).  Both call ``on_trim(level, target_kib)`` for each trim
request and answer with the KiB it returns; both reconnect with a bounded
backoff.  See docs/protocol.md and examples/cache_app.py.
"""

from .async_client import AsyncClient
from .base import CALL_TIMEOUT_MS, DEFAULT_SOCKET, Backoff, ClientError, Disconnected
from .sync import Client

__all__ = ["CALL_TIMEOUT_MS", "DEFAULT_SOCKET", "AsyncClient", "Backoff", "Client",
           "ClientError", "Disconnected"]
