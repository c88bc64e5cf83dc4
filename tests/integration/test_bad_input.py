"""Bad input: one line naming the setting and the value, exit 2 (3 for an unusable host), and
nothing changed on the engine or the nginx host."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from teststack.realstack import run_pipeline

pytestmark = pytest.mark.integration


def snapshot(world, nginx):
    containers = sorted(c.name for c in world.client.containers.list(all=True, filters={"label": f"pipeline.app={world.app}"}))
    networks = [n.name for n in world.client.networks.list(names=[world.network.name])]
    files = sorted(p.name for p in nginx.include.parent.iterdir())
    return containers, networks, nginx.include.read_text(), files


@pytest.mark.parametrize("name,value", [
    ("BLUE_IP", "172.30.0.2"),            # outside the subnet
    ("BLUE_IP", "not-an-ip"),
    ("GREEN_IP", "SAME_AS_BLUE"),
    ("GREEN_IP", "GATEWAY"),
    ("APP_PORT", "70000"),
    ("NGINX_SSH_PORT", "0"),
    ("HEALTH_INTERVAL", "-3"),
    ("HEALTH_TIMEOUT", "ten"),
    ("DRAIN_SECONDS", "-1"),
    ("STOP_TIMEOUT", "x"),
    ("NGINX_INCLUDE", "service-url.inc"),
    ("NGINX_SSH_KEY", "/no/such/key"),
    ("NGINX_SSH_KNOWN_HOSTS", "/no/such/known_hosts"),
    ("DOCKERFILE", "no/Dockerfile"),
    ("SWITCH_MODE", "teleport"),
])
def test_bad_setting_changes_nothing(world, nginx, ssh_env, tmp_path, name, value):
    value = {"SAME_AS_BLUE": ssh_env["BLUE_IP"], "GATEWAY": ssh_env["DEPLOY_GATEWAY"]}.get(value, value)
    before = snapshot(world, nginx)
    result = run_pipeline(["deploy"], {**ssh_env, name: value}, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"pipeline: error: {name}=") and value in lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(world, nginx) == before


@pytest.mark.parametrize("args,words", [
    (["deploi"], "invalid choice: 'deploi'"),
    (["deploy", "--fast"], "unrecognized arguments: --fast"),
    (["deploy", "--lock-wait", "-5"], "--lock-wait=-5"),
    ([], "required: COMMAND"),
])
def test_unknown_commands_and_flags_are_rejected(world, nginx, settings_env, tmp_path, args, words):
    before = snapshot(world, nginx)
    result = run_pipeline(args, settings_env, tmp_path)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(world, nginx) == before


@pytest.mark.parametrize("name", ["NGINX_INCLUDE", "NGINX_PREVIEW_INCLUDE"])
@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_include_in_a_missing_directory_is_a_preflight_error(world, nginx, settings_env, ssh_env, tmp_path,
                                                            name, over_ssh):
    env = ssh_env if over_ssh else settings_env
    missing = nginx.include.parent / "no-such-dir" / "app.inc"
    before = snapshot(world, nginx)
    result = run_pipeline(["deploy"], {**env, name: str(missing)}, tmp_path)
    assert result.returncode == 3, result.stderr
    where = "nginx host (root@127.0.0.1:2222)" if over_ssh else "nginx host (this machine)"
    assert result.stderr.strip() == (f"pipeline: error: {name}={missing}: cannot write in {missing.parent} "
                                     f"on the {where}: No such file") + ("" if over_ssh else " or directory")
    assert snapshot(world, nginx) == before


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write in, root included: a read-only tmpfs."""
    path = tmp_path / "read-only"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("over_ssh", [False, True], ids=["local-nginx", "nginx-over-ssh"])
def test_include_in_a_read_only_directory_is_a_preflight_error(world, nginx, settings_env, ssh_env, tmp_path,
                                                              read_only_dir, over_ssh):
    env = ssh_env if over_ssh else settings_env
    include = read_only_dir / "preview.inc"
    before = snapshot(world, nginx)
    result = run_pipeline(["deploy"], {**env, "NGINX_PREVIEW_INCLUDE": str(include)}, tmp_path)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"pipeline: error: NGINX_PREVIEW_INCLUDE={include}: cannot write in {read_only_dir} on the nginx host"), lines
    if not over_ssh:
        assert lines[0].endswith(": Read-only file system")
    assert snapshot(world, nginx) == before


