"""Secrets stay secret (issue 8, section 4): no secret value in any output of deploy, status,
status --json or history --json, nor in the history file; REGISTRY_PASSWORD reaches no child
process (the build command, git, the nginx test and reload commands)."""
from __future__ import annotations

import json
import os
import shlex
import uuid

import pytest

from teststack.realstack import run_pipeline

pytestmark = pytest.mark.integration


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def secret(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def test_secret_build_args_and_container_env_never_show(world, nginx, settings_env, tmp_path):
    npm_token, api_key = secret("npm"), secret("api")
    env_file = tmp_path / "container.env"
    env_file.write_text(f"API_KEY={api_key}\nGREETING=hello\n")
    env = {**settings_env,
           "BUILD_ARGS": settings_env["BUILD_ARGS"] + f" NPM_TOKEN={npm_token}",
           "CONTAINER_ENV_FILE": str(env_file)}
    outputs = {}
    deployed = ok(run_pipeline(["--verbose", "deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    outputs["deploy"] = deployed.stdout + deployed.stderr
    assert nginx.get().text == "version=v1 color=blue\n"

    # A build that prints both values: its output lines, the error line and its detail lines.
    build_command = f"sh -c {shlex.quote(f'echo the token is {npm_token}; echo key={api_key}; exit 3')}"
    failed = run_pipeline(["deploy"], {**env, "APP_VERSION": "v2", "BUILD_COMMAND": build_command}, tmp_path)
    assert failed.returncode == 1, failed.stderr
    outputs["failed deploy"] = failed.stdout + failed.stderr
    assert "| the token is ***" in failed.stderr           # the streamed build output
    assert "    the token is ***" in failed.stderr          # the error's detail lines
    assert "pipeline: error: build command `sh -c" in failed.stderr

    for args in (["status"], ["status", "--json"], ["history"], ["history", "--json"], ["lock", "status"]):
        result = ok(run_pipeline(args, env, tmp_path))
        outputs[" ".join(args)] = result.stdout + result.stderr
    report = json.loads(outputs["status --json"])
    assert "'NPM_TOKEN': '***'" in report["settings"]["build_args"]
    assert "BASE_IMAGE" in report["settings"]["build_args"]
    history = json.loads(outputs["history --json"])
    assert [e["result"] for e in history] == ["ok", "failed"]
    assert "***" in history[1]["message"]

    for what, text in outputs.items():
        assert npm_token not in text, f"NPM_TOKEN's value in the output of {what}"
        assert api_key not in text, f"API_KEY's value in the output of {what}"
    history_file = nginx.include.parent / f"{world.app}.history.jsonl"
    assert npm_token not in history_file.read_text()


def test_a_bad_build_args_value_is_named_without_its_secret(world, nginx, settings_env, tmp_path):
    token = secret("npm")
    result = run_pipeline(["status"], {**settings_env, "BUILD_ARGS": f"NPM_TOKEN={token} oops"}, tmp_path)
    assert result.returncode == 2
    assert "BUILD_ARGS=NPM_TOKEN=*** oops: expected KEY=VALUE words, got 'oops'" in result.stderr
    assert token not in result.stderr + result.stdout


def test_registry_password_reaches_no_child_process(world, nginx, settings_env, tmp_path):
    password = secret("registry")
    seen = tmp_path / "seen"
    seen.mkdir()

    def dumping(name: str, command: str) -> str:
        """`command`, after writing the environment it got to seen/NAME."""
        return f"sh -c {shlex.quote(f'env > {seen / name} && exec {command}')}"

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    git = fake_bin / "git"
    git.write_text(f"#!/bin/sh\nenv > {seen / 'git'}\nexit 128\n")   # as outside a repository
    git.chmod(0o755)
    env = {**settings_env,
           "APP_VERSION": "",                      # settled by `git rev-parse`, else the time
           "REGISTRY_PASSWORD": password,
           "PATH": f"{fake_bin}:{os.environ['PATH']}",
           "BUILD_COMMAND": dumping("build", "true"),
           "NGINX_TEST_COMMAND": dumping("test", nginx.test_command),
           "NGINX_RELOAD_COMMAND": dumping("reload", nginx.reload_command)}
    result = ok(run_pipeline(["deploy"], env, tmp_path))
    assert nginx.get().text.startswith("version=")
    for child in ("git", "build", "test", "reload"):
        got = (seen / child).read_text()
        assert "PATH=" in got, child                 # the child did get an environment ...
        assert "REGISTRY_PASSWORD" not in got and password not in got, f"{child} got REGISTRY_PASSWORD"
    assert password not in result.stdout + result.stderr
