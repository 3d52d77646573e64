"""The Webapp connection pool's one rule beyond aiohttp's: a connection that received bytes while
it sat idle in the pool is closed, never reused.

Such bytes answer no request of the gateway's: a Webapp that sent a body after a 204, or a
second answer to one request. aiohttp checks a connection when it goes back to the pool, not
when it is taken out again, so they would be read as the answer to the next request sent on it,
and every later answer on that connection would be one behind (another client's answer). nginx
closes a kept-alive upstream connection that becomes readable while idle, for the same reason.
"""

from __future__ import annotations

import aiohttp
from aiohttp.client_reqrep import ConnectionKey
from aiohttp.connector import Connection
from aiohttp.tracing import Trace


class Connector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that hands out only pooled connections with nothing unread."""

    async def _get(self, key: ConnectionKey, traces: list[Trace]) -> Connection | None:
        while (connection := await super()._get(key, traces)) is not None:
            protocol = connection.protocol
            if protocol is not None and not protocol.should_close:
                return connection
            connection.close()
        return None
