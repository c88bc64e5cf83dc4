"""Verification after the switch: parsing nginx's answers, judging them, and the switch-back.

The window itself runs against small strict fakes at our own seams (engine, switch, answer
reader); health probes are kept out of these windows by HEALTH_INTERVAL (the first probe would be
2 s in), so nothing here touches the network.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.flows import verify
from pipeline.core.decide import Address
from pipeline.flows.deploy import Context
from pipeline.core.errors import (EngineFailed, Interrupted, LiveUnverified, NginxHostFailed, PipelineError, PreflightError,
                             SettingsError, SwitchedBackAfterBug)
from pipeline.adapters.nginx_host import LocalHost
from pipeline.adapters.reload_switch import ReloadSwitch
from pipeline.core.settings import Settings
from pipeline.signals import SignalGuard
from pipeline.core.switch import LIVE

from .fakes import FakeAnswers, FakeClock, FakeEngine, FakeHost, FakeSwitch, Strict

LINE = ('127.0.0.1 - - [01/Dec/2026:20:00:00 +0000] "GET /x?a=\\x22b HTTP/1.1" {status} 12 "-" '
        '"wrk \\x22quoted\\x22" upstream={upstream} upstream_status={status} request_time=0.001 '
        'upstream_response_time=0.001')


@pytest.mark.parametrize("upstream,status,expected", [
    ("172.20.0.3:8080", 200, ("172.20.0.3:8080", 200)),
    ("172.20.0.3:8080", 500, ("172.20.0.3:8080", 500)),
    ("172.20.0.3:8080", 502, ("172.20.0.3:8080", 502)),       # nginx's own: connection refused
    ("-", 503, (None, 503)),                                     # nginx answered by itself
    ("172.20.0.2:8080, 172.20.0.3:8080", 200, ("172.20.0.3:8080", 200)),   # a retry: the last one
    ("172.20.0.2:8080 : 172.20.0.3:8080", 504, ("172.20.0.3:8080", 504)),  # internal redirect
])
def test_access_log_lines_in_the_pipeline_format(upstream, status, expected):
    assert verify.parse_log_line(LINE.format(upstream=upstream, status=status)) == expected


@pytest.mark.parametrize("line", ["", "garbage", '127.0.0.1 - - [x] "GET / HTTP/1.1" 200 5 "-" "-"'])
def test_lines_in_another_format_are_not_counted(line):
    assert verify.parse_log_line(line) is None


def test_the_shipped_log_format_is_the_one_parsed():
    shipped = (Path(__file__).resolve().parents[2] / "nginx" / "conf.d" / "00-log-format.conf").read_text()
    assert '"$request" \'\n' in shipped and "'$status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" '" in shipped
    assert "'upstream=$upstream_addr upstream_status=$upstream_status " in shipped


def test_stats_lines():
    text = "172.20.0.2:8080 200 10\n172.20.0.3:8080 200 7\n172.20.0.3:8080 500 3\nnonsense\n"
    assert verify.parse_stats(text) == {"172.20.0.2:8080": {200: 10}, "172.20.0.3:8080": {200: 7, 500: 3}}
    assert verify.parse_stats("") == {}


@pytest.mark.parametrize("statuses,fails", [
    ({200: 19, 500: 0}, False),           # below VERIFY_MIN_REQUESTS: not judged
    ({500: 19}, False),
    ({200: 14, 500: 6}, True),            # 30% of 20
    ({200: 99, 502: 1}, False),           # exactly 1%: not above the limit
    ({200: 98, 502: 2}, True),            # nginx's own 502 counts
    ({200: 90, 404: 10}, False),          # 4xx is the client's business
    ({}, False),
])
def test_judging_the_answers(statuses, fails):
    assert verify.too_many_errors(verify.Tally(statuses), 0.01, 20) is fails


def test_tally_describes_rate_count_and_commonest_statuses():
    tally = verify.Tally({200: 70, 500: 30, 502: 2})
    assert tally.describe() == "31.4% 5xx of 102 requests (commonest: 200 x70, 500 x30, 502 x2)"


def test_access_log_reader_reads_only_what_was_added(tmp_path):
    path = tmp_path / "app.access.log"
    path.write_text(LINE.format(upstream="172.20.0.3:8080", status=500) + "\n")   # before the mark
    reader = verify.AccessLogReader(LocalHost(), str(path), (Address("172.20.0.3", 8080),))
    with path.open("a") as log:
        log.write(LINE.format(upstream="172.20.0.3:8080", status=200) + "\n")
        log.write(LINE.format(upstream="172.20.0.2:8080", status=500) + "\n")     # the old color
        log.write(LINE.format(upstream="172.20.0.3:8080", status=502)[:40])        # half written
    assert reader.read().statuses == {200: 1}
    with path.open("a") as log:
        log.write(LINE.format(upstream="172.20.0.3:8080", status=502)[40:] + "\n")
    assert reader.read().statuses == {200: 1, 502: 1}
    path.write_text("")                                                            # rotated
    assert reader.read().statuses == {200: 1, 502: 1}


def test_access_log_reader_needs_the_file(tmp_path):
    with pytest.raises(PreflightError, match="NGINX_ACCESS_LOG=.*no such file"):
        verify.AccessLogReader(LocalHost(), str(tmp_path / "missing.log"), (Address("172.20.0.3", 8080),))


@pytest.mark.parametrize("name,value,words", [
    ("VERIFY_SECONDS", "-1", "non-negative number"),
    ("VERIFY_MAX_ERROR_RATE", "1.5", "fraction from 0 to 1"),
    ("VERIFY_MAX_ERROR_RATE", "nan", "fraction from 0 to 1"),
    ("VERIFY_MAX_ERROR_RATE", "1%", "fraction from 0 to 1"),
    ("VERIFY_MIN_REQUESTS", "0", "at least 1"),
    ("NGINX_ACCESS_LOG", "app.log", "absolute file path"),
    ("KEEP_PREVIOUS_RUNNING", "maybe", "true or false"),
])
def test_bad_verification_settings_name_the_setting(tmp_path, name, value, words):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value}, tmp_path)
    assert str(caught.value).startswith(f"{name}={value}:") and words in str(caught.value)


def test_verification_defaults(tmp_path):
    s = Settings.from_env({}, tmp_path)
    assert (s.verify_seconds, s.verify_max_error_rate, s.verify_min_requests) == (30.0, 0.01, 20)
    assert (str(s.nginx_access_log), s.smoke_command, s.keep_previous_running) == \
        ("/var/log/nginx/app.access.log", "", False)
    assert Settings.from_env({"KEEP_PREVIOUS_RUNNING": "True"}, tmp_path).keep_previous_running is True


# -- the window, with strict fakes --------------------------------------------------------------------

class Calls(list):
    def expect(self, *names: str) -> None:
        assert [c[0] for c in self] == list(names), self


def running_both(engine: FakeEngine) -> FakeEngine:
    """Two running containers at their fixed IPs."""
    engine.boxes = {c: {"status": "running", "version": "v", "image": "img"} for c in ("blue", "green")}
    return engine


def window(tmp_path, reader, sleep=lambda seconds: None, **env):
    settings = Settings.from_env({"VERIFY_SECONDS": "0.2", "HEALTH_INTERVAL": "10", **env}, tmp_path)
    calls = Calls()
    engine = running_both(FakeEngine(settings, calls))
    # No probe falls in these windows (the first would be 2 s in): a strict prober proves it.
    ctx = Context(settings, engine, LocalHost(), FakeSwitch.configured(settings, calls), tmp_path, {}, Strict(), 0.0, SignalGuard(),
                  FakeClock(before_sleep=sleep))
    return ctx, calls, verify.Baseline("green", "blue", reader, engine.watch("green"))


def test_a_good_release_passes_and_nothing_is_switched(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 5}, {200: 40}))
    verdict = verify.verify(ctx, mark)
    assert verdict.tally.statuses == {200: 40}
    assert verdict.summary().startswith("verified for 0.2s: 0 5xx of 40 requests (0.0%)")
    calls.expect()


def test_too_many_5xx_switches_back_then_removes_the_new_container(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 10}, {200: 70, 500: 30}))
    with pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert str(caught.value) == ("switched back to blue: green answered 5xx to 30.0% of 100 requests "
                                 "(limit 1.0%; commonest: 200 x70, 500 x30)")
    assert caught.value.history_result == "switched back" and caught.value.exit_code == 1
    calls.expect("route_to", "stop", "remove")
    assert calls[0] == ("route_to", LIVE, (Address(ctx.settings.ip_of("blue"), 8080),))


def test_a_new_container_that_exits_is_switched_back_at_once(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx.engine.boxes["green"]["status"] = "exited"
    with pytest.raises(verify.SwitchedBack, match="green stopped \\(exited"):
        verify.verify(ctx, mark)
    calls.expect("route_to", "stop", "remove")


def test_a_signal_during_the_window_switches_back_and_keeps_its_exit_code(tmp_path):
    signals = [signal.SIGTERM]

    def sleep(seconds: float) -> None:
        if signals:   # once, as SignalGuard does: a second signal only logs "still cleaning up"
            raise Interrupted(signals.pop())

    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}), sleep=sleep)
    with pytest.raises(verify.SwitchedBackOnSignal) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 143 and caught.value.history_result == "switched back"
    assert "interrupted by SIGTERM during verification; switched back to blue" in str(caught.value)
    calls.expect("route_to", "stop", "remove")


def test_a_failed_switch_back_leaves_the_new_release_running_and_says_what_serves(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({500: 30}))

    def refuse(route, address):
        raise verify.DeployFailed("nginx -t exited with 1")

    ctx.switch.route_to = refuse
    with pytest.raises(LiveUnverified) as caught:
        verify.verify(ctx, mark)
    # Not exit 1 ("the working version still serves"): the unproven release has the traffic.
    assert (caught.value.exit_code, caught.value.history_result, caught.value.color) == (6, "live unverified", "green")
    assert str(caught.value) == (
        "green answered 5xx to 100.0% of 30 requests (limit 1.0%; commonest: 500 x30); switching back to blue "
        "failed: nginx -t exited with 1. app-green still has the traffic, unverified; app-blue is still running. "
        "To go back to blue, run `python -m pipeline rollback` once that is fixed")
    calls.expect()   # nothing stopped or removed


# -- anything that ends the window early switches back too (issue 15) --------------------------------

@pytest.fixture
def pipeline_log(caplog, monkeypatch):
    """caplog, seeing the pipeline logger even after a test that set it up as the CLI does
    (which stops it from propagating)."""
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)
    return caplog


ENGINE_GONE = EngineFailed("docker engine at unix:///var/run/docker.sock", "inspecting container app-green",
                           "no answer within 60s (NETWORK_TIMEOUT)")


def failing_engine(settings: Settings, calls: Calls, failure: BaseException, after: int = 1) -> FakeEngine:
    """The engine answers the baseline, then every call fails as `failure` says (from `after`
    calls of `container` on)."""
    engine = running_both(FakeEngine(settings, calls))
    engine.gone, engine.looks_before_gone = failure, after
    return engine


def with_engine(ctx, mark, engine):
    """The window's context and baseline on another engine (the context is frozen)."""
    return replace(ctx, engine=engine), replace(mark, watch=engine.watch(mark.color))


