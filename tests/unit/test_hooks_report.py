"""Hooks and `--report` (issue 18), on the fakes: which hook a run takes and when, what a hook's
environment holds (an allow-list: no secret), the phases a run records on its clock, and the
report document against docs/report.schema.json. The same runs end to end:
tests/integration/test_hooks_report.py."""
from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import jsonschema
import pytest

from pipeline import cli
from pipeline.core.errors import HookFailed, LiveUnverified, SettingsError
from pipeline.core.runlog import RunLog, report_document
from pipeline.flows import deploy as flows
from pipeline.flows import hooks, report

from .fakes import FakeClock, World, no_network  # noqa: F401  (autouse: no flow reaches the network)

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())


@pytest.fixture(autouse=True)
def logger_kept():
    """cli.main sets the `pipeline` logger up for a terminal (no propagation): put it back, so
    that later tests' caplog still sees the log."""
    logger = logging.getLogger("pipeline")
    kept = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = kept[0], kept[1], kept[2]


def valid(document: dict) -> dict:
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    return document


def hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


# -- the environment: an allow-list ------------------------------------------------------------------

TOOL_ENVIRON = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/jenkins", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
    "BUILD_TAG": "jenkins-app-12", "BUILD_URL": "http://jenkins.internal/job/app/12/",
    "REGISTRY_PASSWORD": "hunter2-registry", "NGINX_SSH_KEY": "/var/jenkins/key", "AWS_SECRET_ACCESS_KEY": "x",
    "SLACK_WEBHOOK": "https://hooks.example/T0/B0/abc", "DB_URL": "postgres://u:pw@db/app",
    "APP_NAME": "shop", "SSH_AUTH_SOCK": "/tmp/agent.sock", "LD_PRELOAD": "/tmp/evil.so",
}


def test_a_hooks_environment_is_the_allow_list_and_the_runs_facts():
    runlog = RunLog("deploy", "v2", "v1", "green")
    env = hooks.environment(TOOL_ENVIRON, runlog, "jenkins-app-12", "nginx1", 12.34)
    assert env == {
        "PATH": "/usr/bin:/bin", "HOME": "/home/jenkins", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "BUILD_TAG": "jenkins-app-12", "BUILD_URL": "http://jenkins.internal/job/app/12/",
        "PIPELINE_ACTION": "deploy", "PIPELINE_VERSION": "v2", "PIPELINE_PREVIOUS_VERSION": "v1",
        "PIPELINE_COLOR": "green", "PIPELINE_DURATION": "12.3", "PIPELINE_PERFORMER": "jenkins-app-12",
        "PIPELINE_NGINX_HOSTS": "nginx1",
    }


def test_a_post_hook_is_told_the_result_and_a_first_release_has_no_previous_version():
    env = hooks.environment({}, RunLog("rollback", "v1", None, "blue"), "me@box", "localhost", 3, "switched back")
    assert env["PIPELINE_RESULT"] == "switched back"
    assert env["PIPELINE_PREVIOUS_VERSION"] == ""
    assert env["PATH"], "a hook without PATH in the tool's environment still finds sh and friends"


# -- which hooks are there, and bad ones -------------------------------------------------------------

def test_hooks_of_other_names_and_a_missing_directory_are_fine(tmp_path):
    hooks.check(Path("nowhere"), tmp_path, "deploy")
    hook(tmp_path / "h", "pre-deploy.sample", "exit 1", mode=0o644)
    hook(tmp_path / "h", "pre-rollback", "exit 0", mode=0o644)   # not a deploy's hook
    hooks.check(Path("h"), tmp_path, "deploy")
    assert hooks.find(Path("h"), tmp_path, "pre-deploy") is None


@pytest.mark.parametrize("action", ["deploy", "stage", "promote"])
def test_a_hook_that_is_not_executable_is_bad_input_naming_it(tmp_path, action):
    path = hook(tmp_path / "h", "post-deploy", "exit 0", mode=0o644)
    with pytest.raises(SettingsError) as caught:
        hooks.check(Path("h"), tmp_path, action)
    assert str(caught.value) == (f"HOOKS_DIR=h: the post-deploy hook {path} is not executable: `chmod +x {path}`, "
                                 f"or rename it (e.g. post-deploy.sample) to turn it off")
    assert caught.value.exit_code == 2


