"""`python -m pipeline COMMAND`: parse, read settings, run a flow, map errors to exit codes.

`main(argv, environ)` is the only place where an error becomes an exit code and a message. The
flows (preflight, lock and history included) are in deploy.py; the parts are put together in
compose.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, NoReturn, Optional, Sequence, TextIO

from pipeline.core import errors

from pipeline import log as logsetup
from pipeline.core.errors import PipelineError, UsageError
from pipeline.core.runlog import RunLog, report_document
from pipeline.flows import hooks, report
from pipeline.adapters.nginx_host import Connecting
from pipeline.core.settings import Settings

log = logging.getLogger("pipeline")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `python -m pipeline --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pipeline",
                     description="Zero-downtime blue-green deploys of a Docker service behind nginx.")
    parser.add_argument("--env-file", type=Path, help="settings file read before the environment (default: ./.env)")
    parser.add_argument("--verbose", action="store_true", help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def locking(p: argparse.ArgumentParser) -> None:
        p.add_argument("--lock-wait", type=_seconds, default=0.0, metavar="SECONDS",
                       help="wait this long for another deploy's lock instead of failing at once")

    def reporting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--report", type=Path, metavar="FILE",
                       help="write what the run did (result, exit code, phases) as JSON to FILE, however it ends")

    p = commands.add_parser("deploy", help="build, start the idle color, health-check, switch, stop the old one")
    p.add_argument("--no-promote", action="store_true",
                   help="stop after health (and the preview route): live traffic is left alone")
    locking(p)
    reporting(p)
    p = commands.add_parser("promote", help="switch live traffic to the staged release")
    locking(p)
    reporting(p)
    p = commands.add_parser("rollback", help="make the previous release (or --to VERSION) live again")
    p.add_argument("--to", metavar="VERSION", help="any release still kept (`history` marks them)")
    locking(p)
    reporting(p)
    p = commands.add_parser("release-phase", help="run RELEASE_COMMAND again, by hand, for the live release "
                                                  "(or --version); nothing is started or switched")
    p.add_argument("--version", metavar="VERSION", help="a release on record (live, staged or previous)")
    locking(p)
    p = commands.add_parser("status", help="live color, both containers, where nginx points")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("history", help="every deploy, promote and rollback; marks what is live and "
                                            "what `rollback --to` can go to")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("maintenance", help="on: nginx answers 503 and a maintenance page on the public port; "
                                                "off: the live release serves again")
    p.add_argument("state", choices=["on", "off"])
    p.add_argument("--message", metavar="TEXT", help="the page's text (default: MAINTENANCE_PAGE, or a stock one)")
    locking(p)
    p = commands.add_parser("lock", help="show or release the deploy lock")
    p.add_argument("lock_command", choices=["status", "release"])
    return parser


def _seconds(text: str) -> float:
    """--lock-wait: read as the duration settings are (ASCII digits, at most MAX_DURATION)."""
    from pipeline.core.errors import SettingsError
    from pipeline.core.settings import MAX_DURATION, read_seconds

    try:
        return read_seconds("--lock-wait", text)
    except SettingsError:
        raise argparse.ArgumentTypeError(f"--lock-wait={text}: must be a non-negative number of seconds "
                                         f"in decimal digits, at most {MAX_DURATION:.15g}") from None


def main(argv: Sequence[str], environ: Mapping[str, str], cwd: Optional[Path] = None,
         stdout: Optional[TextIO] = None) -> int:
    out = logsetup.MaskedStream(stdout or sys.stdout)
    cwd = cwd or Path.cwd()
    verbose = "--verbose" in argv
    logsetup.setup(verbose)
    started = time.monotonic()
    runlog = RunLog()
    reporting = _Reporting(argv, cwd, runlog, started)
    try:
        args = build_parser().parse_args(list(argv))
        reporting.parsed(args)
        settings = Settings.from_env(environ, cwd, args.env_file)
        logsetup.register_secrets(settings.secret_values())
        if args.command == "deploy":
            runlog.version = settings.app_version
            settings.check_build_inputs(cwd)
        if args.command == "release-phase" and not settings.release_command:
            raise errors.SettingsError("RELEASE_COMMAND", "", "is empty: there is no release phase to run")
        if args.command == "maintenance" and args.message is not None:
            from pipeline.core.maintenance import check_message
            if args.state == "off":
                raise UsageError("--message goes with `maintenance on` only")
            check_message(args.message)
        if runlog.action:
            hooks.check(settings.hooks_dir, cwd, runlog.action)
        code = _run(args, settings, environ, cwd, out, started, runlog)
        reporting.write(code, "ok", None)
        return code
    except (PipelineError, errors.Interrupted) as exc:   # Interrupted: SIGINT/SIGTERM, after cleaning up
        print(logsetup.mask(f"pipeline: error: {exc}"), file=sys.stderr)
        for line in exc.detail():
            print(logsetup.mask(f"    {line}"), file=sys.stderr)
        reporting.write(exc.exit_code, report.result_of(exc), str(exc))
        return exc.exit_code
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # a bug: say so plainly, traceback only when asked
        print(logsetup.mask(f"pipeline: internal error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        if verbose:
            print(logsetup.mask(traceback.format_exc()), file=sys.stderr, end="")
        else:
            print("    (run with --verbose for the traceback)", file=sys.stderr)
        reporting.write(errors.EXIT_BUG, report.result_of(exc), f"internal error: {type(exc).__name__}: {exc}")
        return errors.EXIT_BUG


class _Reporting:
    """`--report FILE` for deploy, promote and rollback: written however the run ends. Until the
    arguments are parsed, the file and the action are what the words say (report.scan), so bad
    input gets a report too when they can be told."""

    def __init__(self, argv: Sequence[str], cwd: Path, runlog: RunLog, started: float) -> None:
        self.cwd, self.runlog, self.started = cwd, runlog, started
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        action, path = report.scan(argv)
        self.path = Path(path) if action and path else None
        runlog.action = action or ""

    def parsed(self, args: argparse.Namespace) -> None:
        if args.command not in report.ACTIONS:
            self.path, self.runlog.action = None, ""
            return
        self.runlog.action = "stage" if getattr(args, "no_promote", False) else args.command
        self.path = args.report
        if self.path is not None and not self._file().parent.is_dir():
            path, self.path = self.path, None
            raise UsageError(f"--report={path}: no such directory: {path.parent}")

    def _file(self) -> Path:
        assert self.path is not None
        return self.path if self.path.is_absolute() else self.cwd / self.path

    def write(self, exit_code: int, result: str, error: Optional[str]) -> None:
        """The report, if asked for; a report that cannot be written is a warning: the run's
        result and exit code stand."""
        if self.path is None:
            return
        document = report_document(self.runlog, exit_code, result, logsetup.mask(error) if error else None,
                                   self.started_at, time.monotonic() - self.started)
        try:
            report.write(self._file(), document, logsetup.mask)
        except OSError as exc:
            print(logsetup.mask(f"pipeline: warning: could not write the report {self.path}: {exc}"), file=sys.stderr)


def _run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str], cwd: Path,
         stdout: logsetup.TextOut, started: float, runlog: RunLog) -> int:
    # The nginx host first, in a thread: over SSH its handshake and login shells run on the nginx
    # host's side while the rest of the tool (the docker SDK, requests, the flows) is imported here.
    # Imported once paramiko is loaded, not beside paramiko's import: both threads share one
    # interpreter lock, and on a saturated machine the handshake waited for those imports.
    # Only then: `--help` and bad input never load any of it (issue 15).
    connecting = Connecting(settings.nginx.each()[0], settings.network_timeout)   # the first of NGINX_HOSTS
    try:
        connecting.wait_until_waiting()
        from pipeline import compose
        from pipeline.flows import deploy as flows
    except BaseException:
        connecting.close()
        raise
    if args.command == "lock":
        with compose.nginx_hosts(settings, connecting) as hosts:   # the lock is on every nginx host
            stdout.write(flows.lock_command(hosts, settings, args.lock_command) + "\n")
            return errors.EXIT_OK
    with compose.context(settings, environ, cwd, getattr(args, "lock_wait", 0.0), started, connecting,
                         releasing=args.command == "deploy", runlog=runlog) as ctx:
        if args.command == "status":
            _print_status(flows.status(ctx), args.json, stdout)
        elif args.command == "history":
            _print_history(flows.history(ctx), args.json, stdout)
        elif args.command == "deploy":
            (flows.stage if args.no_promote else flows.deploy)(ctx)
        elif args.command == "maintenance":
            from pipeline.flows import maintenance
            if args.state == "on":
                maintenance.turn_on(ctx, args.message)
            else:
                maintenance.turn_off(ctx)
        elif args.command == "promote":
            flows.promote(ctx)
        elif args.command == "release-phase":
            flows.release_phase(ctx, args.version)
        else:
            flows.rollback(ctx, args.to)
    return errors.EXIT_OK


def _print_history(entries: List[Dict[str, Any]], as_json: bool, stdout: logsetup.TextOut) -> None:
    from pipeline.core.history import format_table

    if as_json:
        stdout.write(json.dumps(entries, indent=2) + "\n")   # one write: the masking sees it whole
    else:
        stdout.write(format_table(entries))


def _print_status(report: Mapping[str, Any], as_json: bool, stdout: logsetup.TextOut) -> None:
    if as_json:
        stdout.write(json.dumps(report, indent=2) + "\n")
        return
    for line in _status_lines(report):
        stdout.write(line)


def _status_lines(report: Mapping[str, Any]) -> Iterator[str]:
    """`status` as text: where traffic goes, what is wrong with knowing it, the releases, then a
    row per color (and per task under TARGET=swarm)."""
    live = report["live_color"]
    include = report["include"]
    yield f"app:      {report['app']}\n"
    yield f"live:     {_live_shown(report)}\n"
    yield f"include:  {include['path']} -> {include['points_at'] or 'nothing'} on {report['nginx_host']}\n"
    yield from _host_lines(report)
    if report["preview"]:
        yield f"preview:  {report['preview']}\n"
    yield f"switch:   {report['switch_mode']}" + "".join(f"  {k}={v}" for k, v in report["switch"].items()) + "\n"
    if report.get("maintenance"):
        yield f"maintenance: {_maintenance_shown(report['maintenance'])}\n"
    if report["switch_problem"]:
        yield f"warning:  {report['switch_problem']}" + ("; live color above is from the include\n" if live else "\n")
    if report.get("probe_problem"):
        yield f"warning:  {report['probe_problem']}\n"
    yield "releases: " + "  ".join(f"{name}={r['version']} ({r['color']})" if r else f"{name}=none"
                                   for name, r in report["releases"].items()) + "\n"
    for name, r in report["releases"].items():
        if r and r.get("digest"):   # a record from before digests were kept has none
            yield f"  {name + ':':<9} {r['image']}  {r['digest']}  ({_digest_kind(r.get('digest_of', ''))})\n"
    for color, row in report["colors"].items():
        yield from _color_lines(color, row, color == live)


def _digest_kind(digest_of: str) -> str:
    return {"registry": "registry digest",
            "image id": "image id, not pushed"}.get(digest_of, "digest")


def _maintenance_shown(state: Mapping[str, Any]) -> str:
    if state.get("on") is None:
        return f"unknown ({state.get('problem')})"
    if not state["on"]:
        return "off"
    since = f", since {state['since']} by {state['by']}: {state['message'][:80]}" if state.get("since") else ""
    return f"ON: nginx answers 503 (Retry-After {state['retry_after']}) on the public port{since}"


def _host_lines(report: Mapping[str, Any]) -> Iterator[str]:
    """With several nginx hosts: what each one serves, and loudly when they disagree."""
    hosts = report.get("nginx_hosts") or []
    if len(hosts) < 2:
        return
    for row in hosts:
        serves = f"{row['color']} ({row['version'] or '?'}) at {row['points_at']}" if row["color"] else \
            (row["points_at"] or "nothing")
        yield f"host:     {row['host']} serves {serves}" + (f"  [{row['problem']}]" if row["problem"] else "") + "\n"
    if report.get("hosts_disagree"):
        said = ", ".join(f"{row['host']}: {row['color'] or 'unknown'}" for row in hosts)
        yield (f"WARNING:  THE NGINX HOSTS DISAGREE on what they serve ({said}); a deploy, promote or "
               f"rollback switches every one of them\n")


def _live_shown(report: Mapping[str, Any]) -> str:
    """The live color and its version; "unknown" when the switch cannot say but the include
    points somewhere, "none" when nothing is pointed at."""
    if report["live_color"]:
        return f"{report['live_color']} ({report['live_version']})"
    return "unknown" if report["switch_problem"] and report["include"]["points_at"] else "none"


def _color_lines(color: str, row: Mapping[str, Any], live: bool) -> Iterator[str]:
    where = row["ip"] or f"port {row.get('port')}"
    yield (f"{'*' if live else ' '} {color:<5}  {row['container']:<24} {where:<15} {row['state']:<10} "
           f"{row['version'] or '-':<16} {row['health'] or '-'}\n")
    for task in row.get("tasks") or []:   # TARGET=swarm: one line per task
        route = f"  (route: {task['route']})" if task.get("route") else ""
        yield (f"      task {task['task']:<12} {task['node']:<12} {task['address'] or '-':<20} "
               f"{task['state']:<10} {task['version'] or '-':<16} {task['health'] or '-'}{route}\n")


def run() -> None:
    sys.exit(main(sys.argv[1:], os.environ))
