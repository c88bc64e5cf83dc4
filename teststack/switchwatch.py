"""Watching a switch from the outside: when the new release first answers its health check, and
when nginx first serves it. Used by the timeliness test and by bench/seed_vs_pipeline.py.

The health URL is polled only once a running container of that release is found on the given
network, which the caller keeps until after `stop()`: no probe goes to an address nobody holds.
"""
from __future__ import annotations

import threading
import time
from typing import List, Optional

import docker
import requests


class Watch:
    """Polls, every 20 ms, the health URL of the container running `version` (only once such a
    container runs on the bench network) and nginx's /, and notes the first success of each."""

    def __init__(self, client: docker.DockerClient, network: str, names: List[str], version: str,
                 nginx_url: str) -> None:
        self.client, self.network, self.names, self.version = client, network, names, version
        self.nginx_url = nginx_url
        self.healthy_at: Optional[float] = None
        self.served_at: Optional[float] = None
        self.failures: List[float] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._health, daemon=True),
                         threading.Thread(target=self._nginx, daemon=True)]

    def start(self) -> "Watch":
        for thread in self._threads:
            thread.start()
        return self

    def __enter__(self) -> "Watch":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    @property
    def delay(self) -> Optional[float]:
        if self.healthy_at is None or self.served_at is None:
            return None
        return self.served_at - self.healthy_at

    def _container_ip(self) -> Optional[str]:
        for name in self.names:
            try:
                container = self.client.containers.get(name)
            except docker.errors.NotFound:
                continue
            if container.status == "running" and f"APP_VERSION={self.version}" in container.attrs["Config"]["Env"]:
                return (container.attrs["NetworkSettings"]["Networks"].get(self.network) or {}).get("IPAddress") or None
        return None

    def _health(self) -> None:
        ip = None
        while ip is None and not self._stop.wait(0.05):
            ip = self._container_ip()
        session = requests.Session()
        while ip and not self._stop.is_set():
            try:
                if session.get(f"http://{ip}:8080/actuator/health", timeout=0.5).status_code == 200:
                    self.healthy_at = time.monotonic()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.02)

    def _nginx(self) -> None:
        while not self._stop.is_set():
            try:
                answer = requests.get(self.nginx_url, timeout=1, headers={"Connection": "close"})
                ok, body = answer.status_code == 200, answer.text
            except requests.RequestException:
                ok, body = False, ""
            self._answered(time.monotonic(), ok, body)   # when the answer came, as for the health URL
            time.sleep(0.02)

    def _answered(self, now: float, ok: bool, body: str) -> None:
        """One answer of nginx's: a failure, or the first from `version`."""
        if not ok:
            self.failures.append(now)
        elif self.served_at is None and body.startswith(f"version={self.version} "):
            self.served_at = now

    @property
    def unavailable(self) -> float:
        """From the first to the last failed poll of nginx (0 if none failed)."""
        return self.failures[-1] - self.failures[0] + 0.02 if self.failures else 0.0
