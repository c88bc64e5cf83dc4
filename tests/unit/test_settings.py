from pathlib import Path

import pytest

from pipeline.core.errors import SettingsError
from pipeline.core.settings import SETTING_NAMES, Secret, Settings


def read(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(env, tmp_path)


def test_defaults_match_the_contract(tmp_path):
    s = read(tmp_path)
    assert (s.app_name, s.deploy_network, str(s.deploy_subnet), str(s.deploy_gateway)) == \
        ("app", "deploy", "172.20.0.0/16", "172.20.0.1")
    assert (s.ip_of("blue"), s.ip_of("green"), s.app_port) == ("172.20.0.2", "172.20.0.3", 8080)
    assert s.build_command == ("./gradlew", "bootJar")
    assert (s.health_path, s.health_interval, s.health_timeout) == ("/actuator/health", 10.0, 300.0)
    assert str(s.nginx_include) == "/etc/nginx/conf.d/service-url.inc"
    assert s.nginx_test_command == ("nginx", "-t")
    assert s.nginx_reload_command == ("nginx", "-s", "reload")
    assert (s.drain_seconds, s.stop_timeout, s.keep_releases) == (10.0, 30.0, 5)
    assert s.container_name("green") == "app-green"


def test_dotenv_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("APP_NAME=fromfile\nAPP_PORT=9000\n")
    s = read(tmp_path, APP_PORT="9100")
    assert (s.app_name, s.app_port) == ("fromfile", 9100)


def test_dotenv_does_not_touch_os_environ(tmp_path, monkeypatch):
    import os

    monkeypatch.delenv("APP_NAME", raising=False)
    (tmp_path / ".env").write_text("APP_NAME=fromfile\n")
    read(tmp_path)
    assert "APP_NAME" not in os.environ


@pytest.mark.parametrize("name,value,words", [
    ("APP_PORT", "0", "1 to 65535"),
    ("APP_PORT", "65536", "1 to 65535"),
    ("APP_PORT", "http", "1 to 65535"),
    ("NGINX_SSH_PORT", "-1", "1 to 65535"),
    ("BLUE_IP", "172.20.0.300", "not an IPv4 address"),
    ("BLUE_IP", "10.0.0.2", "not inside DEPLOY_SUBNET"),
    ("GREEN_IP", "172.20.0.2", "same address as BLUE_IP"),
    ("GREEN_IP", "172.20.0.1", "DEPLOY_GATEWAY"),
    ("BLUE_IP", "172.20.255.255", "not a host address"),
    ("DEPLOY_GATEWAY", "172.21.0.1", "not inside DEPLOY_SUBNET"),
    ("DEPLOY_SUBNET", "172.20.0.0/33", "not an IPv4 subnet"),
    ("DEPLOY_SUBNET", "172.20.0.1/16", "not an IPv4 subnet"),
    ("DEPLOY_SUBNET", "8.8.8.0/24", "private subnet"),
    ("HEALTH_INTERVAL", "-1", "positive number"),
    ("HEALTH_INTERVAL", "0", "positive number"),
    ("HEALTH_TIMEOUT", "soon", "non-negative number"),
    ("HEALTH_TIMEOUT", "nan", "non-negative number"),
    ("DRAIN_SECONDS", "-0.5", "non-negative number"),
    ("STOP_TIMEOUT", "inf", "non-negative number"),
    ("NETWORK_TIMEOUT", "0", "positive number"),
    ("NETWORK_TIMEOUT", "1m", "positive number"),
    ("NGINX_INCLUDE", "conf.d/service-url.inc", "absolute file path"),
    ("NGINX_INCLUDE", "/etc/nginx/../x.inc", "absolute file path"),
    ("NGINX_PREVIEW_INCLUDE", "preview.inc", "absolute file path"),
    ("NGINX_SSH_KEY", "/nonexistent/id_ed25519", "no such file"),
    ("CONTAINER_ENV_FILE", "missing.env", "no such file"),
    ("CONTAINER_VOLUMES", "/data", "SOURCE:/container/path"),
    ("CONTAINER_VOLUMES", "/data:/app:rx", "ro or rw"),
    ("APP_NAME", "My App", "lower-case"),
    ("APP_NAME", "", "must not be empty"),
    ("APP_VERSION", "v1 beta", "docker tag"),
    ("SWITCH_MODE", "hot", "one of reload, live"),
    ("NGINX_INCLUDE_FORM", "map", "one of set, upstream"),
    ("KEEP_RELEASES", "0", "at least 1"),
    ("HEALTH_PATH", "actuator/health", "starting with /"),
    ("NGINX_TEST_COMMAND", "", "must not be empty"),
    ("NGINX_RELOAD_COMMAND", "nginx -s 'reload", "cannot be split"),
    ("BUILD_ARGS", "JAR", "KEY=VALUE"),
    ("NGINX_ADMIN_URL", "https://127.0.0.1:8091", "http://127.0.0.1:8091"),
    ("NGINX_ADMIN_TOKEN_FILE", "pipeline-admin.token", "absolute file path"),
    ("NGINX_ADMIN_TOKEN_FILE", "", "absolute file path"),
    ("REGISTRY", "http://127.0.0.1:5000", "registry address"),
])
def test_bad_values_name_the_setting_and_the_value(tmp_path, name, value, words):
    with pytest.raises(SettingsError) as caught:
        read(tmp_path, **{name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}=") or message.startswith(f"{name}:")
    assert value in message
    assert words in message
    assert "\n" not in message


def test_remote_host_needs_key_and_known_hosts(tmp_path):
    with pytest.raises(SettingsError, match="NGINX_SSH_KEY"):
        read(tmp_path, NGINX_HOST="nginx.internal")
    key = tmp_path / "id"
    key.write_text("k")
    with pytest.raises(SettingsError, match="NGINX_SSH_KNOWN_HOSTS=.*no such file"):
        read(tmp_path, NGINX_HOST="nginx.internal", NGINX_SSH_KEY=str(key),
             NGINX_SSH_KNOWN_HOSTS=str(tmp_path / "nope"))


def test_missing_env_file_named_on_the_command_line_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="--env-file"):
        Settings.from_env({}, tmp_path, tmp_path / "missing.env")


def test_dockerfile_is_checked_for_builds(tmp_path):
    s = read(tmp_path, DOCKERFILE="docker/Nope")
    with pytest.raises(SettingsError, match="DOCKERFILE=docker/Nope: no such file"):
        s.check_build_inputs(tmp_path)


def test_registry_password_never_shows(tmp_path):
    s = read(tmp_path, REGISTRY="127.0.0.1:5000", REGISTRY_USERNAME="ci", REGISTRY_PASSWORD="hunter2")
    assert s.registry_password.reveal() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.public())
    assert str(Secret("x")) == "Secret('***')"


