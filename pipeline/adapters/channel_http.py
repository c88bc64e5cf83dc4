"""HTTP over a socket the nginx host opens: the health probes and live mode's admin requests.

Apart from nginx_host, which the CLI imports before it starts the SSH connection (issue 15):
http.client, with the email parser it brings, was 40% of that import, and the connection waits
for it; only the probes and the admin requests need it, imported while the handshake runs.
"""
from __future__ import annotations

import http.client

from pipeline.core.host import NginxHost


class ChannelConnection(http.client.HTTPConnection):
    """http.client over a socket from the nginx host: local, or a direct-tcpip SSH channel."""

    def __init__(self, nginx_host: NginxHost, address: str, port: int, timeout: float) -> None:
        super().__init__(address, port, timeout=timeout)
        self._nginx_host = nginx_host
        self._channel_timeout = timeout   # http.client's own may be None; a channel always has one

    def connect(self) -> None:
        self.sock = self._nginx_host.open_channel(self.host, self.port, self._channel_timeout)
