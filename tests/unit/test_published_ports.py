"""TARGET=docker with nginx hosts on other machines (issue 17): PUBLISH_ADDRESS publishes each
color's APP_PORT on BLUE_PORT / GREEN_PORT there; the include and every probe name that address
and port, and the probes still never take a gateway. The same end to end, through nginx hosts in
namespaces of their own: tests/integration/test_several_hosts_state.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipeline.adapters.engine import Engine
from pipeline.adapters.health import Prober
from pipeline.compose import make_prober
from pipeline.core.errors import RouteRefused, SettingsError
from pipeline.core.gate import probe
from pipeline.core.route import Address
from pipeline.core.settings import Settings

from .fakes import FakeHost, FakeProber, no_network  # noqa: F401  (autouse)

PUBLISHED = {"PUBLISH_ADDRESS": "10.97.3.1", "BLUE_PORT": "9081", "GREEN_PORT": "9082"}


def settings(**env: str) -> Settings:
    return Settings.from_env(env, Path("/work"))


@pytest.mark.parametrize("env,name", [
    ({"PUBLISH_ADDRESS": "0.0.0.0"}, "PUBLISH_ADDRESS"),            # every address of the machine
    ({"PUBLISH_ADDRESS": "169.254.77.77"}, "PUBLISH_ADDRESS"),
    ({"PUBLISH_ADDRESS": "nginx-a"}, "PUBLISH_ADDRESS"),
    ({"PUBLISH_ADDRESS": "10.97.3.1", "BLUE_PORT": "9081", "GREEN_PORT": "9081"}, "GREEN_PORT"),
    ({"BLUE_PORT": "9081"}, "BLUE_PORT"),                            # without PUBLISH_ADDRESS: swarm only
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "PUBLISH_ADDRESS": "10.97.3.1"}, "PUBLISH_ADDRESS"),
])
def test_bad_publish_settings_name_the_setting(env: Dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings(**env)
    assert caught.value.name == name


class Api:
    """The docker API calls `Engine.run` makes, kept."""

    def __init__(self) -> None:
        self.calls: List[Any] = []

    def create_host_config(self, **kwargs: Any) -> Dict[str, Any]:
        return kwargs

    def create_networking_config(self, config: Any) -> Any:
        return config

    def create_endpoint_config(self, **kwargs: Any) -> Any:
        return kwargs

    def create_container(self, image: str, **kwargs: Any) -> Dict[str, str]:
        self.calls.append(kwargs)
        return {"Id": "c1"}

    def start(self, container: str) -> None:
        pass

    def remove_container(self, name: str, **kwargs: Any) -> None:
        pass


class Client:
    def __init__(self) -> None:
        self.api = Api()


def engine(s: Settings) -> Engine:
    return Engine(Client(), s.app, s.build, s.network, s.runtime, s.registry_access, ports=s.swarm)


def test_a_published_color_is_named_by_its_published_address_and_port() -> None:
    s = settings(**PUBLISHED)
    one = engine(s)
    assert one.addresses("blue") == (Address("10.97.3.1", 9081),)
    assert one.addresses("green") == (Address("10.97.3.1", 9082),)
    assert one.color_at((Address("10.97.3.1", 9082),)) == "green"
    assert one.color_at((Address("172.20.0.3", 8080),)) is None   # the container's own address: not nginx's
    assert one.probe_ips() == ["10.97.3.1"]
    assert one.placement("green") == "172.20.0.3, published on 10.97.3.1:9082"


def test_without_publish_address_nothing_changes() -> None:
    one = engine(settings())
    assert one.addresses("blue") == (Address("172.20.0.2", 8080),)
    assert one.probe_ips() == ["172.20.0.2", "172.20.0.3"]
    assert one.placement("blue") == "172.20.0.2"


def test_the_container_publishes_app_port_on_that_address_and_port_only() -> None:
    s = settings(**PUBLISHED)
    one = engine(s)
    one.remove = lambda color: None   # type: ignore[method-assign]
    one.run("green", "app:v1", "v1")
    created = one.api.calls[-1]
    assert created["ports"] == [8080]
    assert created["host_config"]["port_bindings"] == {8080: ("10.97.3.1", 9082)}
    plain = engine(settings())
    plain.remove = lambda color: None   # type: ignore[method-assign]
    plain.run("green", "app:v1", "v1")
    assert plain.api.calls[-1]["host_config"]["port_bindings"] is None


DIRECT = "10.97.3.1 dev eth0 src 10.97.3.20 uid 0\n    cache\n"
VIA_GATEWAY = "10.97.3.1 via 10.0.0.1 dev eth0 src 10.0.0.7 uid 0\n    cache\n"


def prober_for(route_answer: str, transport: FakeProber) -> Prober:
    s = settings(**PUBLISHED)
    host = FakeHost(routes={"10.97.3.1": (0, route_answer)}, description="root@nginx-a:22")
    prober = make_prober(host, s, engine(s))
    prober.transport = transport   # what make_prober chose, with a fake in its place
    return prober


def test_the_published_address_is_probed_over_a_plain_interface_of_the_nginx_host() -> None:
    transport = FakeProber(answers={}, where="the nginx host root@nginx-a:22")
    prober = prober_for(DIRECT, transport)
    assert probe(prober, "http://10.97.3.1:9082/actuator/health", 2.0).startswith("HTTP 200")
    with pytest.raises(RouteRefused, match="not probing port 8080"):
        probe(prober, "http://10.97.3.1:8080/actuator/health", 2.0)   # not a color's published port
    with pytest.raises(RouteRefused, match="not probing 172.20.0.3"):
        probe(prober, "http://172.20.0.3:8080/actuator/health", 2.0)


def test_the_published_address_is_never_probed_through_a_gateway() -> None:
    transport = FakeProber(answers={}, where="the nginx host root@nginx-a:22")
    prober = prober_for(VIA_GATEWAY, transport)
    with pytest.raises(RouteRefused, match="gateway 10.0.0.1.*PUBLISH_ADDRESS=10.97.3.1"):
        probe(prober, "http://10.97.3.1:9082/actuator/health", 2.0)
    assert transport.asked == []
