import pytest

from pipeline.core.decide import (MAX_ROUTE_ADDRESSES, Address, choose_colors, color_at, images_to_remove,
                             other, parse_include, parse_route, render_include, render_route, shown)


IPS = {"blue": "172.20.0.2", "green": "172.20.0.3"}


BOTH = frozenset({"blue", "green"})


@pytest.mark.parametrize("include_color,blue_alive,running,live,target", [
    ("blue", None, BOTH, "blue", "green"),
    ("green", None, BOTH, "green", "blue"),               # both run (a staged release): the include decides
    ("green", None, frozenset({"green"}), "green", "blue"),
    ("green", True, BOTH, "green", "blue"),               # the include wins over a probe
    ("green", None, frozenset(), "green", "blue"),        # neither runs: the include still decides
    # Killed between writing the include and reloading: the include says green, only blue runs,
    # and nginx still sends traffic to blue. Deploying over blue would cut it off.
    ("green", None, frozenset({"blue"}), "blue", "green"),
    (None, True, frozenset({"blue"}), "blue", "green"),   # the seed's rule: blue answers -> green
    (None, False, frozenset({"blue"}), None, "blue"),     # nothing serves: first deploy goes to blue
    (None, None, frozenset(), None, "blue"),              # blue not probed (no container of ours holds it)
])
def test_choose_colors(include_color, blue_alive, running, live, target):
    choice = choose_colors(include_color, blue_alive, running)
    assert (choice.live, choice.target) == (live, target)
    assert choice.reason


@pytest.mark.parametrize("text,expected", [
    ("set $service_url http://172.20.0.2:8080;\n", (Address("172.20.0.2", 8080),)),
    ("  set $service_url   http://172.20.0.3:9090/ ;", (Address("172.20.0.3", 9090),)),
    ("# old\nset $preview_url http://10.1.2.3:80;", (Address("10.1.2.3", 80),)),
    ("upstream app_live {\n    server 172.20.0.3:8080;\n    keepalive 32;\n}\n", (Address("172.20.0.3", 8080),)),
    ("upstream app_live { server 172.20.0.2:8080 max_fails=0; }", (Address("172.20.0.2", 8080),)),
    ("set $service_url http://XXX.XXX.XXX.XXX:8080;", ()),
    ("set $service_url http://172.20.0.2:99999;", ()),
    ("set $service_url http://300.20.0.2:8080;", ()),
    ("", ()),
    (None, ()),
])
def test_parse_include(text, expected):
    assert parse_include(text) == expected


@pytest.mark.parametrize("form", ["set", "upstream"])
def test_render_then_parse_round_trips(form):
    route = (Address("172.20.0.3", 8080),)
    assert parse_include(render_include(route, form)) == route


def test_render_set_form_is_the_seeds_line():
    assert render_include((Address("172.20.0.2", 8080),)) == "set $service_url http://172.20.0.2:8080;\n"
    assert render_include((Address("172.20.0.2", 8080),), "set", "preview_url") == \
        "set $preview_url http://172.20.0.2:8080;\n"


def test_render_upstream_form_keeps_connections_alive():
    text = render_include((Address("172.20.0.3", 8080),), "upstream", upstream="shop_live")
    assert text == "upstream shop_live {\n    server 172.20.0.3:8080;\n    keepalive 32;\n}\n"


def test_render_refuses_unknown_form():
    with pytest.raises(ValueError):
        render_include((Address("1.2.3.4", 1),), "map")


@pytest.mark.parametrize("text,expected", [
    ("172.20.0.2:8080", Address("172.20.0.2", 8080)),
    (" 127.0.0.1:1 \n", Address("127.0.0.1", 1)),
    ("172.20.0.2", None), ("172.20.0.2:0", None), ("172.20.0.2:70000", None),
    ("host:80", None), ("1.2.3.256:80", None), ("", None), ("172.20.0.2:80;rm", None),
])
def test_address_parse(text, expected):
    assert Address.parse(text) == expected


def test_color_at():
    assert color_at((Address("172.20.0.3", 8080),), lambda a: a.ip, IPS) == "green"
    assert color_at((Address("172.20.0.9", 8080),), lambda a: a.ip, IPS) is None
    assert color_at(None, lambda a: a.ip, IPS) is None
    assert color_at((), lambda a: a.ip, IPS) is None
    assert other("blue") == "green" and other("green") == "blue"


def test_images_to_remove_keeps_the_newest_and_protected():
    images = {"app:v1": 1, "app:v2": 2, "app:v3": 3, "app:v4": 4, "app:v5": 5}
    assert images_to_remove(images, keep=2, protected=set()) == ["app:v3", "app:v2", "app:v1"]
    assert images_to_remove(images, keep=2, protected={"app:v1"}) == ["app:v3", "app:v2"]
    assert images_to_remove(images, keep=5, protected=set()) == []