def test_a_hook_that_is_a_directory_or_a_dangling_link_is_bad_input(tmp_path):
    (tmp_path / "h" / "pre-rollback").mkdir(parents=True)
    with pytest.raises(SettingsError, match="pre-rollback is not a file"):
        hooks.check(Path("h"), tmp_path, "rollback")
    (tmp_path / "h" / "pre-rollback").rmdir()
    (tmp_path / "h" / "pre-rollback").symlink_to(tmp_path / "gone")
    with pytest.raises(SettingsError, match="pre-rollback is not a file"):
        hooks.check(Path("h"), tmp_path, "rollback")
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingsError, match="HOOKS_DIR=file: not a directory"):
        hooks.check(Path("file"), tmp_path, "rollback")


@pytest.mark.parametrize("raw", ["0", "-1", "1e3", "3601", "soon"])
def test_a_bad_hook_timeout_is_bad_input(tmp_path, raw):
    from pipeline.core.settings import Settings

    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"HOOK_TIMEOUT": raw}, tmp_path)
    assert str(caught.value).startswith(f"HOOK_TIMEOUT={raw}: must be a positive number of seconds")


# -- running one -----------------------------------------------------------------------------------

def test_a_failing_pre_hook_raises_with_its_last_lines_and_a_post_hook_only_warns(tmp_path, caplog):
    path = hook(tmp_path, "pre-deploy", "echo checking the freeze; echo frozen until monday >&2; exit 3")
    with pytest.raises(HookFailed) as caught:
        hooks.run(path, "pre-deploy", {"PATH": "/usr/bin:/bin"}, tmp_path, 30, must_pass=True)
    assert str(caught.value) == f"the pre-deploy hook {path} exited with 3; nothing was changed"
    assert list(caught.value.detail()) == ["checking the freeze", "frozen until monday"]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        hooks.run(path, "post-deploy", {"PATH": "/usr/bin:/bin"}, tmp_path, 30, must_pass=False)
    assert f"the post-deploy hook {path} exited with 3; the run's result stands" in caplog.text


def test_a_hook_running_longer_than_the_timeout_is_killed_with_what_it_started(tmp_path):
    marker = tmp_path / "child-still-ran"
    path = hook(tmp_path, "pre-deploy", f"(sleep 1; touch {marker}) & sleep 60")
    with pytest.raises(HookFailed, match=r"did not finish within 0.3s \(HOOK_TIMEOUT\) and was killed"):
        hooks.run(path, "pre-deploy", {"PATH": "/usr/bin:/bin"}, tmp_path, 0.3, must_pass=True)
    import time
    time.sleep(1.5)
    assert not marker.exists(), "the hook's own children are killed with it (its process group)"


