"""Secrets stay secret: the log's masking filter, the CLI's masked output, which values count as
secrets, and the environment of child processes."""
import io
import json
import logging
import os
import uuid

import pytest

from pipeline import log as logsetup
from pipeline.flows.build import default_version
from pipeline.core.errors import SettingsError
from pipeline.core.history import Entry, History
from pipeline.adapters.nginx_host import LocalHost
from pipeline.core.settings import Settings, is_secret_name, without_secrets


def secret(label="s"):
    return f"{label}-{uuid.uuid4().hex}"


@pytest.fixture
def logged():
    stream = io.StringIO()
    logger = logsetup.setup(stream=stream)
    yield logger, stream
    logsetup.setup()


def test_every_log_record_masks_registered_secrets(logged):
    logger, stream = logged
    value = secret()
    logsetup.register_secret(value)
    logger.info("    | echo %s", value)                   # in the arguments
    logger.warning(f"token={value}!")                     # in the message itself
    try:
        raise RuntimeError(f"failed with {value}")
    except RuntimeError:
        logger.exception("boom")                          # in a traceback
    text = stream.getvalue()
    assert value not in text
    assert "| echo ***" in text and "token=***!" in text and "RuntimeError: failed with ***" in text


def test_paramikos_records_are_masked_too_with_verbose():
    stream = io.StringIO()
    logsetup.setup(verbose=True, stream=stream)
    try:
        value = secret()
        logsetup.register_secret(value)
        logging.getLogger("paramiko.transport").warning("auth with %s", value)
        assert "auth with ***" in stream.getvalue() and value not in stream.getvalue()
    finally:
        logsetup.setup()


def test_json_escaped_forms_are_masked_too():
    value = f'quote"and\\slash-{uuid.uuid4().hex}'
    logsetup.register_secret(value)
    assert logsetup.mask(json.dumps({"message": f"x {value} y"})) == '{"message": "x *** y"}'


def test_values_too_short_to_be_secrets_are_not_masked_everywhere():
    logsetup.register_secret("7")
    logsetup.register_secret("")
    assert logsetup.mask("12:07:17 v7") == "12:07:17 v7"


def test_masked_stream_masks_each_write():
    value = secret()
    logsetup.register_secret(value)
    out = io.StringIO()
    logsetup.MaskedStream(out).write(f"settings: {value}\n")
    assert out.getvalue() == "settings: ***\n"


@pytest.mark.parametrize("key,is_secret", [
    ("NPM_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("DB_PASSWORD", True), ("api_key", True),
    ("SSH_KEYFILE", True), ("BASE_IMAGE", False), ("JAR", False), ("GREETING", False),
])
def test_secret_names(key, is_secret):
    assert is_secret_name(key) == is_secret


def test_secret_values_are_the_password_and_secret_build_args_and_container_env(tmp_path):
    env_file = tmp_path / "app.env"
    env_file.write_text("DB_PASSWORD=hunter22\nGREETING=hello\nEMPTY_TOKEN=\n")
    s = Settings.from_env({"REGISTRY_PASSWORD": "regpass", "BUILD_ARGS": "NPM_TOKEN=tok123 JAR=app.jar",
                           "CONTAINER_ENV_FILE": str(env_file)}, tmp_path)
    assert sorted(s.secret_values()) == ["hunter22", "regpass", "tok123"]
    shown = s.public()
    assert shown["build_args"] == "{'NPM_TOKEN': '***', 'JAR': 'app.jar'}"
    assert "regpass" not in json.dumps(shown)


@pytest.mark.parametrize("raw,shown", [
    ("NPM_TOKEN=tok123 oops", "BUILD_ARGS=NPM_TOKEN=*** oops: expected KEY=VALUE words, got 'oops'"),
    ("NPM_TOKEN=tok123 BAD-TOKEN=tok456", "BUILD_ARGS=NPM_TOKEN=*** BAD-TOKEN=***: expected KEY=VALUE words, "
                                          "got 'BAD-TOKEN=***'"),
    ("JAR=a.jar NPM_TOKEN='tok123", "BUILD_ARGS=JAR=a.jar NPM_TOKEN=***: cannot be split into words"),
])
def test_a_bad_build_args_error_names_the_setting_without_secret_values(tmp_path, raw, shown):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"BUILD_ARGS": raw}, tmp_path)
    assert str(caught.value).startswith(shown)
    assert "tok123" not in str(caught.value) and "tok456" not in str(caught.value)


def test_history_never_stores_a_secret(tmp_path):
    value = secret()
    logsetup.register_secret(value)
    history = History(LocalHost(), str(tmp_path / "app.history.jsonl"))
    history.append(Entry("t", "ci", "app", "deploy", "v2", "", "failed", 1.0, f"build printed {value}"))
    assert value not in (tmp_path / "app.history.jsonl").read_text()
    assert history.entries()[0].message == "build printed ***"


# -- children get no REGISTRY_PASSWORD --------------------------------------------------------------

def test_without_secrets_leaves_out_the_registry_password():
    assert without_secrets({"REGISTRY_PASSWORD": "x", "PATH": "/bin", "HOME": "/root"}) == \
        {"PATH": "/bin", "HOME": "/root"}


def test_nginx_commands_on_this_machine_get_no_registry_password(monkeypatch):
    monkeypatch.setenv("REGISTRY_PASSWORD", "regpass-for-nginx")
    result = LocalHost().run(["env"])
    assert result.code == 0 and "PATH=" in result.output
    assert "REGISTRY_PASSWORD" not in result.output


def test_git_gets_no_registry_password(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "git").write_text(f"#!/bin/sh\nenv > {tmp_path / 'git-env'}\necho abc1234\n")
    (fake_bin / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.setenv("REGISTRY_PASSWORD", "regpass-for-git")
    assert default_version(tmp_path) == "abc1234"
    seen = (tmp_path / "git-env").read_text()
    assert "PATH=" in seen and "REGISTRY_PASSWORD" not in seen
