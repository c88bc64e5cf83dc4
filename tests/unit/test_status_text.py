"""`status` as text: the report deploy.status gathers, printed line by line. Reports in, lines out."""
from __future__ import annotations

import copy
import io
import json
from typing import Any, Dict, List

import pytest

from pipeline.cli import _print_status


def report(**changes: Any) -> Dict[str, Any]:
    base: Dict[str, Any] = {
        "app": "app", "live_color": "green", "live_version": "v2",
        "include": {"path": "/etc/nginx/conf.d/service-url.inc", "points_at": "172.20.0.3:8080"},
        "preview": None, "switch_mode": "reload", "switch": {}, "switch_problem": None, "probe_problem": None,
        "nginx_host": "127.0.0.1:2222",
        "releases": {"live": {"version": "v2", "color": "green"}, "previous": {"version": "v1", "color": "blue"},
                     "staged": None},
        "colors": {
            "blue": {"container": "app-blue", "ip": "172.20.0.2", "state": "exited", "version": "v1", "health": None},
            "green": {"container": "app-green", "ip": "172.20.0.3", "state": "running", "version": "v2",
                      "health": "HTTP 200"},
        },
    }
    base.update(changes)
    return base


COLORS = [
    "  blue   app-blue                 172.20.0.2      exited     v1               -\n",
    "* green  app-green                172.20.0.3      running    v2               HTTP 200\n",
]
RELEASES = "releases: live=v2 (green)  previous=v1 (blue)  staged=none\n"
INCLUDE = "include:  /etc/nginx/conf.d/service-url.inc -> 172.20.0.3:8080 on 127.0.0.1:2222\n"

SWARM_COLORS = {
    "blue": {"container": "app-blue", "ip": None, "port": 8081, "state": "absent", "version": None, "health": None,
             "tasks": []},
    "green": {"container": "app-green", "ip": None, "port": 8082, "state": "running", "version": "v2",
              "health": "2 of 2 task(s) answer 200",
              "tasks": [{"task": "abc123", "node": "node-1", "address": "10.0.0.5:8082", "state": "running",
                         "version": "v2", "health": "HTTP 200", "route": "via 10.1.0.1 on eth0"},
                        {"task": "def456", "node": "node-2", "address": None, "state": "pending",
                         "version": None, "health": None}]},
}

CASES = [
    ("live, nothing wrong", report(),
     ["app:      app\n", "live:     green (v2)\n", INCLUDE, "switch:   reload\n", RELEASES] + COLORS),
    ("nothing live, nothing pointed at",
     report(live_color=None, live_version=None, include={"path": "/inc", "points_at": None}),
     ["app:      app\n", "live:     none\n", "include:  /inc -> nothing on 127.0.0.1:2222\n", "switch:   reload\n",
      RELEASES] + [line.replace("* green", "  green") for line in COLORS]),
    ("the switch cannot say and the include points somewhere: unknown",
     report(live_color=None, live_version=None, switch_mode="live", switch={"admin": "http://127.0.0.1:8091"},
            switch_problem="the admin API does not answer"),
     ["app:      app\n", "live:     unknown\n", INCLUDE, "switch:   live  admin=http://127.0.0.1:8091\n",
      "warning:  the admin API does not answer\n", RELEASES] + [line.replace("* green", "  green") for line in COLORS]),
    ("the switch cannot say, the include names the live color",
     report(switch_problem="the admin API does not answer", probe_problem="no route to 172.20.0.3",
            preview="172.20.0.2:8080", switch={"a": 1, "b": "two"}),
     ["app:      app\n", "live:     green (v2)\n", INCLUDE, "preview:  172.20.0.2:8080\n", "switch:   reload  a=1  b=two\n",
      "warning:  the admin API does not answer; live color above is from the include\n",
      "warning:  no route to 172.20.0.3\n", RELEASES] + COLORS),
    ("a report without probe_problem", {k: v for k, v in report().items() if k != "probe_problem"},
     ["app:      app\n", "live:     green (v2)\n", INCLUDE, "switch:   reload\n", RELEASES] + COLORS),
    ("the swarm: ports and one line per task", report(colors=SWARM_COLORS),
     ["app:      app\n", "live:     green (v2)\n", INCLUDE, "switch:   reload\n", RELEASES,
      "  blue   app-blue                 port 8081       absent     -                -\n",
      "* green  app-green                port 8082       running    v2               2 of 2 task(s) answer 200\n",
      "      task abc123       node-1       10.0.0.5:8082        running    v2               HTTP 200"
      "  (route: via 10.1.0.1 on eth0)\n",
      "      task def456       node-2       -                    pending    -                -\n"]),
]


class Lines(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: List[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


@pytest.mark.parametrize("given,lines", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_status_text_is_one_write_per_line(given: Dict[str, Any], lines: List[str]) -> None:
    before = copy.deepcopy(given)
    out = Lines()
    _print_status(given, False, out)
    assert out.writes == lines
    assert given == before


def test_status_json_is_the_report_in_one_write() -> None:
    out = Lines()
    _print_status(report(), True, out)
    assert len(out.writes) == 1 and json.loads(out.writes[0]) == report()