def test_unknown_host_key_is_refused(world, nginx, ssh_env, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    before = snapshot(world, nginx)
    result = run_pipeline(["deploy"], {**ssh_env, "NGINX_SSH_KNOWN_HOSTS": str(empty)}, tmp_path)
    assert result.returncode == 3
    assert "host key is not in NGINX_SSH_KNOWN_HOSTS" in result.stderr
    assert "refusing an unknown host" in result.stderr
    assert snapshot(world, nginx) == before


def test_changed_host_key_is_refused(world, nginx, ssh_env, stack, tmp_path):
    other_key = Path(stack["STACK_DIR"]) / "id_ed25519.pub"   # any ed25519 key that is not the host's
    key_type, key_b64 = other_key.read_text().split()[:2]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[127.0.0.1]:{stack['SSH_PORT']} {key_type} {key_b64}\n")
    result = run_pipeline(["deploy"], {**ssh_env, "NGINX_SSH_KNOWN_HOSTS": str(forged)}, tmp_path)
    assert result.returncode == 3
    assert "host key does not match" in result.stderr


def test_unreachable_nginx_host_is_found_in_preflight(world, nginx, ssh_env, tmp_path):
    from teststack.realstack import free_port

    before = snapshot(world, nginx)
    result = run_pipeline(["deploy"], {**ssh_env, "NGINX_SSH_PORT": str(free_port())}, tmp_path)
    assert result.returncode == 3
    assert "is unreachable" in result.stderr
    assert snapshot(world, nginx) == before


def test_wrong_key_is_refused(world, nginx, ssh_env, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    result = run_pipeline(["deploy"], {**ssh_env, "NGINX_SSH_KEY": str(key)}, tmp_path)
    assert result.returncode == 3
    assert "key authentication failed" in result.stderr


def test_unreachable_docker_engine_is_a_preflight_error(world, nginx, settings_env, tmp_path):
    result = run_pipeline(["deploy"], {**settings_env, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}, tmp_path)
    assert result.returncode == 3
    assert "cannot reach the docker engine" in result.stderr


# -- every channel the run will use is proven before anything changes (exit 3, one line) ---------

def snapshot_but_history(world, nginx):
    """As snapshot(), but a run refused inside the flow is recorded in the history file."""
    containers, networks, include, files = snapshot(world, nginx)
    return containers, networks, include, [f for f in files if not f.endswith(".history.jsonl")]


def snapshot_but_history_of(taken):
    containers, networks, include, files = taken
    return containers, networks, include, [f for f in files if not f.endswith(".history.jsonl")]


def one_line(result) -> str:
    """The one error line (progress lines such as `==> preflight` may come before it)."""
    lines = [line for line in result.stderr.strip().splitlines() if " ==> " not in line]
    assert len(lines) == 1 and lines[0].startswith("pipeline: error: "), result.stderr
    return lines[0]


def test_refused_registry_login_is_a_preflight_error(world, nginx, settings_env, stack, tmp_path):
    before = snapshot_but_history(world, nginx)
    env = {**settings_env, "REGISTRY": stack["REGISTRY_ADDR"], "REGISTRY_USERNAME": stack["REGISTRY_USER"],
           "REGISTRY_PASSWORD": "not-the-password"}
    result = run_pipeline(["deploy"], env, tmp_path)
    assert result.returncode == 3, result.stderr
    line = one_line(result)
    assert line.startswith(f"pipeline: error: registry {stack['REGISTRY_ADDR']}: login as "
                           f"{stack['REGISTRY_USER']} failed: "), line
    assert "not-the-password" not in result.stderr
    assert snapshot_but_history(world, nginx) == before


def test_registry_that_never_answers_the_login_is_a_preflight_error(world, nginx, settings_env, tmp_path):
    from .outside import SilentListener

    registry = SilentListener()
    before = snapshot_but_history(world, nginx)
    env = {**settings_env, "REGISTRY": f"127.0.0.1:{registry.port}", "REGISTRY_USERNAME": "someone",
           "REGISTRY_PASSWORD": "secret", "NETWORK_TIMEOUT": "3"}
    try:
        result = run_pipeline(["deploy"], env, tmp_path, timeout=60)
    finally:
        registry.stop()
    assert result.returncode == 3, result.stderr
    assert one_line(result) == (f"pipeline: error: registry 127.0.0.1:{registry.port}: login as someone failed: "
                                f"no answer within 3s (NETWORK_TIMEOUT)")
    assert snapshot_but_history(world, nginx) == before


def test_nginx_host_that_runs_no_commands_is_a_preflight_error(world, nginx, ssh_env, stack, tmp_path):
    """An SFTP-only account: files work, commands (nginx -t, reload) never would. Found by the
    flow's first command, preflight's route check (issue 15: no session of its own at connect),
    so the refused run is in the history, as other preflight failures inside the flow are."""
    from .outside import OwnSshd

    sshd = OwnSshd(stack, tmp_path / "sshd", extra=["ForceCommand internal-sftp"])
    before = snapshot(world, nginx)
    try:
        result = run_pipeline(["deploy"], {**sshd.env(ssh_env), "NETWORK_TIMEOUT": "3"}, tmp_path, timeout=60)
    finally:
        sshd.stop()
    assert result.returncode == 3, result.stderr
    line = one_line(result)
    assert line.startswith(f"pipeline: error: nginx host root@127.0.0.1:{sshd.port} over SSH: running `true`"), line
    assert snapshot_but_history(world, nginx) == snapshot_but_history_of(before)
