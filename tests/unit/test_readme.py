"""The README stays true: its settings table and exit codes match the code."""
import re
from pathlib import Path

from pipeline import errors
from pipeline.settings import SETTING_NAMES, Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_settings_table_lists_exactly_the_settings_read():
    documented = re.findall(r"^\| `([A-Z_]+)` \|", README, re.M)
    assert sorted(documented) == sorted(SETTING_NAMES)


def test_documented_defaults_match(tmp_path):
    defaults = Settings.from_env({}, tmp_path).public()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", README, re.M))
    attr = {"APP_NAME": "app_name", "DEPLOY_SUBNET": "deploy_subnet", "BLUE_IP": "blue_ip",
            "GREEN_IP": "green_ip", "APP_PORT": "app_port", "HEALTH_PATH": "health_path",
            "NGINX_INCLUDE": "nginx_include", "SWITCH_MODE": "switch_mode", "KEEP_RELEASES": "keep_releases",
            "BUILD_COMMAND": "build_command", "NGINX_TEST_COMMAND": "nginx_test_command",
            "NGINX_RELOAD_COMMAND": "nginx_reload_command", "NGINX_ADMIN_URL": "nginx_admin_url"}
    for name, field in attr.items():
        assert rows[name] == defaults[field], name
    for name in ("HEALTH_INTERVAL", "HEALTH_TIMEOUT", "DRAIN_SECONDS", "STOP_TIMEOUT"):
        assert float(rows[name]) == float(defaults[name.lower()]), name


def test_exit_codes_table_matches():
    table = set(re.findall(r"^\| (\d+) \| ", README, re.M))
    for code in (errors.EXIT_OK, errors.EXIT_DEPLOY_FAILED, errors.EXIT_BAD_INPUT, errors.EXIT_PREFLIGHT,
                 errors.EXIT_LOCKED, errors.EXIT_NOTHING_TO_DO, errors.EXIT_BUG):
        assert str(code) in table
    assert "| 130 / 143 |" in README