def test_registry_user_without_password_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="REGISTRY_PASSWORD"):
        read(tmp_path, REGISTRY="127.0.0.1:5000", REGISTRY_USERNAME="ci")


def test_volumes_take_the_color(tmp_path):
    s = read(tmp_path, CONTAINER_VOLUMES="/srv/app/{color}:/app, logs:/logs:ro")
    assert s.volumes_for("green") == ("/srv/app/green:/app", "logs:/logs:ro")


def test_image_reference_includes_the_registry(tmp_path):
    assert read(tmp_path, APP_NAME="shop").image_ref("abc123") == "shop:abc123"
    assert read(tmp_path, APP_NAME="shop", REGISTRY="127.0.0.1:5000").image_ref("v2") == "127.0.0.1:5000/shop:v2"


def test_commands_are_split_into_argv_not_run_by_a_shell(tmp_path):
    s = read(tmp_path, NGINX_RELOAD_COMMAND="sudo systemctl reload 'nginx service'")
    assert s.nginx_reload_command == ("sudo", "systemctl", "reload", "nginx service")


def test_every_setting_name_is_read():
    assert len(SETTING_NAMES) == len(set(SETTING_NAMES)) >= 30


def test_home_is_expanded_in_local_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    for name in ("id", "known_hosts"):
        (tmp_path / ".ssh" / name).write_text("k")
    s = read(tmp_path, NGINX_HOST="nginx.internal", NGINX_SSH_KEY="~/.ssh/id",
             NGINX_SSH_KNOWN_HOSTS="~/.ssh/known_hosts", DOCKERFILE="~/Dockerfile")
    assert (s.nginx_ssh_key, s.nginx_ssh_known_hosts) == (tmp_path / ".ssh/id", tmp_path / ".ssh/known_hosts")
    assert s.dockerfile == tmp_path / "Dockerfile"


