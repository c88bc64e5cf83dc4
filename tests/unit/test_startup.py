"""Start-up: the tool does not load paramiko (nor invoke, which paramiko.config imports) unless
something uses SSH, nor charset_normalizer (which requests imports) unless an answer's charset
must be guessed, so a rollback to a running release is not 0.2-0.3 s slower for nothing (issue
10). And a deferred module still is the library as soon as it is used."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import _lazy

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: this test process has paramiko loaded by other tests already.
_REPORT = """
import json, sys
from pipeline._lazy import is_deferred
{body}
loaded = [m for m in ("paramiko", "invoke", "charset_normalizer") if m in sys.modules and not is_deferred(m)]
assert "invoke.collection" not in sys.modules or "invoke" in loaded   # its code ran only if loaded
print(json.dumps({{"loaded": loaded, "paramiko_deferred": is_deferred("paramiko"),
                  "charset_normalizer_deferred": is_deferred("charset_normalizer")}}))
"""


def _report(body: str) -> dict:
    return _fresh(_REPORT.format(body=body))


def _fresh(code: str) -> dict:
    """Run `code` in a fresh interpreter; its last line of output, as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("body", [
    "import pipeline.cli",
    # The docker SDK imports paramiko itself when it is installed (docker/transport/sshconn.py).
    "import pipeline.cli, docker, docker.transport",
    # What `python -m pipeline --help` does: every parser built, argparse exits.
    "import pipeline.cli\ntry:\n    pipeline.cli.build_parser().parse_args(['rollback', '--help'])\n"
    "except SystemExit:\n    pass",
])
def test_importing_the_tool_loads_neither_ssh_nor_charset_guessing(body):
    assert _report(body) == {"loaded": [], "paramiko_deferred": True, "charset_normalizer_deferred": True}


def test_what_the_cli_imports_before_it_starts_the_ssh_connection_leaves_http_to_later():
    # Issue 15: the SSH connection starts (in a thread) right after pipeline.cli is imported, and
    # a saturated machine gives this process a few percent of a CPU: http.client (with the email
    # parser) was 40% of that import; the probes' ChannelConnection needs it, imported later.
    body = ("import pipeline.cli\nassert 'http.client' not in sys.modules, 'http.client'\n"
            "from pipeline.adapters.health import ChannelConnection\nassert 'http.client' in sys.modules")
    assert _report(body)["loaded"] == []


def test_the_deferred_module_is_paramiko_once_used():
    report = _report("import pipeline.cli, paramiko\nassert paramiko.SSHClient.__module__ == 'paramiko.client'")
    assert report == {"loaded": ["paramiko"], "paramiko_deferred": False,
                      "charset_normalizer_deferred": True}


def test_using_ssh_does_not_load_invoke_until_paramiko_asks_it_for_something():
    # paramiko.config imports invoke; only a `Match exec` line of an ssh_config runs it.
    report = _report("import pipeline.cli, paramiko, paramiko.config\n"
                     "assert paramiko.SSHClient and 'invoke.collection' not in sys.modules\n"
                     "config = paramiko.SSHConfig.from_text('Match exec \"true\"\\n  User matched\\n')\n"
                     "assert config.lookup('example')['user'] == 'matched'")
    assert report["loaded"] == ["paramiko", "invoke"]


def test_requests_still_guesses_a_charset_when_asked_to():
    body = "import pipeline.cli, requests\nr = requests.Response()\nr._content = 'caf\\xe9 cr\\xe8me'.encode('cp1252')\n" \
           "assert r.apparent_encoding and r.text"
    report = _report(body)
    assert report["loaded"] == ["charset_normalizer"] and not report["charset_normalizer_deferred"]