def test_a_script_without_a_shebang_says_why_it_cannot_start(tmp_path):
    path = tmp_path / "pre-rollback"
    path.write_text("echo no shebang\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(HookFailed, match=r"could not start: Exec format error \(a script needs a #! line\)"):
        hooks.run(path, "pre-rollback", {"PATH": "/usr/bin:/bin"}, tmp_path, 5, must_pass=True)


# -- in the flows --------------------------------------------------------------------------------

def recorder(directory: Path, *names: str, fail: str = "") -> Path:
    """Hooks that write their PIPELINE_* environment to NAME.env; `fail`: that one exits 1."""
    for name in names:
        hook(directory, name, f"env | grep ^PIPELINE_ | sort > {directory}/{name}.env; "
                              f"echo {name} ran >> {directory}/order; " + ("exit 1" if name == fail else "exit 0"))
    return directory


def told(directory: Path, name: str) -> dict:
    return dict(line.split("=", 1) for line in (directory / f"{name}.env").read_text().splitlines())


def test_a_deploy_runs_its_hooks_around_the_run_and_tells_them_what_it_does(tmp_path):
    directory = recorder(tmp_path / "hooks", "pre-deploy", "post-deploy", "pre-rollback", "post-rollback")
    world = World(hooks_dir=directory)
    assert world.step("deploy v1") == (0, "")
    assert told(directory, "pre-deploy") == {
        "PIPELINE_ACTION": "deploy", "PIPELINE_VERSION": "v1", "PIPELINE_PREVIOUS_VERSION": "",
        "PIPELINE_COLOR": "blue", "PIPELINE_DURATION": "0.0", "PIPELINE_PERFORMER": "unit",
        "PIPELINE_NGINX_HOSTS": "localhost"}
    assert world.step("deploy v2") == (0, "")
    post = told(directory, "post-deploy")
    assert {k: post[k] for k in ("PIPELINE_ACTION", "PIPELINE_VERSION", "PIPELINE_PREVIOUS_VERSION", "PIPELINE_COLOR",
                                 "PIPELINE_RESULT")} == {
        "PIPELINE_ACTION": "deploy", "PIPELINE_VERSION": "v2", "PIPELINE_PREVIOUS_VERSION": "v1",
        "PIPELINE_COLOR": "green", "PIPELINE_RESULT": "ok"}
    assert float(post["PIPELINE_DURATION"]) >= 1.0, "the drain (1 s on the fake clock) is in the run's time"
    assert world.step("rollback") == (0, "")
    assert told(directory, "post-rollback")["PIPELINE_VERSION"] == "v1"
    assert told(directory, "pre-rollback")["PIPELINE_PREVIOUS_VERSION"] == "v2"
    assert (directory / "order").read_text().split("\n")[:-1] == [
        "pre-deploy ran", "post-deploy ran", "pre-deploy ran", "post-deploy ran", "pre-rollback ran",
        "post-rollback ran"]


def test_a_failing_pre_hook_stops_the_run_before_anything_is_built_or_started(tmp_path):
    directory = recorder(tmp_path / "hooks", "pre-deploy", "post-deploy")
    world = World(hooks_dir=directory)
    assert world.step("deploy v1") == (0, "")
    recorder(directory, "pre-deploy", fail="pre-deploy")
    world.engine.mutations.clear()
    code, message = world.step("deploy v2")
    assert (code, message) == (1, f"the pre-deploy hook {directory}/pre-deploy exited with 1; nothing was changed")
    assert world.engine.mutations == [], "nothing built, started or stopped"
    assert world.serving() == ("v1", "blue")
    assert (directory / "order").read_text().splitlines()[-1] == "pre-deploy ran", "no post hook after a refusal"


def test_a_failing_post_hook_never_changes_the_result_and_a_failed_run_tells_it(tmp_path):
    directory = recorder(tmp_path / "hooks", "pre-deploy", "post-deploy", fail="post-deploy")
    world = World(hooks_dir=directory)
    assert world.step("deploy v1") == (0, "")
    assert told(directory, "post-deploy")["PIPELINE_RESULT"] == "ok"
    assert world.step("deploy v2 !unhealthy")[0] == 1
    assert told(directory, "post-deploy")["PIPELINE_RESULT"] == "failed"
    assert world.serving() == ("v1", "blue")


def test_no_hook_runs_when_the_run_stops_before_it_decided(tmp_path):
    directory = recorder(tmp_path / "hooks", "pre-rollback", "post-rollback")
    world = World(hooks_dir=directory)
    assert world.step("rollback")[0] == 5
    assert not (directory / "order").exists()


# -- phases --------------------------------------------------------------------------------------

def test_phases_are_timed_on_the_clock_and_a_failing_one_is_marked():
    clock, runlog = FakeClock(100.0), RunLog()
    with runlog.timed("build", clock, origin=99.0):
        clock.sleep(2.5)
    with pytest.raises(RuntimeError):
        with runlog.timed("health", clock, origin=99.0):
            clock.sleep(1)
            raise RuntimeError("no")
    assert [p.as_json() for p in runlog.phases] == [
        {"name": "build", "started": 1.0, "seconds": 2.5},
        {"name": "health", "started": 3.5, "seconds": 1.0, "failed": True}]


def test_a_deploy_records_its_phases_in_order_with_the_verification_counts(tmp_path):
    world = World(verify_seconds=2, hooks_dir=recorder(tmp_path / "hooks", "pre-deploy", "post-deploy"))
    assert world.step("deploy v1") == (0, "")
    ctx = world.context("v2")
    flows.deploy(ctx)
    phases = [p.as_json() for p in ctx.runlog.phases]
    assert [p["name"] for p in phases] == ["preflight", "pre-deploy hook", "build", "start", "health", "switch",
                                           "verify", "preview", "drain", "last look", "stop old", "post-deploy hook"]
    verify = phases[6]
    assert verify["seconds"] >= 2 and set(verify["counts"]) == {"requests", "errors", "probes"}
    assert verify["counts"]["requests"] > 0
    assert [p["started"] for p in phases] == sorted(p["started"] for p in phases)
    assert (ctx.runlog.action, ctx.runlog.version, ctx.runlog.previous_version, ctx.runlog.color) == \
        ("deploy", "v2", "v1", "green")


def test_a_switch_back_keeps_the_verification_counts(tmp_path):
    world = World(verify_seconds=5)
    assert world.step("deploy v1") == (0, "")
    world.bad_answers.add("v2")
    ctx = world.context("v2")
    with pytest.raises(flows.SwitchedBack):
        flows.deploy(ctx)
    verify = next(p for p in ctx.runlog.phases if p.name == "verify")
    assert verify.failed and verify.counts["errors"] > 0


# -- the report document and cli.main --------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["deploy", "--report", "r.json"], ("deploy", "r.json")),
    (["--verbose", "deploy", "--no-promote", "--report=out/r.json", "--bogus"], ("stage", "out/r.json")),
    (["rollback", "--to"], ("rollback", None)),
    (["status", "--report", "r.json"], (None, "r.json")),
])
def test_the_report_file_is_found_in_words_argparse_refused(argv, expected):
    assert report.scan(argv) == expected