# -- the target: one engine or a swarm ------------------------------------------------------------

def test_target_defaults_to_the_single_engine(tmp_path):
    s = read(tmp_path)
    assert (s.target, s.replicas, s.port_of("blue"), s.port_of("green")) == ("docker", 2, 8081, 8082)


def test_swarm_settings_are_read(tmp_path):
    s = read(tmp_path, TARGET="swarm", REGISTRY="10.99.0.1:5001", REPLICAS="3", BLUE_PORT="9001",
             GREEN_PORT="9002")
    assert (s.target, s.replicas, s.port_of("blue"), s.port_of("green")) == ("swarm", 3, 9001, 9002)


@pytest.mark.parametrize("env, message", [
    ({"TARGET": "kubernetes"}, "TARGET=kubernetes: must be one of docker, swarm"),
    ({"TARGET": "swarm"}, "REGISTRY: required with TARGET=swarm"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "REPLICAS": "0"}, "REPLICAS=0: must be a whole number"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "BLUE_PORT": "70000"}, "BLUE_PORT=70000: must be a port"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "GREEN_PORT": "8081"}, "GREEN_PORT=8081: same port as BLUE_PORT"),
    # Settings of the other target are refused rather than silently ignored.
    ({"REPLICAS": "3"}, "REPLICAS=3: only read with TARGET=swarm, not TARGET=docker"),
    ({"TARGET": "docker", "BLUE_PORT": "8081"}, "BLUE_PORT=8081: only read with TARGET=swarm"),
    ({"GREEN_PORT": "9000"}, "GREEN_PORT=9000: only read with TARGET=swarm"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "BLUE_IP": "172.20.0.2"},
     "BLUE_IP=172.20.0.2: only read with TARGET=docker, not TARGET=swarm"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "GREEN_IP": "172.20.0.3"}, "GREEN_IP=172.20.0.3: only read"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "DEPLOY_NETWORK": "deploy"}, "DEPLOY_NETWORK=deploy: only read"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "DEPLOY_SUBNET": "172.20.0.0/16"}, "DEPLOY_SUBNET=172.20.0.0/16: only"),
    ({"TARGET": "swarm", "REGISTRY": "r:5000", "DEPLOY_GATEWAY": "172.20.0.1"}, "DEPLOY_GATEWAY=172.20.0.1: only"),
])
def test_target_settings_are_checked(tmp_path, env, message):
    with pytest.raises(SettingsError) as caught:
        read(tmp_path, **env)
    assert str(caught.value).startswith(message)
    assert caught.value.exit_code == 2


def test_a_setting_of_the_other_target_in_the_env_file_is_refused_too(tmp_path):
    (tmp_path / ".env").write_text("TARGET=swarm\nREGISTRY=r:5000\nBLUE_IP=172.20.0.2\n")
    with pytest.raises(SettingsError, match="BLUE_IP=172.20.0.2: only read with TARGET=docker"):
        read(tmp_path)


def test_the_swarm_target_lists_tasks_in_the_upstream_form_and_switches_by_reload_or_live(tmp_path):
    s = read(tmp_path, TARGET="swarm", REGISTRY="r:5000")
    assert (s.nginx_include_form, s.switch_mode) == ("upstream", "reload")
    with pytest.raises(SettingsError, match="NGINX_INCLUDE_FORM=set: TARGET=swarm needs the upstream form"):
        read(tmp_path, TARGET="swarm", REGISTRY="r:5000", NGINX_INCLUDE_FORM="set")
    # Live mode takes a list of addresses per route, at most 32: one per task.
    live = read(tmp_path, TARGET="swarm", REGISTRY="r:5000", SWITCH_MODE="live", REPLICAS="32")
    assert (live.switch_mode, live.replicas, live.nginx_include_form) == ("live", 32, "upstream")
    with pytest.raises(SettingsError, match="REPLICAS=33: SWITCH_MODE=live routes to at most 32 tasks"):
        read(tmp_path, TARGET="swarm", REGISTRY="r:5000", SWITCH_MODE="live", REPLICAS="33")
    assert read(tmp_path, TARGET="swarm", REGISTRY="r:5000", REPLICAS="33").replicas == 33   # reload: no cap


