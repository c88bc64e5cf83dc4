"""paramiko is loaded only when SSH is used (pipeline/_lazy.py, issue 10): a local rollback never
loads it (nor charset_normalizer), and with the docker engine *and* nginx over SSH (127.0.0.1:2222) deploy and rollback
still work, through the docker SDK's own ssh:// transport and through ours."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from teststack.realstack import pipeline_env, run_pipeline

pytestmark = pytest.mark.integration


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:{result.stdout}\nstderr:{result.stderr}"


def _with_ssh_home(home: Path, stack) -> Path:
    """A HOME whose ~/.ssh lets the docker SDK's paramiko client log in to the stack's sshd: it
    reads the key from ~/.ssh/config and checks the host key against ~/.ssh/known_hosts."""
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "config").write_text(f"Host 127.0.0.1\n  IdentityFile {stack['SSH_KEY']}\n")
    (ssh / "known_hosts").write_text(Path(stack["SSH_KNOWN_HOSTS"]).read_text())
    return home


def test_a_local_rollback_to_a_running_release_never_loads_paramiko(nginx, settings_env, tmp_path):
    env = {**settings_env, "KEEP_PREVIOUS_RUNNING": "true"}
    for version in ("v1", "v2"):
        assert_ok(run_pipeline(["deploy"], {**env, "APP_VERSION": version}, tmp_path))
    # -X importtime names every module the run imported, on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline", "rollback"], cwd=tmp_path,
                          env=pipeline_env(env), capture_output=True, text=True, timeout=120)
    assert_ok(done)
    assert nginx.get().text == "version=v1 color=blue\n"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "docker" in imported and "pipeline.flows.deploy" in imported   # the listing is complete
    assert not {"paramiko.transport", "paramiko.client", "invoke"} & imported
    assert "charset_normalizer.api" not in imported   # nor the charset guessing requests brings


def test_deploy_and_rollback_with_the_engine_and_nginx_over_ssh(world, nginx, ssh_env, stack, tmp_path):
    home = _with_ssh_home(tmp_path / "home", stack)
    env = {**ssh_env, "DOCKER_HOST": f"ssh://root@127.0.0.1:{stack['SSH_PORT']}", "HOME": str(home),
           "KEEP_PREVIOUS_RUNNING": "true"}
    for version in ("v1", "v2"):
        result = run_pipeline(["deploy"], {**env, "APP_VERSION": version}, tmp_path)
        assert_ok(result)
    assert nginx.get().text == "version=v2 color=green\n"
    assert world.state("blue") == "running"
    back = run_pipeline(["rollback"], env, tmp_path)
    assert_ok(back)
    assert nginx.get().text == "version=v1 color=blue\n"
    status = run_pipeline(["status"], env, tmp_path)
    assert_ok(status)
    assert "live:     blue (v1)" in status.stdout