def test_a_report_document_is_valid_for_success_and_failure():
    runlog = RunLog("deploy", "v2", "v1", "green")
    clock = FakeClock(0.0)
    with runlog.timed("verify", clock, 0.0) as step:
        step.counts = {"requests": 10, "errors": 0, "probes": 2}
    valid(report_document(runlog, 0, "ok", None, "2026-01-01T00:00:00Z", 1.0))
    valid(report_document(RunLog("rollback"), 5, "failed", "nothing to roll back to", "2026-01-01T00:00:00Z", 0.1))
    with pytest.raises(jsonschema.ValidationError):   # the schema can fail: an error on success
        valid(report_document(runlog, 0, "ok", "boom", "2026-01-01T00:00:00Z", 1.0))


def run_main(tmp_path, argv, environ=None):
    code = cli.main(argv, environ or {}, cwd=tmp_path)
    return code, json.loads((tmp_path / "r.json").read_text())


def test_bad_input_writes_a_report(tmp_path):
    code, document = run_main(tmp_path, ["deploy", "--report", "r.json"], {"HEALTH_TIMEOUT": "soon"})
    assert code == 2
    assert valid(document)["error"].startswith("HEALTH_TIMEOUT=soon: must be")
    assert (document["action"], document["result"], document["phases"]) == ("deploy", "failed", [])
    code, document = run_main(tmp_path, ["rollback", "--report", "r.json", "--no-such-flag"])
    assert (code, valid(document)["action"], document["exit_code"]) == (2, "rollback", 2)


def test_a_non_executable_hook_is_bad_input_before_anything_connects(tmp_path):
    hook(tmp_path / ".pipeline" / "hooks", "pre-rollback", "exit 0", mode=0o644)
    code, document = run_main(tmp_path, ["rollback", "--report", "r.json"])
    assert code == 2 and "pre-rollback hook" in valid(document)["error"]


def test_a_report_in_a_missing_directory_is_bad_input(tmp_path, capsys):
    assert cli.main(["promote", "--report", "no/such/r.json"], {}, cwd=tmp_path) == 2
    assert "pipeline: error: --report=no/such/r.json: no such directory: no/such" in capsys.readouterr().err


@pytest.mark.parametrize("raised, code, result", [
    (RuntimeError("a bug"), 70, "failed"),
    (LiveUnverified("switching back failed", "green"), 6, "live unverified"),
])
def test_a_bug_and_a_live_unverified_release_write_a_report(tmp_path, monkeypatch, raised, code, result):
    def failing(args, settings, environ, cwd, stdout, started, runlog):
        runlog.version, runlog.color = "v2", "green"
        with runlog.timed("switch", FakeClock(started), started):
            raise raised
    monkeypatch.setattr(cli, "_run", failing)
    got, document = run_main(tmp_path, ["promote", "--report", "r.json"])
    assert got == code == valid(document)["exit_code"]
    assert document["result"] == result and document["phases"][0]["failed"] is True
    assert document["error"] in ("internal error: RuntimeError: a bug", "switching back failed")


def test_a_report_never_holds_a_secret(tmp_path, monkeypatch):
    def failing(args, settings, environ, cwd, stdout, started, runlog):
        raise HookFailed("the pre-deploy hook said hunter2-registry")
    monkeypatch.setattr(cli, "_run", failing)
    code, document = run_main(tmp_path, ["promote", "--report", "r.json"], {"REGISTRY_PASSWORD": "hunter2-registry"})
    assert code == 1 and "hunter2" not in json.dumps(document) and "***" in document["error"]
