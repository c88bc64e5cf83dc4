"""Hooks and `--report FILE` on the real stack (issue 18): the real CLI, dockerd and an nginx of the
test's own.

Hooks live where a team keeps them, `.pipeline/hooks/` in the working directory, and write what
they were given to files the test reads: their whole environment (the PIPELINE_* facts, nothing
secret), whether the deploy lock was held, and what the live include named at that moment.
Reports are checked against docs/report.schema.json for a success and for each exit code a run
can end with here, 6 included (a switch back that fails: nginx's reload refused the second time).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import jsonschema
import pytest

from teststack.realstack import REPO, pipeline_env, run_pipeline, start_pipeline, wait_for
from teststack.traffic import Traffic

pytestmark = pytest.mark.integration

SCHEMA = json.loads((REPO / "docs" / "report.schema.json").read_text())
# Secrets the tool is given, which no hook may see (by value: under any name).
SECRETS = {"REGISTRY_PASSWORD": "registry-pw-4711", "DB_PASSWORD": "db-pw-0815", "API_TOKEN": "tok-3141592"}
# What a hook may get of the tool's environment (flows/hooks.py, ALLOWED), and the facts.
ALLOWED = {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "BUILD_TAG",
           "BUILD_NUMBER", "BUILD_URL", "JOB_NAME", "JOB_URL"}
FACTS = {"PIPELINE_ACTION", "PIPELINE_VERSION", "PIPELINE_PREVIOUS_VERSION", "PIPELINE_COLOR", "PIPELINE_DURATION",
         "PIPELINE_PERFORMER", "PIPELINE_NGINX_HOSTS"}
# Tripwire for a hook killed at HOOK_TIMEOUT=1: the whole refused run (no build) took 1.3-1.6 s here.
TIMEOUT_TRIPWIRE = 16.0


def hook(cwd: Path, name: str, body: str) -> Path:
    directory = cwd / ".pipeline" / "hooks"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def recording(cwd: Path, name: str, lock: Path, include: Path, exit_code: int = 0) -> Path:
    """A hook writing its environment (NUL-separated: `env -0`), whether the deploy lock was
    there, and what the include named, to OUT/NAME.*; then exiting with `exit_code`."""
    out = cwd / "seen"
    out.mkdir(exist_ok=True)
    hook(cwd, name, f"""env -0 > {out}/{name}.env
