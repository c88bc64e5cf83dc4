"""Maintenance mode on the real stack (issue 18), in every switch mode: reload with the seed's
`set` include (nginx/conf.d/app.conf), reload with the upstream include (app-upstream.conf), and
live (nginx/live/app-live.conf, the Lua balancer).

Under steady load (a new connection per request, every answer kept with the time its request was
sent): `maintenance on` makes every answer 503 with `Retry-After` and the page, `off` makes them
200 again, nothing else is ever answered (no 502, no reset), no container is started or stopped,
the preview port keeps serving, a deploy during maintenance keeps it on and says so, and in live
mode the flag outlives an nginx reload (and a restart: the include carries it).
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Dict, List

import pytest
import requests

from teststack import switchmodes
from teststack.realstack import Nginx, run_pipeline
from teststack.statuses import Answer, StatusRecorder, statuses, timed

pytestmark = pytest.mark.integration

# The brief's bound: within 1 s of the command returning, every answer is the new one.
WITHIN = 1.0
MESSAGE = 'Back at 10:00 <b>"soon"</b> & $HOME'


@pytest.fixture(params=["reload", "reload-upstream", "live"])
def mode(request) -> str:
    return request.param


@pytest.fixture
def nginx(mode_nginx: Nginx) -> Nginx:
    """Overrides conftest's: the nginx for this module's `mode`."""
    return mode_nginx


@pytest.fixture
def env(world, nginx, stack, tmp_path) -> Dict[str, str]:
    settings = switchmodes.deploy_env(world.app, world.network, nginx, stack, tmp_path, starts_at_once=True)
    settings["NGINX_PREVIEW_INCLUDE"] = str(nginx.preview_include)
    settings["MAINTENANCE_RETRY_AFTER"] = "42"
    return settings


def run(args: List[str], env: Dict[str, str], cwd: Path, **overrides: str):
    result = run_pipeline(args, {**env, **overrides}, cwd)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"
    return result


def containers(world) -> Dict[str, str]:
    """Every container of the app: name -> id and state (a restart or a recreate changes it)."""
    return {c.name: f"{c.id} {c.status} {c.attrs['State']['StartedAt']}"
            for c in world.client.containers.list(all=True, filters={"label": f"pipeline.app={world.app}"})}


def only(answers: List[Answer], status: str, what: str) -> None:
    assert answers, f"no request was sent {what}"
    wrong = [a for a in answers if a.status != status]
    assert not wrong, f"{what}: {len(wrong)} of {len(answers)} answers were not {status}: " \
                      f"{sorted({a.status for a in wrong})}"


def test_maintenance_on_and_off_under_load(world, nginx, env, tmp_path, mode):
    run(["deploy"], env, tmp_path, APP_VERSION="v1")
    run(["deploy", "--no-promote"], env, tmp_path, APP_VERSION="v2")   # the preview serves v2
    assert "version=v1" in nginx.get().text and "version=v2" in nginx.get(preview=True).text
    before = containers(world)

    public = StatusRecorder(f"http://127.0.0.1:{nginx.port}/")
    preview = StatusRecorder(f"http://127.0.0.1:{nginx.preview_port}/", threads=1)
    with public, preview:
        time.sleep(1.0)
        on_start, on_end, result = timed(lambda: run(["maintenance", "on", "--message", MESSAGE], env, tmp_path))
        time.sleep(3.0)
        off_start, off_end, _ = timed(lambda: run(["maintenance", "off"], env, tmp_path))
        time.sleep(2.0)
    answers = public.stop()

    assert statuses(answers) == ["200", "503"], "only 200 and 503, no error and no reset"
    only(public.between(0, on_start), "200", "before `maintenance on`")
    only(public.between(on_end + WITHIN, off_start), "503", f"from {WITHIN}s after `maintenance on` returned")
    only(public.between(off_end + WITHIN), "200", f"from {WITHIN}s after `maintenance off` returned")
    # Every 503 is the page with Retry-After; every 200 the live release.
    maintenance = [a for a in answers if a.status == "503"]
    assert {a.retry_after for a in maintenance} == {"42"}
    assert {a.body for a in maintenance} == {maintenance[0].body}
    page = maintenance[0].body
    assert "Back at 10:00 &lt;b&gt;&quot;soon&quot;&lt;/b&gt; &amp; &#36;HOME" in page, page
    assert {a.body.strip().split()[0] for a in answers if a.status == "200"} == {"version=v1"}
    # The preview port served v2 all along.
    only(preview.stop(), "200", "on the preview port")
    assert {a.body.strip().split()[0] for a in preview.snapshot()} == {"version=v2"}
    # No container was started, stopped or recreated.
    assert containers(world) == before
    # The history: who, when, on and off.
    history = json.loads(run(["history", "--json"], env, tmp_path).stdout)
    turned = [(e["action"], e["result"]) for e in history if e["action"].startswith("maintenance")]
    assert turned == [("maintenance on", "ok"), ("maintenance off", "ok")]
    entry = next(e for e in history if e["action"] == "maintenance on")
    assert entry["who"] and entry["time"] and entry["message"] == MESSAGE


def test_a_deploy_during_maintenance_keeps_it_on_and_says_so(world, nginx, env, tmp_path, mode):
    run(["deploy"], env, tmp_path, APP_VERSION="v1")
    # A message that reads like an include's address line: never taken for one (not by the
    # tool, not by app-live.conf's Lua when it reloads).
    run(["maintenance", "on", "--message", "server 198.51.100.7:80; is down"], env, tmp_path)
    status = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert {k: status["maintenance"][k] for k in ("on", "retry_after", "message")} == {
        "on": True, "retry_after": 42, "message": "server 198.51.100.7:80; is down"}
    assert status["maintenance"]["since"] and status["maintenance"]["by"]
    assert "maintenance: ON" in run(["status"], env, tmp_path).stdout

    with StatusRecorder(f"http://127.0.0.1:{nginx.port}/") as public:
        deployed = run(["deploy"], env, tmp_path, APP_VERSION="v2")
        time.sleep(0.5)
    only(public.stop(), "503", "during and after a deploy in maintenance mode")
    assert "maintenance mode is on and stays on" in deployed.stderr, deployed.stderr
    status = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert status["maintenance"]["on"] is True and status["live_version"] == "v2"
    assert nginx.get(preview=True).status_code == 200

    if mode == "live":
        # The balancer's shared dict outlives a reload; the include brings it back after a restart.
        nginx.reload()
        assert nginx.get().status_code == 503
        nginx.stop()
        nginx.start()
        answer = nginx.get()
        assert (answer.status_code, answer.headers.get("Retry-After")) == (503, "42")
        assert "server 198.51.100.7:80; is down" in answer.text
        assert "198.51.100.7" not in requests.get(f"{nginx.admin_url}/pipeline/live", timeout=5, headers={
            "Authorization": f"Bearer {nginx.token}", "Connection": "close"}).text

    run(["maintenance", "off"], env, tmp_path)
    answer = nginx.get()
    assert answer.status_code == 200 and "version=v2" in answer.text
    status = json.loads(run(["status", "--json"], env, tmp_path).stdout)
    assert status["maintenance"] == {"on": False}
    assert "maintenance: off" in run(["status"], env, tmp_path).stdout
    if mode == "live":
        nginx.reload()   # off stays off: the include no longer carries the flag
        assert nginx.get().status_code == 200


def _without_maintenance(conf: str) -> str:
    """A shipped server config as it was before maintenance mode: nothing acts on the flag."""
    conf = re.sub(r"\n\s*if \(\$pipeline_maintenance\) \{[^}]*\}", "", conf)
    conf = re.sub(r"\n\s*location @pipeline_maintenance \{[^}]*\}", "", conf)
    return "".join(line for line in conf.splitlines(keepends=True) if "pipeline_maintenance" not in line)


@pytest.mark.parametrize("mode", ["reload", "reload-upstream"], indirect=True)
def test_an_nginx_config_that_does_not_act_on_the_flag_refuses_it(world, nginx, env, tmp_path, mode):
    # An app.conf from before maintenance mode would load the flag and keep serving: `on` would
    # say done while nothing changed. nginx -t refuses the include instead, and it is put back.
    run(["deploy"], env, tmp_path, APP_VERSION="v1")
    conf = nginx.directory / ("app-upstream.conf" if mode == "reload-upstream" else "app.conf")
    conf.write_text(_without_maintenance(conf.read_text()))
    nginx.reload()
    include = nginx.include.read_text()
    result = run_pipeline(["maintenance", "on"], env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "nginx's config does not act on maintenance mode" in result.stderr
    assert "install this version's nginx/conf.d/app.conf" in result.stderr
    assert nginx.include.read_text() == include, "the include was put back"
    assert nginx.get().status_code == 200
    assert json.loads(run(["status", "--json"], env, tmp_path).stdout)["maintenance"] == {"on": False}


@pytest.mark.parametrize("mode", ["reload", "live"], indirect=True)
def test_on_and_off_over_ssh(world, nginx, env, tmp_path, stack, mode):
    # nginx on another host: the include over SFTP and the reload over SSH (reload mode), the
    # admin through a direct-tcpip channel of the SSH connection (live mode, a page-sized answer).
    ssh = {**env, "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_USER": "root",
           "NGINX_SSH_KEY": stack["SSH_KEY"], "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}
    run(["deploy"], ssh, tmp_path, APP_VERSION="v1")
    page = tmp_path / "down.html"
    page.write_text("<html><body><h1>Down</h1>" + "<p>We are moving the database.</p>\n" * 60 + "</body></html>\n")
    run(["maintenance", "on"], ssh, tmp_path, MAINTENANCE_PAGE=str(page))
    answer = nginx.get()
    assert (answer.status_code, answer.text) == (503, page.read_text())
    assert answer.headers["Content-Type"].startswith("text/html")
    status = json.loads(run(["status", "--json"], ssh, tmp_path).stdout)
    assert status["maintenance"]["on"] is True and status["maintenance"]["message"] == f"page {page}"
    run(["maintenance", "off"], ssh, tmp_path)
    assert nginx.get().status_code == 200


@pytest.mark.parametrize("mode", ["live"], indirect=True)
def test_the_admin_maintenance_protocol(nginx, mode):
    def admin(method: str, body=None, token=nginx.token):
        headers = {"Connection": "close", **({"Authorization": f"Bearer {token}"} if token else {})}
        return requests.request(method, f"{nginx.admin_url}/pipeline/maintenance", data=body, headers=headers,
                                timeout=5)

    assert (admin("GET").status_code, admin("GET").text) == (200, "off\n")
    for method, body in [("GET", None), ("PUT", "60\n<p>x</p>"), ("DELETE", None)]:
        assert admin(method, body, token=None).status_code == 401
        assert admin(method, body, token="0" * 64).status_code == 401
    assert admin("GET").text == "off\n", "a request without the token changed nothing"
    for bad in ["", "60", "60\n", "x\n<p>", "1234567\n<p>", "\n<p>"]:
        assert admin("PUT", bad).status_code == 400, bad
    assert admin("POST", "60\n<p>x</p>").status_code == 405
    assert nginx.get().status_code == 503 and "Retry-After" not in nginx.get().headers   # no route yet
    answer = admin("PUT", "60\n<p>x</p>")
    assert (answer.status_code, answer.text) == (200, "on 60\n")
    assert admin("GET").text == "on 60\n<p>x</p>"
    public = nginx.get()
    assert (public.status_code, public.text, public.headers["Retry-After"]) == (503, "<p>x</p>", "60")
    assert (admin("DELETE").status_code, admin("GET").text) == (200, "off\n")
