"""`python -m pipeline COMMAND`: parse, read settings, run a flow, map errors to exit codes.

`main(argv, environ)` is the only place where an error becomes an exit code and a message.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Optional, Sequence

from . import deploy as flows
from . import build, errors, log as logsetup
from .engine import Engine
from .errors import PipelineError, UsageError
from .history import Entry, History, format_table
from .lock import DeployLock, LockInfo, who_am_i
from .nginx_host import NginxHost, check_writable, connect
from .settings import Settings
from .switch import make_switch

log = logging.getLogger("pipeline")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
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

    p = commands.add_parser("deploy", help="build, start the idle color, health-check, switch, stop the old one")
    p.add_argument("--no-promote", action="store_true",
                   help="stop after health (and the preview route): live traffic is left alone")
    locking(p)
    locking(commands.add_parser("promote", help="switch live traffic to the staged release"))
    locking(commands.add_parser("rollback", help="make the previous release live again"))
    p = commands.add_parser("status", help="live color, both containers, where nginx points")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("history", help="every deploy, promote and rollback")
    p.add_argument("--json", action="store_true")
    p = commands.add_parser("lock", help="show or release the deploy lock")
    p.add_argument("lock_command", choices=["status", "release"])
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"--lock-wait={text}: must be a non-negative number of seconds")
    return value


def main(argv: Sequence[str], environ: Mapping[str, str], cwd: Optional[Path] = None,
         stdout=None) -> int:
    stdout = logsetup.MaskedStream(stdout or sys.stdout)
    cwd = cwd or Path.cwd()
    verbose = "--verbose" in argv
    logsetup.setup(verbose)
    started = time.monotonic()
    try:
        args = build_parser().parse_args(list(argv))
        settings = Settings.from_env(environ, cwd, args.env_file)
        logsetup.register_secrets(settings.secret_values())
        if args.command == "deploy":
            settings.check_build_inputs(cwd)
        return _run(args, settings, environ, cwd, stdout, started)
    except PipelineError as exc:
        print(logsetup.mask(f"pipeline: error: {exc}"), file=sys.stderr)
        for line in exc.detail():
            print(logsetup.mask(f"    {line}"), file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except Exception as exc:  # a bug: say so plainly, traceback only when asked
        print(logsetup.mask(f"pipeline: internal error: {type(exc).__name__}: {exc}"), file=sys.stderr)
        if verbose:
            print(logsetup.mask(traceback.format_exc()), file=sys.stderr, end="")
        else:
            print("    (run with --verbose for the traceback)", file=sys.stderr)
        return errors.EXIT_BUG


def _run(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str], cwd: Path,
         stdout, started: float) -> int:
    host = connect(settings)
    try:
        if args.command in ("lock", "history"):
            return _lock_or_history(args, settings, host, stdout)
        engine = Engine.connect(settings, environ)
        ctx = flows.Context(settings, engine, host, make_switch(host, settings), cwd, environ)
        if args.command == "status":
            _print_status(flows.status(ctx), args.json, stdout)
            return errors.EXIT_OK
        return _run_flow(args, ctx, started)
    finally:
        host.close()


def _run_flow(args: argparse.Namespace, ctx: flows.Context, started: float) -> int:
    s = ctx.settings
    action = args.command
    if action == "deploy" and args.no_promote:
        action = "stage"
    if args.command == "deploy" and not s.app_version:
        # Settled once, up front: the lock, the image tag and history (even of a failure) all
        # name the same release.
        s = ctx.settings = replace(s, app_version=build.default_version(ctx.cwd))
    if threading.current_thread() is threading.main_thread():
        ctx.guard.install()
    check_writable(ctx.host, s)
    lock = DeployLock(ctx.host, str(s.lock_path()))
    who = who_am_i(ctx.environ)
    history = History(ctx.host, str(s.history_path()))
    lock.acquire(LockInfo(who, _machine(), os.getpid(), action, s.app_version or "", _now()), args.lock_wait)
    try:
        try:
            if args.command == "deploy":
                outcome = flows.deploy(ctx, promote=not args.no_promote)
            elif args.command == "promote":
                outcome = flows.promote(ctx)
            else:
                outcome = flows.rollback(ctx)
        except BaseException as exc:
            if not isinstance(exc, errors.NothingToDo):
                result = "interrupted" if isinstance(exc, errors.Interrupted) else "failed"
                history.append(Entry(_now(), who, s.app_name, action, s.app_version or "", "", result,
                                     round(time.monotonic() - started, 2), flows.describe_failure(exc)[:300]))
            raise
        history.append(Entry(_now(), who, s.app_name, outcome.action, outcome.version, outcome.color, "ok",
                             round(time.monotonic() - started, 2), outcome.message))
        flows.phase("done: %s in %.1fs", outcome.message, time.monotonic() - started)
        return errors.EXIT_OK
    finally:
        try:
            lock.release()
        except (errors.NginxHostFailed, errors.PreflightError) as exc:   # must not replace the run's result
            log.error("==> could not release the deploy lock %s (%s); when no run is active: "
                      "`python -m pipeline lock release`", lock.path, exc)


def _lock_or_history(args: argparse.Namespace, settings: Settings, host: NginxHost, stdout) -> int:
    if args.command == "history":
        entries = History(host, str(settings.history_path())).entries()
        if args.json:
            stdout.write(json.dumps([asdict(e) for e in entries], indent=2) + "\n")
        else:
            stdout.write(format_table(entries))
        return errors.EXIT_OK
    lock = DeployLock(host, str(settings.lock_path()))
    holder = lock.read()
    if args.lock_command == "status":
        if holder is None:
            stdout.write("unlocked\n")
        else:
            why = lock.why_not_stale(holder)
            stdout.write(f"locked: {holder.describe()} ({why or 'stale: its process is gone'})\n")
        return errors.EXIT_OK
    if holder is None:
        stdout.write("unlocked; nothing to release\n")
        return errors.EXIT_OK
    lock.force_release()
    stdout.write(f"released the lock held by: {holder.describe()}\n")
    return errors.EXIT_OK


def _print_status(report: dict, as_json: bool, stdout) -> None:
    if as_json:
        stdout.write(json.dumps(report, indent=2) + "\n")
        return
    live = report["live_color"]
    stdout.write(f"app:      {report['app']}\n")
    stdout.write(f"live:     {live or 'none'}" + (f" ({report['live_version']})" if live else "") + "\n")
    stdout.write(f"include:  {report['include']['path']} -> {report['include']['points_at'] or 'nothing'}"
                 f" on {report['nginx_host']}\n")
    if report["preview"]:
        stdout.write(f"preview:  {report['preview']}\n")
    stdout.write(f"switch:   {report['switch_mode']}"
                 + "".join(f"  {k}={v}" for k, v in report["switch"].items()) + "\n")
    if report["switch_problem"]:
        stdout.write(f"warning:  {report['switch_problem']}; live color above is from the include\n")
    if report.get("probe_problem"):
        stdout.write(f"warning:  {report['probe_problem']}\n")
    for color, c in report["colors"].items():
        marker = "*" if color == live else " "
        stdout.write(f"{marker} {color:<5}  {c['container']:<24} {c['ip']:<15} {c['state']:<10} "
                     f"{c['version'] or '-':<16} {c['health'] or '-'}\n")


def _machine() -> str:
    import socket

    return socket.gethostname()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run() -> None:
    sys.exit(main(sys.argv[1:], os.environ))