def test_the_swarm_target_verifies_as_one_engine_does(tmp_path):
    s = read(tmp_path, TARGET="swarm", REGISTRY="r:5000")
    assert (s.verify_seconds, s.verify_max_error_rate, s.verify_min_requests) == (30.0, 0.01, 20)
    assert read(tmp_path, TARGET="swarm", REGISTRY="r:5000", VERIFY_SECONDS="5",
                KEEP_PREVIOUS_RUNNING="true").verify_seconds == 5


# -- numbers: ASCII digits only, every duration bounded (issue 15) --------------------------------

@pytest.mark.parametrize("name,value", [
    # int() and str.isdigit() take far more than ASCII digits.
    ("APP_PORT", "²"),                   # isdigit, but int() raises: was exit 70
    ("APP_PORT", "٨٠٨٠"),                # Arabic-Indic digits: was taken as 8080
    ("APP_PORT", "８０８０"),             # full-width digits
    ("APP_PORT", "+8080"),
    ("APP_PORT", "8_080"),
    ("NGINX_SSH_PORT", "²²"),
    ("KEEP_RELEASES", "٥"),
    pytest.param("KEEP_RELEASES", "9" * 5000, id="KEEP_RELEASES-5000-digits"),   # int() refuses: was exit 70
    ("KEEP_RELEASES", "1001"),
    ("VERIFY_MIN_REQUESTS", "1_000"),
    ("VERIFY_MIN_REQUESTS", "1000001"),
    # float() takes Unicode digits, exponents, underscores, nan and inf.
    ("HEALTH_TIMEOUT", "١.٥"),
    ("HEALTH_TIMEOUT", "1e3"),
    ("HEALTH_TIMEOUT", "1_000"),
    ("HEALTH_TIMEOUT", "infinity"),
    ("HEALTH_TIMEOUT", "-0"),
    ("HEALTH_TIMEOUT", "0x10"),
    ("DRAIN_SECONDS", "1e10"),           # crashed after the switch (OverflowError in the drain's wait)
    ("DRAIN_SECONDS", "3600.5"),
    ("STOP_TIMEOUT", "NaN"),
    ("STOP_TIMEOUT", "86400"),
    ("VERIFY_SECONDS", "3601"),
    ("HEALTH_INTERVAL", "601"),
    ("NETWORK_TIMEOUT", "1e10"),         # crashed on connect (OverflowError in settimeout)
    ("NETWORK_TIMEOUT", "601"),
    ("VERIFY_MAX_ERROR_RATE", "1e-2"),
    ("VERIFY_MAX_ERROR_RATE", "٠.٥"),
    ("VERIFY_MAX_ERROR_RATE", "nan"),
])
def test_numbers_are_plain_ascii_and_durations_are_bounded(tmp_path, name, value):
    with pytest.raises(SettingsError) as caught:
        read(tmp_path, **{name: value})
    assert str(caught.value) == f"{name}={value}: {caught.value.problem}"
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("name,value,expected", [
    ("APP_PORT", "8080", 8080),
    ("APP_PORT", "08080", 8080),
    ("NGINX_SSH_PORT", "65535", 65535),
    ("KEEP_RELEASES", "1000", 1000),
    ("HEALTH_TIMEOUT", "0", 0.0),
    ("HEALTH_TIMEOUT", "3600", 3600.0),
    ("HEALTH_TIMEOUT", "2.5", 2.5),
    ("HEALTH_TIMEOUT", ".5", 0.5),
    ("HEALTH_TIMEOUT", "5.", 5.0),
    ("DRAIN_SECONDS", "0.0", 0.0),
    ("STOP_TIMEOUT", "3600", 3600.0),
    ("VERIFY_SECONDS", "3600", 3600.0),
    ("HEALTH_INTERVAL", "600", 600.0),
    ("NETWORK_TIMEOUT", "600", 600.0),
    ("NETWORK_TIMEOUT", "0.5", 0.5),
    ("VERIFY_MAX_ERROR_RATE", "1", 1.0),
    ("VERIFY_MAX_ERROR_RATE", "0.001", 0.001),
])
def test_plain_numbers_up_to_the_bounds_are_taken(tmp_path, name, value, expected):
    from pipeline.core.settings import SETTING_FIELDS

    assert getattr(read(tmp_path, **{name: value}), SETTING_FIELDS[name]) == expected