def test_the_engine_failing_mid_window_switches_back_and_fails_with_exit_1(tmp_path, pipeline_log):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}), VERIFY_SECONDS="5")
    ctx, mark = with_engine(ctx, mark, failing_engine(ctx.settings, calls, ENGINE_GONE, after=2))
    with pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 1 and caught.value.history_result == "switched back"
    assert str(caught.value) == (f"switched back to blue: verification could not go on: {ENGINE_GONE}; "
                                 f"traffic: 0.0% 5xx of 3 requests (commonest: 200 x3)")
    assert caught.value.__cause__ is ENGINE_GONE
    # Back on blue first; the new container cannot be removed through an engine that is gone: said.
    calls.expect("route_to", "stop")
    assert calls[0] == ("route_to", LIVE, (Address(ctx.settings.ip_of("blue"), 8080),))
    assert "could not remove app-green" in pipeline_log.text and "the next deploy replaces it" in pipeline_log.text


def test_a_bug_mid_window_switches_back_then_is_still_a_bug(tmp_path):
    bug = AttributeError("'NoneType' object has no attribute 'attrs'")
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx, mark = with_engine(ctx, mark, failing_engine(ctx.settings, calls, bug, after=0))
    ctx.engine.stop = lambda color: calls.append(("stop", color))
    ctx.engine.remove = lambda color: calls.append(("remove", color))
    with pytest.raises(SwitchedBackAfterBug) as caught:
        verify.verify(ctx, mark)
    assert not isinstance(caught.value, PipelineError), "a bug: exit 70, as any other"
    assert caught.value.history_result == "switched back" and caught.value.__cause__ is bug
    assert str(caught.value) == ("AttributeError: 'NoneType' object has no attribute 'attrs' during verification; "
                                 "switched back to blue")
    calls.expect("route_to", "stop", "remove")