# -- several addresses: a swarm color's tasks (TARGET=swarm) ---------------------------------------

TASKS = (Address("10.99.0.11", 8082), Address("10.99.0.12", 8082), Address("10.99.0.13", 8082))


def test_upstream_form_lists_every_task_and_parses_back():
    text = render_include(TASKS, "upstream")
    assert text == ("upstream app_live {\n    server 10.99.0.11:8082;\n    server 10.99.0.12:8082;\n"
                    "    server 10.99.0.13:8082;\n    keepalive 32;\n}\n")
    assert parse_include(text) == TASKS


def test_a_route_of_one_renders_in_either_form():
    assert render_include(TASKS[:1], "upstream") == "upstream app_live {\n    server 10.99.0.11:8082;\n    keepalive 32;\n}\n"
    assert render_include(TASKS[:1], "set") == "set $service_url http://10.99.0.11:8082;\n"


def test_the_set_form_takes_one_address_and_no_form_takes_none():
    with pytest.raises(ValueError, match="the set form takes one address, not 3"):
        render_include(TASKS, "set")
    with pytest.raises(ValueError, match="no address"):
        render_include((), "upstream")


@pytest.mark.parametrize("text, expected", [
    (None, ()),
    ("", ()),
    ("set $service_url http://172.20.0.2:8080;\n", (Address("172.20.0.2", 8080),)),
    ("upstream u {\n server 10.99.0.12:8081 max_fails=0;\n server 10.99.0.13:8081;\n}\n",
     (Address("10.99.0.12", 8081), Address("10.99.0.13", 8081))),
])
def test_parse_include_reads_every_server(text, expected):
    assert parse_include(text) == expected


@pytest.mark.parametrize("route, expected", [
    ((Address("10.99.0.11", 8081),), "blue"),
    ((Address("10.99.0.13", 8082),), "green"),
    ((Address("10.99.0.13", 8080),), None),
    (None, None),
    (TASKS, "green"),                          # a live-mode route to every task: by the first
])
def test_color_at_by_port(route, expected):
    assert color_at(route, lambda a: a.port, {"blue": 8081, "green": 8082}) == expected


# -- a live-mode route: the admin body `IP:PORT[,IP:PORT...]` ---------------------------------------

MANY = tuple(Address(f"10.99.{n // 250}.{n % 250 + 1}", 8081) for n in range(MAX_ROUTE_ADDRESSES + 1))


@pytest.mark.parametrize("route, text", [
    (TASKS[:1], "10.99.0.11:8082"),
    (TASKS, "10.99.0.11:8082,10.99.0.12:8082,10.99.0.13:8082"),
    (tuple(reversed(TASKS)), "10.99.0.13:8082,10.99.0.12:8082,10.99.0.11:8082"),   # in the order given
    (MANY[:MAX_ROUTE_ADDRESSES], ",".join(str(a) for a in MANY[:MAX_ROUTE_ADDRESSES])),
])
def test_render_route_then_parse_round_trips(route, text):
    assert render_route(route) == text
    assert parse_route(text + "\n") == route   # nginx answers with a final newline


@pytest.mark.parametrize("targets, problem", [
    ((), "no address"),
    (MANY, "33 addresses; a route takes at most 32"),
    ((TASKS[0], TASKS[1], TASKS[0]), "an address listed twice in 10.99.0.11:8082, 10.99.0.12:8082, 10.99.0.11:8082"),
])
def test_render_route_refuses_what_nginx_would(targets, problem):
    with pytest.raises(ValueError, match=problem):
        render_route(targets)


@pytest.mark.parametrize("text", [
    "", "\n", ",", "10.99.0.11:8082,", ",10.99.0.11:8082", "10.99.0.11:8082,,10.99.0.12:8082",
    "10.99.0.11:8082, 10.99.0.12:8082", "10.99.0.11:8082 10.99.0.12:8082", "10.99.0.11:8082,10.99.0.11:8082",
    "10.99.0.11:8082;10.99.0.12:8082", "10.99.0.11:8082,host:80", "10.99.0.11:8082,10.99.0.12:0",
    "10.99.0.11:8082\r\n10.99.0.12:8082", ",".join(str(a) for a in MANY), "9" * 2000,
])
def test_parse_route_believes_only_what_nginx_stores(text):
    assert parse_route(text) is None


def test_shown():
    assert (shown(None), shown(TASKS[:1]), shown(TASKS[:2])) == (
        "nothing", "10.99.0.11:8082", "10.99.0.11:8082, 10.99.0.12:8082")