def test_the_bounds_are_said_in_the_message(tmp_path):
    with pytest.raises(SettingsError, match=r"^DRAIN_SECONDS=1e10: must be a non-negative number of seconds "
                                            r"in decimal digits \(e.g. 2.5\), at most 3600$"):
        read(tmp_path, DRAIN_SECONDS="1e10")
    with pytest.raises(SettingsError, match=r"^NETWORK_TIMEOUT=0: must be a positive number of seconds .*at most 600$"):
        read(tmp_path, NETWORK_TIMEOUT="0")


def test_every_duration_setting_has_an_upper_bound(tmp_path):
    """A new duration setting gets the default bound unless it names its own: none is unbounded."""
    from pipeline.core.settings import SETTING_FIELDS, Settings as S

    durations = [name for name, attr in SETTING_FIELDS.items()
                 if isinstance(getattr(S(), attr), float) and name != "VERIFY_MAX_ERROR_RATE"]
    assert "DRAIN_SECONDS" in durations and "NETWORK_TIMEOUT" in durations
    for name in durations:
        with pytest.raises(SettingsError, match=f"^{name}=100000: .*at most"):
            read(tmp_path, **{name: "100000"})


# -- credentials never in a URL setting, never echoed ---------------------------------------------

@pytest.mark.parametrize("value,shown", [
    ("http://admin:hunter2pass@127.0.0.1:8091", "http://***@127.0.0.1:8091"),
    ("http://admin@127.0.0.1:8091", "http://***@127.0.0.1:8091"),
    ("http://tok3n-value@127.0.0.1:8091", "http://***@127.0.0.1:8091"),
    ("http://admin:pa/ss#w@rd@127.0.0.1:8091", "http://***@127.0.0.1:8091"),   # '/' and '#' in the password
    ("https://admin:hunter2pass@127.0.0.1:8091", "https://***@127.0.0.1:8091"),
    ("admin:hunter2pass@127.0.0.1:8091", "***@127.0.0.1:8091"),
])
def test_credentials_in_the_admin_url_are_refused_without_echoing_them(tmp_path, value, shown):
    with pytest.raises(SettingsError) as caught:
        read(tmp_path, NGINX_ADMIN_URL=value)
    message = str(caught.value)
    assert message == (f"NGINX_ADMIN_URL={shown}: must not hold credentials (user:password@): the admin "
                       "token is read from NGINX_ADMIN_TOKEN_FILE on the nginx host")
    for word in ("hunter2pass", "pa/ss", "tok3n", "admin:"):
        assert word not in message
    assert caught.value.exit_code == 2


def test_a_password_written_into_the_registry_address_is_not_echoed(tmp_path):
    with pytest.raises(SettingsError) as caught:
        read(tmp_path, REGISTRY="ci:hunter2pass@registry.internal:5000")
    assert str(caught.value) == ("REGISTRY=***@registry.internal:5000: not a registry address like host:5000 "
                                 "(the login goes in REGISTRY_USERNAME and REGISTRY_PASSWORD)")


# -- through the CLI: exit 2 with one line, never 70 ----------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("APP_PORT", "²"),
    ("APP_PORT", "٨٠٨٠"),
    pytest.param("KEEP_RELEASES", "9" * 5000, id="KEEP_RELEASES-5000-digits"),
    ("HEALTH_TIMEOUT", "١.٥"),
    ("DRAIN_SECONDS", "1e10"),
    ("NETWORK_TIMEOUT", "1e10"),
    ("NGINX_ADMIN_URL", "http://admin:hunter2pass@127.0.0.1:8091"),
])
def test_the_cli_exits_2_with_one_line_naming_the_setting(tmp_path, capsys, name, value):
    import io

    from pipeline import cli

    stdout = io.StringIO()
    # `lock status` reads the settings first; with a bad one nothing else is touched.
    code = cli.main(["lock", "status"], {name: value}, tmp_path, stdout)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pipeline: error: {name}="), err
    assert "hunter2pass" not in err and stdout.getvalue() == ""