def test_when_the_switch_back_after_an_engine_failure_fails_too_the_message_says_what_serves(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx, mark = with_engine(ctx, mark, failing_engine(ctx.settings, calls, ENGINE_GONE, after=0))

    def refuse(route, address):
        raise NginxHostFailed("nginx host root@n1:22 over SSH", "connecting", "Connection refused")

    ctx.switch.route_to = refuse
    with pytest.raises(LiveUnverified) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 6
    assert str(caught.value) == (
        f"verification could not go on: {ENGINE_GONE}; traffic: 0.0% 5xx of 0 requests (commonest: none); "
        "switching back to blue failed: nginx host root@n1:22 over SSH: connecting: Connection refused. "
        "app-green still has the traffic, unverified; app-blue is still running. To go back to blue, run "
        "`python -m pipeline rollback` once that is fixed")
    calls.expect()


def test_a_signal_held_through_the_switch_back_is_reported_as_a_switch_back_on_that_signal(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 3}))
    ctx, mark = with_engine(ctx, mark, failing_engine(ctx.settings, calls, ENGINE_GONE, after=0))

    def switch_back_while_signalled(route, address):
        calls.append(("route_to", route, ", ".join(map(str, address))))
        ctx.guard._handle(signal.SIGTERM, None)   # as the handler does inside a critical step: held

    ctx.switch.route_to = switch_back_while_signalled
    with pytest.raises(verify.SwitchedBackOnSignal) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 143 and caught.value.history_result == "switched back"
    assert str(caught.value).startswith("interrupted by SIGTERM during verification; switched back to blue: "
                                        "verification could not go on: docker engine at")
    calls.expect("route_to", "stop")