def test_a_health_answer_naming_no_charset_is_read_as_utf8_without_guessing():
    # Spring Boot's actuator answers application/vnd.spring-boot.actuator.v3+json, no charset.
    body = """
import http.server, threading
from pipeline.adapters.health import LocalTransport
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = '{"status":"UP","by":"\u00e9quipe"}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.spring-boot.actuator.v3+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
answer = LocalTransport().get(f"http://127.0.0.1:{server.server_address[1]}/health", 5.0)
assert answer == (200, '{"status":"UP","by":"\u00e9quipe"}'), answer
server.shutdown()
"""
    assert _report(body)["charset_normalizer_deferred"] is True


def test_the_docker_sdk_still_has_its_ssh_transport():
    # docker.api.client checks for SSHHTTPAdapter when DOCKER_HOST is ssh://; deferring paramiko
    # must not make `from .sshconn import SSHHTTPAdapter` fail (it would then say "install paramiko").
    report = _report("import pipeline.cli, docker.transport\nassert hasattr(docker.transport, 'SSHHTTPAdapter')")
    assert report["paramiko_deferred"] is True


def test_defer_import_leaves_a_loaded_or_missing_module_alone():
    loaded = sys.modules["json"]
    _lazy.defer_import("json")
    assert sys.modules["json"] is loaded and not _lazy.is_deferred("json")
    _lazy.defer_import("no_such_module_here_at_all")
    assert "no_such_module_here_at_all" not in sys.modules


def test_a_deferred_module_loads_once_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "deferred_probe.py").write_text("import sys\nsys.modules['deferred_probe'].runs = "
                                                "getattr(sys.modules['deferred_probe'], 'runs', 0) + 1\n"
                                                "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deferred_probe", raising=False)
    _lazy.defer_import("deferred_probe")
    import deferred_probe   # the import statement itself must not run it

    assert _lazy.is_deferred("deferred_probe")
    assert deferred_probe.VALUE == 42
    assert not _lazy.is_deferred("deferred_probe")
    assert deferred_probe.runs == 1 and deferred_probe.VALUE == 42
    with pytest.raises(AttributeError):
        deferred_probe.missing


# The CLI run with a stand-in connection (the real one is proven on the stack): it records, when
# pipeline.compose (which brings docker, requests and the flows) is imported, whether the
# connection had said it waits on the nginx host (paramiko loaded) by then.
_ORDER = """
import importlib.abc, json, sys, tempfile, time
from pathlib import Path
from pipeline import cli
from pipeline.adapters import nginx_host
from pipeline.core.errors import PreflightError
seen = {{"waiting": False}}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pipeline.compose" and "compose_after_waiting" not in seen:
            seen["compose_after_waiting"] = seen["waiting"]
        return None
sys.meta_path.insert(0, Watch())
def connect(nginx, timeout, waiting=lambda: None):
    time.sleep(0.3)   # loading paramiko
    if {asks}:
        seen["waiting"] = True
        waiting()
    raise PreflightError("nginx host root@n1:22 is unreachable: Connection refused")
nginx_host.connect = connect
cwd = Path(tempfile.mkdtemp())
(cwd / "key").write_text("not read: the connection is a stand-in")
(cwd / "known_hosts").write_text("")
code = cli.main(["status"], {{"NGINX_HOST": "n1", "NGINX_SSH_KEY": str(cwd / "key"),
                              "NGINX_SSH_KNOWN_HOSTS": str(cwd / "known_hosts"),
                              "DOCKER_HOST": "unix:///nonexistent/docker.sock"}}, cwd)
print(json.dumps({{"code": code, **seen}}))
"""


@pytest.mark.parametrize("asks", [True, False])
def test_the_rest_of_the_tool_is_imported_only_once_paramiko_is_loaded_for_the_nginx_host(asks):
    # Issue 15: paramiko's import ran beside the main thread's imports of docker, requests and the
    # flows, one interpreter lock between them; the imports now wait until the connection waits
    # on the network and the nginx host. A connection that fails before (False) releases them too.
    report = _fresh(_ORDER.format(asks=asks))
    assert report["code"] == 3
    assert report["compose_after_waiting"] is asks
