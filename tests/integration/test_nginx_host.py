"""The nginx host over real SSH (127.0.0.1:2222) and locally: the same answers from both."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.nginx_host import LocalHost, SshHost
from pipeline.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "ssh"])
def host(request, stack, tmp_path):
    if request.param == "local":
        yield LocalHost()
        return
    settings = Settings.from_env({
        "NGINX_HOST": "127.0.0.1", "NGINX_SSH_PORT": stack["SSH_PORT"], "NGINX_SSH_KEY": stack["SSH_KEY"],
        "NGINX_SSH_KNOWN_HOSTS": stack["SSH_KNOWN_HOSTS"]}, tmp_path)
    ssh = SshHost.connect(settings)
    yield ssh
    ssh.close()


def test_steps_run_in_order_until_one_fails(host):
    results = host.run_steps([["sh", "-c", "echo a"], ["sh", "-c", "printf b; exit 3"], ["echo", "never"]])
    assert [(r.code, r.output) for r in results] == [(0, "a\n"), (3, "b")]


def test_words_are_passed_as_words_not_shell(host, tmp_path):
    canary = tmp_path / "canary"
    results = host.run_steps([["echo", f"x; touch {canary}", "$(id)"], ["echo", "done"]])
    assert [r.output for r in results] == [f"x; touch {canary} $(id)\n", "done\n"]
    assert not canary.exists()


def test_missing_command_reports_its_code(host):
    [result] = host.run_steps([["no-such-command-here"]])
    assert result.code == 127


def test_atomic_write_exclusive_create_and_append(host, tmp_path):
    path = str(tmp_path / "service-url.inc")
    assert host.read_text(path) is None
    host.write_text_atomic(path, "one\n")
    host.write_text_atomic(path, "two\n")
    assert host.read_text(path) == "two\n"
    assert oct(Path(path).stat().st_mode & 0o777) == "0o644"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    lock = str(tmp_path / "app.lock")
    assert host.create_exclusive(lock, "me") and not host.create_exclusive(lock, "you")
    assert host.read_text(lock) == "me"
    host.append_text(str(tmp_path / "h.jsonl"), "1\n")
    host.append_text(str(tmp_path / "h.jsonl"), "2\n")
    assert host.read_text(str(tmp_path / "h.jsonl")) == "1\n2\n"
    host.remove(lock)
    host.remove(lock)   # twice is fine
    assert host.read_text(lock) is None