def test_verification_off_or_nothing_to_go_back_to(tmp_path):
    ctx, calls, _ = window(tmp_path, FakeAnswers({}), VERIFY_SECONDS="0")
    assert verify.baseline(ctx, "green", "blue") is None
    ctx, calls, _ = window(tmp_path, FakeAnswers({}))
    assert verify.baseline(ctx, "green", None) is None
    ctx.engine.boxes["blue"]["status"] = "exited"
    assert verify.baseline(ctx, "green", "blue") is None
    assert verify.verify(ctx, None) is None


# -- nginx's answers that cannot be read ------------------------------------------------------------

LOG = "/var/log/nginx/app.access.log"


def preflight_ctx(tmp_path, host, **env):
    settings = Settings.from_env({"NGINX_ACCESS_LOG": LOG, **env}, tmp_path)
    calls = Calls()
    # The real reload switch: it says how the answers are read (the access log on `host`).
    return Context(settings, FakeEngine(settings, calls), host, ReloadSwitch(host, settings.switch, settings.nginx, settings.network_timeout), tmp_path, {}, Strict(),
                   0.0, SignalGuard(), FakeClock())


@pytest.mark.parametrize("case,words", [
    ("missing", f"NGINX_ACCESS_LOG={LOG}: no such file on the nginx host (fake nginx host); "),
    ("directory", f"NGINX_ACCESS_LOG={LOG}: cannot read it on the nginx host (fake nginx host): "
                  "it is a directory, not a file; "),
    ("unreadable", f"NGINX_ACCESS_LOG={LOG}: cannot read it on the nginx host (fake nginx host): "
                   "Permission denied (it is read as the user running pipeline: on Debian, make that user a "
                   "member of `adm`); "),
])
def test_preflight_refuses_an_access_log_it_cannot_read(tmp_path, case, words):
    host = FakeHost()
    if case == "directory":
        host.directories.add(LOG)
    elif case != "missing":
        host.files[LOG] = "a line\n"
        host.unreadable.add(LOG)   # Debian's 0640 www-data:adm, read by a user outside adm
    with pytest.raises(PreflightError) as caught:
        verify.check(preflight_ctx(tmp_path, host))
    assert caught.value.exit_code == 3
    assert str(caught.value) == words + ("verification reads nginx's answers there (the `pipeline` log "
                                         "format), or set VERIFY_SECONDS=0")