if [ -e {lock} ]; then echo held > {out}/{name}.lock; else echo free > {out}/{name}.lock; fi
cat {include} > {out}/{name}.include
echo "{name} says hello"
exit {exit_code}""")
    return out


def seen(out: Path, name: str) -> Dict[str, str]:
    raw = (out / f"{name}.env").read_bytes().decode()
    return dict(entry.split("=", 1) for entry in raw.split("\0") if entry)


def tool_env(settings_env: Dict[str, str], **more: str) -> Dict[str, str]:
    return {**settings_env, **SECRETS, "BUILD_TAG": "jenkins-shop-42", **more}


def ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    return result


def error_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("pipeline: error: "))


def valid(path: Path) -> dict:
    document = json.loads(path.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    return document


# -- hooks ------------------------------------------------------------------------------------------

def test_each_hook_runs_with_its_facts_under_the_lock_and_sees_no_secret(world, nginx, settings_env, tmp_path):
    lock = nginx.include.parent / f"{world.app}.deploy.lock"
    names = ("pre-deploy", "post-deploy", "pre-rollback", "post-rollback")
    for name in names:
        out = recording(tmp_path, name, lock, nginx.include)
    env = tool_env(settings_env)
    net = world.network

    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    second = ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v2"}, tmp_path))
    assert "    | post-deploy says hello" in second.stderr, "a hook's output is in the log, under its phase"
    deploy_pre, deploy_post = seen(out, "pre-deploy"), seen(out, "post-deploy")
    # The pre hook runs before anything changes: nginx still went to v1 (blue); the post hook after.
    assert (out / "pre-deploy.include").read_text() == f"set $service_url http://{net.blue_ip}:8080;\n"
    assert (out / "post-deploy.include").read_text() == f"set $service_url http://{net.green_ip}:8080;\n"

    ok(run_pipeline(["rollback"], env, tmp_path))
    rollback_pre, rollback_post = seen(out, "pre-rollback"), seen(out, "post-rollback")

    facts = {k: v for k, v in deploy_pre.items() if k.startswith("PIPELINE_")}
    assert float(facts.pop("PIPELINE_DURATION")) >= 0
    assert facts == {"PIPELINE_ACTION": "deploy", "PIPELINE_VERSION": "v2", "PIPELINE_PREVIOUS_VERSION": "v1",
                     "PIPELINE_COLOR": "green", "PIPELINE_PERFORMER": "jenkins-shop-42",
                     "PIPELINE_NGINX_HOSTS": "localhost"}
    assert (deploy_post["PIPELINE_RESULT"], deploy_post["PIPELINE_VERSION"]) == ("ok", "v2")
    assert float(deploy_post["PIPELINE_DURATION"]) > float(deploy_pre["PIPELINE_DURATION"])
    assert "PIPELINE_RESULT" not in deploy_pre and "PIPELINE_RESULT" not in rollback_pre
    for told in (rollback_pre, rollback_post):
        assert (told["PIPELINE_ACTION"], told["PIPELINE_VERSION"], told["PIPELINE_PREVIOUS_VERSION"],
                told["PIPELINE_COLOR"]) == ("rollback", "v1", "v2", "blue")
    assert rollback_post["PIPELINE_RESULT"] == "ok"

    for name, told in zip(names, (deploy_pre, deploy_post, rollback_pre, rollback_post)):
        assert (out / f"{name}.lock").read_text() == "held\n", f"{name} ran without the deploy lock"
        assert set(told) - {"PWD", "SHLVL", "_"} <= ALLOWED | FACTS | {"PIPELINE_RESULT"}, name
        everything = "\0".join(f"{k}={v}" for k, v in told.items())
        assert not [k for k, v in SECRETS.items() if v in everything], f"{name} saw a secret"
        assert "NGINX_INCLUDE" not in told and "APP_NAME" not in told, "no setting passes unless allowed"
    assert nginx.get().text == "version=v1 color=blue\n"


def test_a_failing_pre_hook_stops_the_deploy_before_anything_changes(world, nginx, settings_env, tmp_path):
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    include = nginx.include.read_text()
    hook(tmp_path, "pre-deploy", "echo 'change freeze until monday' >&2; exit 3")
    out = recording(tmp_path, "post-deploy", nginx.include.parent / "x.lock", nginx.include)
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        result = run_pipeline(["deploy", "--report", "r.json"], {**settings_env, "APP_VERSION": "v2"}, tmp_path)
    assert result.returncode == 1, result.stderr
    path = tmp_path / ".pipeline" / "hooks" / "pre-deploy"
    assert error_line(result.stderr) == f"pipeline: error: the pre-deploy hook {path} exited with 3; nothing was changed"
    assert "    change freeze until monday" in result.stderr
    assert world.state("green") == "absent"
    assert not world.client.images.list(name=f"{world.app}:v2"), "nothing was built"
    assert nginx.include.read_text() == include and nginx.get().text == "version=v1 color=blue\n"
    assert not (out / "post-deploy.env").exists(), "a refused run has no post hook"
    assert traffic.report.failed == 0 and traffic.report.ok > 0
    document = valid(tmp_path / "r.json")
    assert [(p["name"], p.get("failed", False)) for p in document["phases"]] == [
        ("preflight", False), ("pre-deploy hook", True)]
    history = ok(run_pipeline(["history", "--json"], settings_env, tmp_path))
    assert [(e["version"], e["result"]) for e in json.loads(history.stdout)] == [("v1", "ok"), ("v2", "failed")]


def test_a_failing_post_hook_is_a_warning_and_the_deploy_stands(world, nginx, settings_env, tmp_path):
    hook(tmp_path, "post-deploy", "echo 'slack is down'; exit 2")
    result = ok(run_pipeline(["deploy", "--report", "r.json"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    path = tmp_path / ".pipeline" / "hooks" / "post-deploy"
    assert f"the post-deploy hook {path} exited with 2; the run's result stands" in result.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
    document = valid(tmp_path / "r.json")
    assert (document["result"], document["exit_code"], document["phases"][-1]["name"]) == \
        ("ok", 0, "post-deploy hook")


def test_a_hanging_pre_hook_is_killed_at_the_timeout(world, nginx, settings_env, tmp_path):
    pid_file = tmp_path / "hook.pid"
    hook(tmp_path, "pre-rollback", f"echo $$ > {pid_file}; exec sleep 300")
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v2"}, tmp_path))
    started = time.monotonic()
    result = run_pipeline(["rollback"], {**settings_env, "HOOK_TIMEOUT": "1"}, tmp_path)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert error_line(result.stderr).endswith("did not finish within 1s (HOOK_TIMEOUT) and was killed; "
                                              "nothing was changed")
    assert took < TIMEOUT_TRIPWIRE, took
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], \
        "the hook's process is gone"
    assert world.state("blue") == "exited" and nginx.get().text == "version=v2 color=green\n"
    lock = nginx.include.parent / f"{world.app}.deploy.lock"
    assert not lock.exists(), "the lock was released"


def test_a_hook_that_is_not_executable_is_bad_input(world, nginx, settings_env, tmp_path):
    path = hook(tmp_path, "pre-deploy", "exit 0")
    path.chmod(0o644)
    result = run_pipeline(["deploy", "--report", "r.json"], {**settings_env, "APP_VERSION": "v1"}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert error_line(result.stderr) == (
        f"pipeline: error: HOOKS_DIR=.pipeline/hooks: the pre-deploy hook {path} is not executable: "
        f"`chmod +x {path}`, or rename it (e.g. pre-deploy.sample) to turn it off")
    assert world.running_containers() == []
    assert valid(tmp_path / "r.json")["exit_code"] == 2


# -- --report -------------------------------------------------------------------------------------

def test_a_deploys_report_has_every_phase_and_the_verification_counts(world, nginx, settings_env, tmp_path):
    env = {**settings_env, "VERIFY_SECONDS": "2", "NGINX_ACCESS_LOG": str(nginx.access_log),
           "VERIFY_MIN_REQUESTS": "1"}
    ok(run_pipeline(["deploy"], {**env, "APP_VERSION": "v1"}, tmp_path))
    with Traffic(f"http://127.0.0.1:{nginx.port}/") as traffic:
        ok(run_pipeline(["deploy", "--report", "out.json"], {**env, "APP_VERSION": "v2"}, tmp_path))
    assert traffic.report.failed == 0
    document = valid(tmp_path / "out.json")
    assert {k: document[k] for k in ("action", "version", "previous_version", "color", "result", "exit_code",
                                     "error")} == {
        "action": "deploy", "version": "v2", "previous_version": "v1", "color": "green", "result": "ok",
        "exit_code": 0, "error": None}
    phases = {p["name"]: p for p in document["phases"]}
    assert list(phases) == ["preflight", "build", "start", "health", "switch", "verify", "drain", "last look",
                            "stop old"]
    counts = phases["verify"]["counts"]
    assert counts["requests"] > 0 and counts["errors"] == 0 and counts["probes"] >= 1
    assert phases["verify"]["seconds"] >= 2
    spent = sum(p["seconds"] for p in document["phases"])
    assert spent <= document["seconds"] and document["phases"][-1]["started"] < document["seconds"]
    assert not list(tmp_path.glob(".out.json.*")), "no temporary file is left beside the report"


def test_a_failed_deploy_writes_its_report_naming_the_phase(world, nginx, settings_env, tmp_path):
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    result = run_pipeline(["deploy", "--report", "r.json"],
                          {**settings_env, "APP_VERSION": "v2", "HEALTH_PATH": "/missing", "HEALTH_TIMEOUT": "2"},
                          tmp_path)
    assert result.returncode == 1, result.stderr
    document = valid(tmp_path / "r.json")
    assert (document["result"], document["color"], document["previous_version"]) == ("failed", "green", "v1")
    assert document["error"] == error_line(result.stderr).removeprefix("pipeline: error: ")
    assert [p["name"] for p in document["phases"] if p.get("failed")] == ["health"]


def _bad_setting(env, cwd):
    return run_pipeline(["deploy", "--report", "r.json"], {**env, "HEALTH_TIMEOUT": "soon"}, cwd)


def _preflight(env, cwd):
    return run_pipeline(["promote", "--report", "r.json"], {**env, "NGINX_INCLUDE": "/nonexistent/dir/x.inc"}, cwd)


def _locked(env, cwd):
    Path(env["NGINX_INCLUDE"]).parent.joinpath(f"{env['APP_NAME']}.deploy.lock").write_bytes(b"\x00garbage")
    return run_pipeline(["rollback", "--report", "r.json"], env, cwd)


def _nothing_to_do(env, cwd):
    return run_pipeline(["rollback", "--to", "v9", "--report", "r.json"], env, cwd)


def _bug(env, cwd):
    # A bug, put in for the test: the CLI as it is, with one step of the flow raising a TypeError.
    code = ("import sys; from pipeline.flows import deploy\n"
            "def broken(*args): raise TypeError('a bug put in by the test')\n"
            "deploy.check_version_is_new = broken\n"
            "from pipeline.cli import main; import os; sys.exit(main(sys.argv[1:], os.environ))")
    return subprocess.run([sys.executable, "-c", code, "deploy", "--report", "r.json"], cwd=cwd,
                          env=pipeline_env({**env, "APP_VERSION": "v1"}), capture_output=True, text=True, timeout=120)


def _terminated(env, cwd):
    marker = cwd / "hook-started"
    hook(cwd, "pre-deploy", f"touch {marker}; exec sleep 300")
    process = start_pipeline(["deploy", "--report", "r.json"], {**env, "APP_VERSION": "v1"}, cwd)
    wait_for(marker.exists, 60, what="the pre-deploy hook to start")
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("cause, code, result, action", [
    (_bad_setting, 2, "failed", "deploy"),
    (_preflight, 3, "failed", "promote"),
    (_locked, 4, "failed", "rollback"),
    (_nothing_to_do, 5, "failed", "rollback"),
    (_bug, 70, "failed", "deploy"),
    (_terminated, 143, "interrupted", "deploy"),
], ids=["bad-input-2", "preflight-3", "locked-4", "nothing-to-do-5", "bug-70", "sigterm-143"])
def test_every_failure_exit_code_writes_a_valid_report(world, nginx, settings_env, tmp_path, cause, code, result,
                                                       action):
    completed = cause(settings_env, tmp_path)
    assert completed.returncode == code, completed.stderr
    document = valid(tmp_path / "r.json")
    assert (document["exit_code"], document["result"], document["action"]) == (code, result, action)
    line = next(line for line in completed.stderr.splitlines() if line.startswith("pipeline: "))
    assert document["error"] and document["error"] in line
    assert world.running_containers() == [], "nothing was started"
    if code == 143:
        assert [p["name"] for p in document["phases"] if p.get("failed")] == ["pre-deploy hook"]
        assert (document["version"], document["color"]) == ("v1", "blue")


def test_a_failed_switch_back_leaves_the_new_release_live_unverified_and_says_so(world, nginx, settings_env,
                                                                                  tmp_path):
    """Exit 6 for real: a release answering 500 to 30% of requests fails verification, and the
    switch back fails because nginx's reload command (a wrapper of the test's own) reloads the
    first time and refuses from then on. The README: the new release serves, unverified; the old
    one still runs; the message says what serves and what to run; history `live unverified`."""
    ok(run_pipeline(["deploy"], {**settings_env, "APP_VERSION": "v1"}, tmp_path))
    calls = tmp_path / "reload-calls"
    wrapper = tmp_path / "reload-once"
    wrapper.write_text(f"""#!/bin/sh