def test_the_readme_states_every_bound():
    import re

    from pipeline.core.settings import SETTING_MAXIMUMS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| [^|]*? \| (.*) \|$", readme, re.M))
    assert {"DRAIN_SECONDS", "NETWORK_TIMEOUT", "KEEP_RELEASES"} <= set(SETTING_MAXIMUMS)
    missing = [f"{name}: at most {limit:.15g}" for name, limit in SETTING_MAXIMUMS.items()
               if f"at most {limit:.15g}" not in rows[name]]
    assert missing == []


@pytest.mark.parametrize("value", ["١", "inf", "nan", "1e10", "-1", "3601"])
def test_lock_wait_is_read_as_the_duration_settings_are(tmp_path, capsys, value):
    import io

    from pipeline import cli

    code = cli.main(["deploy", "--lock-wait", value], {}, tmp_path, io.StringIO())
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--lock-wait={value}: must be a non-negative number of seconds" in err, err


def remote(tmp_path: Path, **env: str) -> Settings:
    key, known = tmp_path / "id", tmp_path / "known_hosts"
    key.write_text("k")
    known.write_text("")
    return read(tmp_path, NGINX_SSH_KEY=str(key), NGINX_SSH_KNOWN_HOSTS=str(known), **env)


def test_nginx_hosts_are_one_section_each_with_the_shared_user_and_port_as_defaults(tmp_path):
    settings = remote(tmp_path, NGINX_HOSTS="edge1, deploy@edge2:2200,[fd00::7]:22", NGINX_SSH_USER="ops")
    each = settings.nginx.each()
    assert [(n.nginx_ssh_user, n.nginx_host, n.nginx_ssh_port) for n in each] == \
        [("ops", "edge1", 22), ("deploy", "edge2", 2200), ("ops", "fd00::7", 22)]
    assert all(n.remote and not n.nginx_hosts and n.nginx_ssh_key == settings.nginx_ssh_key for n in each)
    assert settings.public()["nginx_hosts"] == "edge1,deploy@edge2:2200,[fd00::7]:22"


def test_without_nginx_hosts_the_one_host_is_the_only_section(tmp_path):
    settings = remote(tmp_path, NGINX_HOST="edge1")
    assert settings.nginx.each() == (settings.nginx,)
    assert read(tmp_path).nginx.each() == (read(tmp_path).nginx,)


@pytest.mark.parametrize("value, words", [
    ("edge1,edge1", "'edge1' is listed twice"),
    ("edge1,root@edge1:22", "root@edge1:22 and edge1 are the same host"),
    ("edge1,,edge2", "'' is not [user@]host[:port]"),
    ("edge 1", "'edge 1' is not [user@]host[:port]"),
    ("edge1:0", "'0' is not a port number"),
    ("edge1:ssh", "'ssh' is not a port number"),
    ("-x@edge1", "'-x' is not a user name"),
    ("fd00::7", "is not [user@]host[:port]"),
])
def test_bad_nginx_hosts_name_the_setting_the_value_and_the_entry(tmp_path, value, words):
    with pytest.raises(SettingsError) as caught:
        remote(tmp_path, NGINX_HOSTS=value)
    assert str(caught.value).startswith(f"NGINX_HOSTS={value}") and words in str(caught.value)


def test_nginx_hosts_replace_nginx_host_and_need_the_key(tmp_path):
    with pytest.raises(SettingsError, match="NGINX_HOSTS=b: replaces NGINX_HOST .set to a.: set one of them"):
        remote(tmp_path, NGINX_HOST="a", NGINX_HOSTS="b")
    with pytest.raises(SettingsError, match="NGINX_SSH_KEY"):
        read(tmp_path, NGINX_HOSTS="a,b")