def test_preflight_names_the_ssh_user_that_cannot_read_the_log(tmp_path):
    host = FakeHost()
    host.files[LOG] = ""
    host.unreadable.add(LOG)
    (tmp_path / "key").write_text("")
    (tmp_path / "known_hosts").write_text("")
    ctx = preflight_ctx(tmp_path, host, NGINX_HOST="nginx1", NGINX_SSH_USER="deploy",
                        NGINX_SSH_KEY=str(tmp_path / "key"), NGINX_SSH_KNOWN_HOSTS=str(tmp_path / "known_hosts"))
    with pytest.raises(PreflightError, match="it is read as NGINX_SSH_USER=deploy: on Debian"):
        verify.check(ctx)


def test_preflight_reads_a_readable_log_and_skips_a_window_that_is_off(tmp_path):
    host = FakeHost()
    host.files[LOG] = ""
    verify.check(preflight_ctx(tmp_path, host))               # an empty log is fine
    host.unreadable.add(LOG)
    verify.check(preflight_ctx(tmp_path, host, VERIFY_SECONDS="0"))


UNREADABLE = NginxHostFailed("nginx host deploy@nginx1:22 over SFTP", f"reading {LOG}", "Permission denied")


def test_answers_that_cannot_be_read_switch_back_never_health_only(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("pipeline"), "propagate", True)   # cli.main may have run before
    reader = FakeAnswers({200: 5}, UNREADABLE)
    ctx, calls, mark = window(tmp_path, reader)
    with caplog.at_level("WARNING", logger="pipeline"), pytest.raises(verify.SwitchedBack) as caught:
        verify.verify(ctx, mark)
    assert str(caught.value) == (
        f"switched back to blue: cannot read nginx's answers (nginx host deploy@nginx1:22 over SFTP: reading "
        f"{LOG}: Permission denied; 3 reads in a row); traffic until then: 0.0% 5xx of 5 requests "
        f"(commonest: 200 x5)")
    assert caught.value.exit_code == 1
    assert reader.reads == 1 + verify.READ_FAILS
    assert "switching back unless it reads again within 2 polls" in caplog.text
    calls.expect("route_to", "stop", "remove")


def test_a_read_that_fails_once_is_read_again(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 5}, UNREADABLE, UNREADABLE, {200: 40}))
    assert verify.verify(ctx, mark).tally.statuses == {200: 40}
    calls.expect()


def test_the_window_never_ends_on_a_failed_read(tmp_path):
    # The read at the end fails: the answers it missed are read before anything is judged.
    slept = []
    ctx, calls, mark = window(tmp_path, FakeAnswers(UNREADABLE, {200: 10, 500: 30}), sleep=slept.append,
                              VERIFY_SECONDS="0")
    with pytest.raises(verify.SwitchedBack, match="green answered 5xx to 75.0% of 40 requests"):
        verify.verify(ctx, mark)
    assert slept[0] == verify.TRAFFIC_POLL   # then the switch-back's settle
    calls.expect("route_to", "stop", "remove")


def test_a_signal_while_reading_the_answers_is_not_taken_for_a_failed_read(tmp_path):
    ctx, calls, mark = window(tmp_path, FakeAnswers({200: 5}, Interrupted(signal.SIGINT)))
    with pytest.raises(verify.SwitchedBackOnSignal) as caught:
        verify.verify(ctx, mark)
    assert caught.value.exit_code == 130
    calls.expect("route_to", "stop", "remove")