n=$(( $(cat {calls} 2>/dev/null || echo 0) + 1 ))
echo $n > {calls}
if [ $n -gt 1 ]; then echo "reload refused by the test (call $n)" >&2; exit 1; fi
exec {nginx.reload_command}
""")
    wrapper.chmod(0o755)
    bad = tmp_path / "bad.env"
    bad.write_text("FAIL_RATE=0.3\n")
    env = {**settings_env, "APP_VERSION": "v2", "CONTAINER_ENV_FILE": str(bad), "NGINX_RELOAD_COMMAND": str(wrapper),
           "VERIFY_SECONDS": "20", "VERIFY_MIN_REQUESTS": "10", "NGINX_ACCESS_LOG": str(nginx.access_log)}
    with Traffic(f"http://127.0.0.1:{nginx.port}/", max_seconds=60):
        result = run_pipeline(["deploy", "--report", "r.json"], env, tmp_path)
    assert result.returncode == 6, result.stderr
    assert calls.read_text() == "2\n", "one reload for the switch, one refused for the switch back"
    line = error_line(result.stderr)
    assert line.startswith("pipeline: error: green answered 5xx to "), line
    assert "; switching back to blue failed: " in line and "reload refused by the test (call 2)" not in line
    assert line.endswith(f"{world.app}-green still has the traffic, unverified; {world.app}-blue is still running. "
                         f"To go back to blue, run `python -m pipeline rollback` once that is fixed"), line
    assert "`" + str(wrapper) + "` exited with 1" in line
    # Why the switch back failed: the reload command's own words, under the line.
    assert "\n    reload refused by the test (call 2)\n" in result.stderr
    assert "Traceback" not in result.stderr

    # nginx serves the new release (the 500s are its own: FAIL_RATE), the old container still runs.
    answers = [nginx.get() for _ in range(20)]
    assert {a.status_code for a in answers} <= {200, 500}, [a.status_code for a in answers]
    assert {a.text for a in answers if a.status_code == 200} == {"version=v2 color=green\n"}
    assert world.state("green") == "running" and world.state("blue") == "running"
    assert f"{world.network.green_ip}:8080" in nginx.include.read_text()

    last = json.loads(ok(run_pipeline(["history", "--json"], settings_env, tmp_path)).stdout)[-1]
    assert (last["action"], last["version"], last["result"]) == ("deploy", "v2", "live unverified")
    document = valid(tmp_path / "r.json")
    assert {k: document[k] for k in ("action", "version", "previous_version", "color", "result", "exit_code")} == {
        "action": "deploy", "version": "v2", "previous_version": "v1", "color": "green",
        "result": "live unverified", "exit_code": 6}
    assert document["error"] == line.removeprefix("pipeline: error: ")
    verify = [p for p in document["phases"] if p.get("failed")]
    assert [p["name"] for p in verify] == ["verify"], document["phases"]
    counts = verify[0]["counts"]
    assert counts["requests"] >= 10 and counts["errors"] > 0, counts

    # What the message says to run, once nginx can be switched again: a switch only, back to v1.
    rolled = ok(run_pipeline(["rollback"], settings_env, tmp_path))
    assert "starting kept container" not in rolled.stderr
    assert nginx.get().text == "version=v1 color=blue\n"
