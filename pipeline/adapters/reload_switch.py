"""SWITCH_MODE=reload: rewrite the include, test the config, reload nginx, and see the reload apply.

A reload command that exits 0 proves nothing: `nginx -s reload` only sends SIGHUP to the master,
a `systemctl reload` wrapper may do nothing at all, and a config that `nginx -t` accepts can still
fail when the master loads it (a `listen` port another process took): the master logs the error
and keeps its old workers, serving the old include. So the switch is done only when nginx is seen
to have loaded the new include:

    the master (NGINX_PID_FILE) has live worker processes ("nginx: worker process"), and none of
    them is one it had before the reload command ran.

Why this is sound: the master forks workers only after it has read and accepted a whole
configuration, and it tells the workers of the previous one to quit (their title becomes "worker
process is shutting down", and they stop accepting connections). The snapshot of the workers is
taken after the new include was renamed into place (the include is written first, then one SSH
command runs the test, the snapshot, the reload and the wait), so a worker that was not in the
snapshot belongs to a configuration read after the include was in place: nginx answers every new
connection from the new include. The one way to be fooled is another reload of the same nginx
already under way when the snapshot is taken (started by someone else, before the rename) whose
workers appear after it; the deploy lock rules out our own, and our SIGHUP is then still pending
and loads the new include right after. A master replaced outright (a restart) has only new workers:
that counts as applied too, rightly (it read the config after the rename).

Nothing else is assumed of the reload command; the check reads the pid file and /proc on the nginx
host with shell builtins, in the same SSH round trip as the test and the reload, polling until the
workers are replaced or CONFIRM_SECONDS pass.

What nginx has loaded is written down: when the reload is seen to apply, the same command copies
the live include to `NGINX_INCLUDE.loaded`, and it moves that copy aside before every reload. So
"the include and its `.loaded` copy are the same" means nginx serves what the include names; any
other state (a run killed between the rename and the reload, a reload that did not apply, a
put-back cut off) makes `current(LIVE)` raise IncludeNotLoaded, and the next run settles it first
(deploy.facts_and_record, decide.settle_before_touching).
"""
from __future__ import annotations

import logging
import os
import re
import shlex
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from pipeline.core.answers import AccessLogReader, AnswerReader, check_access_log
from pipeline.core.decide import parse_include
from pipeline.core.route import Route, shown
from pipeline.core.errors import (DeployFailed, IncludeNotLoaded, NginxHostFailed, PipelineError, PreflightError,
                     RemoteCommandFailed, SwitchIncomplete, tail)
from pipeline.core.host import CommandResult, NginxHost
from pipeline.core.maintenance import READY, Maintenance, parse_flag, with_flag
from pipeline.core.settings import NginxSettings, SwitchSettings
from pipeline.core.switch import LIVE, PREVIEW, IncludeFiles

log = logging.getLogger("pipeline")

# How long the reload may take to replace nginx's workers (70-130 ms measured here; a big config
# or Lua modules take longer). Bounded by half of NETWORK_TIMEOUT, which bounds the whole command.
CONFIRM_SECONDS = 10

# Run as `sh -c RELOAD_SCRIPT pipeline-reload TOKEN PID_FILE MARKER INCLUDE SECONDS RELOAD...`.
# Its last line is `TOKEN|VERDICT|RC|BEFORE|AFTER|NOTE`, BEFORE and AFTER as `MASTER: W W ...`:
#   applied     the reload exited 0 and the master's live workers are all new
#   unchanged   the workers are those of before (nothing was loaded), the reload exited RC
#   changed     anything else: nginx may have loaded it or not
#   no-master   no nginx master at the pid file: nothing was reloaded
#   no-workers  the master has no live worker: nothing was reloaded
#   marker      the `.loaded` copy could not be moved aside: nothing was reloaded
# Only shell builtins run in the loop but `date` and `sleep`; the children of the master come
# from /proc/PID/task/PID/children, or from every /proc/*/stat where the kernel lacks that file.
RELOAD_SCRIPT = r"""
token=$1 pid_file=$2 marker=$3 include=$4 seconds=$5
shift 5
# `workers`: MASTER: and its live workers; `workers all`: MASTER: and every child it has (a
# worker forked a moment ago still shows the master's title).
workers() {
    m=
    { IFS= read -r m < "$pid_file"; } 2>/dev/null
    case $m in ''|*[!0-9]*) return 1;; esac
    kids=
    if [ -r "/proc/$m/task/$m/children" ]; then
        { IFS= read -r kids < "/proc/$m/task/$m/children"; } 2>/dev/null
    elif [ -d "/proc/$m" ]; then
        kids=$(awk -v p="$m" '{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); if (f[2] == p) print $1 }' \
               /proc/[0-9]*/stat 2>/dev/null)
    else
        return 1
    fi
    out=
    for c in $kids; do
        t=
        [ "$1" = all ] || { IFS= read -r t < "/proc/$c/cmdline"; } 2>/dev/null
        [ "$1" = all ] || [ "$t" = "nginx: worker process" ] && out="$out $c"
    done
    echo "$m:$out"
}
all_new() {
    [ -n "$2" ] || return 1
    case $2 in *:) return 1;; esac
    for w in ${2#*:}; do
        case " ${1#*:} " in *" $w "*) return 1;; esac
    done
}
say() { echo; echo "$token|$1|$2|$before|$now|$3"; }
now=
before=$(workers) && children=$(workers all) || { say no-master "" ""; exit 3; }
case $children in *:) say no-workers "" ""; exit 3;; esac
if [ -n "$marker" ]; then
    { rm -f "$marker.was" && { [ ! -e "$marker" ] || mv -f "$marker" "$marker.was"; }; } || {
        say marker "" ""; exit 3; }
fi
"$@"
rc=$?
deadline=$(( $(date +%s) + seconds ))
while :; do
    now=$(workers) || now=
    [ $rc -eq 0 ] || break
    all_new "$children" "$now" && break
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 0.05 2>/dev/null || sleep 1
done
if [ $rc -eq 0 ] && all_new "$children" "$now"; then
    note=
    if [ -n "$marker" ]; then
        { cp "$include" "$marker.tmp" && mv -f "$marker.tmp" "$marker" && rm -f "$marker.was"; } || note=marker
    fi
    say applied $rc "$note"
    exit 0
fi
if [ "$now" = "$before" ]; then
    # Nothing was loaded: what nginx had loaded before still holds.
    [ -z "$marker" ] || [ ! -e "$marker.was" ] || mv -f "$marker.was" "$marker"
    say unchanged $rc ""
else
    say changed $rc ""
fi
exit 1
"""


@dataclass(frozen=True)
class Reload:
    """What the reload step reported (see RELOAD_SCRIPT)."""

    verdict: str            # applied, unchanged, changed, no-master, no-workers, marker, or unknown
    code: Optional[int]     # the reload command's exit code; None when it did not run (or unknown)
    output: str             # the reload command's own output
    before: str = ""
    after: str = ""
    note: str = ""

    @property
    def ran(self) -> bool:
        """The reload command may have run (so nginx may have loaded what the include said)."""
        return self.verdict not in ("no-master", "no-workers", "marker")

    @classmethod
    def parse(cls, result: Optional[CommandResult], token: str) -> "Reload":
        """The script's verdict line (the last one that starts with the token); the rest is the
        reload command's output."""
        if result is None:
            return cls("unknown", None, "")
        lines = result.output.split("\n")
        for index in range(len(lines) - 1, -1, -1):
            fields = lines[index].split("|")
            if len(fields) == 6 and fields[0] == token:
                _, verdict, code, before, after, note = fields
                output = "\n".join(lines[:index] + lines[index + 1:]).strip("\n")
                return cls(verdict, int(code) if code.isdigit() else None, output, before.strip(), after.strip(),
                           note)
        return cls("unknown", None, result.output)


class ReloadSwitch:
    """Rewrite the include atomically, test the config, reload nginx and see it apply; undo on any
    failure."""

    mode = "reload"
    # route_to returns once nginx's new workers run and the old ones shut down (they take no new
    # connection); a margin for the requests the old ones still hold, as before the check.
    settle_seconds = 0.3

    def __init__(self, host: NginxHost, switch: SwitchSettings, nginx: NginxSettings, timeout: float) -> None:
        """`nginx`: who reads the access log, for preflight's message; `timeout`: NETWORK_TIMEOUT."""
        self.host = host
        self.settings = switch
        self.nginx = nginx
        self.timeout = timeout
        self.includes = IncludeFiles(host, switch)

    @property
    def confirm_seconds(self) -> int:
        return max(1, min(CONFIRM_SECONDS, int(self.timeout / 2)))

    def loaded_path(self, route: str) -> str:
        """Where the copy of the include nginx was last seen loading is kept (live route only)."""
        return f"{self.includes.path(route)}.loaded" if route == LIVE else ""

    def check(self) -> None:
        """The pid file names a process: without it no reload can be seen to apply (exit 3).
        `nginx -t` runs on the real include at every switch."""
        s = self.settings
        where = f"on the nginx host ({self.host.description})"
        try:
            text = self.host.read_text(str(s.nginx_pid_file))
        except NginxHostFailed as exc:
            raise PreflightError(f"NGINX_PID_FILE={s.nginx_pid_file}: cannot read it {where}: {exc.cause}") from exc
        if text is None:
            raise PreflightError(f"NGINX_PID_FILE={s.nginx_pid_file}: no such file {where}; set it to the path in "
                                 f"nginx's `pid` directive (the switch reads it to see a reload replace nginx's "
                                 f"workers), and is nginx running?")
        if not re.fullmatch(r"[0-9]+", text.strip()):
            raise PreflightError(f"NGINX_PID_FILE={s.nginx_pid_file}: holds {text.strip()[:20]!r} {where}, "
                                 f"not a process id")

    def current(self, route: str) -> Optional[Route]:
        """Where the route points. For the live route, only once nginx was seen loading the include
        as it stands; else IncludeNotLoaded (exit 3, unless the flow settles it)."""
        text = self.includes.read(route)
        if route == LIVE:
            loaded = self.host.read_text(self.loaded_path(route))
            if loaded != text:
                addresses = parse_include(text)
                state = "is missing" if loaded is None else "holds another include"
                raise IncludeNotLoaded(
                    f"nginx was not seen loading {self.includes.path(route)} (it names {shown(addresses)}; "
                    f"{self.loaded_path(route)} {state}): nginx may still serve what an older include named",
                    addresses or None)
        return parse_include(text) or None

    def route_to(self, route: str, address: Route) -> None:
        before = self.includes.read(route)
        self._apply(route, before, self.includes.render(route, address, before), address)

    def maintenance(self) -> Optional[Maintenance]:
        """What the live include says (`current(LIVE)` says whether nginx loaded it)."""
        return parse_flag(self.includes.read(LIVE))

    def set_maintenance(self, flag: Optional[Maintenance]) -> None:
        """The live include with the flag's lines (or none), tested, reloaded and seen to apply,
        as a switch is; the address it names is left as it is."""
        address = self.current(LIVE)   # IncludeNotLoaded first: nginx may serve something else
        if not address:
            raise PreflightError(f"NGINX_INCLUDE={self.includes.path(LIVE)} names no address: maintenance mode "
                                 f"is carried by the live include, so deploy first")
        before = self.includes.read(LIVE)
        try:
            self._apply(LIVE, before, with_flag(before or "", flag, self.settings.nginx_include_form), address)
        except RemoteCommandFailed as exc:
            if READY.lstrip("$") not in "\n".join(exc.detail()):
                raise
            raise DeployFailed(f"nginx's config does not act on maintenance mode (`{exc.command}` found no "
                               f"{READY}): install this version's nginx/conf.d/app.conf or app-upstream.conf "
                               f"on the nginx host, then run this again; put the old live include back",
                               exc.detail()) from exc

    def _apply(self, route: str, before: Optional[str], text: str, address: Route) -> None:
        """Write the include's new `text`, test, reload and see it apply; put `before` back on any
        failure. `address`: what `text` names, for the messages."""
        token = f"__pipeline_reload_{os.urandom(8).hex()}"
        try:
            self.includes.write(route, text)
            # One round trip: they stand between "healthy" and "served".
            results = self.host.run_steps([self.settings.nginx_test_command, self._reload_step(route, token)])
        except NginxHostFailed as exc:
            # Cut off mid-way: the include may be either, and nginx may have reloaded. The old
            # include and a reload seen to apply bring back what nginx served before.
            failed = self._named(exc, self.settings.nginx_test_command, self.settings.nginx_reload_command)
            self._put_back(route, before, address, failed, reload=True)
            raise DeployFailed(f"{failed}; put the old {route} include back and reloaded nginx") from exc
        test = results[0]
        if test.code != 0:
            failure: PipelineError = RemoteCommandFailed(test.command, test.code, tail(test.output),
                                          f"nginx rejected the new {route} include; put the old one back")
            self._put_back(route, before, address, failure, reload=False)
            raise failure
        self._reloaded(route, before, address, Reload.parse(results[1] if len(results) > 1 else None, token))

    def _reloaded(self, route: str, before: Optional[str], address: Route, reload: Reload) -> None:
        """What the reload step reported: done, or the old include put back and the failure raised."""
        if reload.verdict == "applied":
            if reload.note:
                # The switch is done; the next run finds no copy and reloads nginx once more first.
                self._warn_loaded_not_written(route)
            return
        failure = self._failure(route, reload)
        # Unchanged workers: nginx loaded nothing, the old include is all it takes (and the script
        # put its `.loaded` copy back). Otherwise nginx may have loaded the new one: reload again.
        self._put_back(route, before, address, failure, reload=reload.ran and reload.verdict != "unchanged")
        raise failure

    # -- two phases, for several nginx hosts switched as one (fleet.FleetSwitch) -------------------

    def prepare(self, route: str, address: Route) -> "ReloadPrepared":
        """Write the new include and test it (`nginx -t`) while nginx still serves the old one
        (nothing reloads). On failure the old include is back and the failure raised."""
        before = self.includes.read(route)
        try:
            self.includes.write(route, self.includes.render(route, address, before))
            test = self.host.run(self.settings.nginx_test_command)
        except NginxHostFailed as exc:
            failed = self._named(exc, self.settings.nginx_test_command)
            self._put_back(route, before, address, failed, reload=False)
            raise DeployFailed(f"{failed}; put the old {route} include back") from exc
        if test.code != 0:
            failure = RemoteCommandFailed(test.command, test.code, tail(test.output),
                                          f"nginx rejected the new {route} include; put the old one back")
            self._put_back(route, before, address, failure, reload=False)
            raise failure
        return ReloadPrepared(self, route, address, before)

    def commit(self, route: str, address: Route, before: Optional[str]) -> None:
        """The reload of a prepared include, seen to apply; on failure the old include is back
        (reloaded when nginx may have loaded the new one) and the failure raised."""
        token = f"__pipeline_reload_{os.urandom(8).hex()}"
        try:
            result = self.host.run(self._reload_step(route, token))
        except NginxHostFailed as exc:
            failed = self._named(exc, self.settings.nginx_reload_command)
            self._put_back(route, before, address, failed, reload=True)
            raise DeployFailed(f"{failed}; put the old {route} include back and reloaded nginx") from exc
        self._reloaded(route, before, address, Reload.parse(result, token))

    def undo(self, route: str, address: Route, before: Optional[str], reload: bool) -> None:
        """The old include back, and reloaded (seen to apply) when nginx loaded the new one."""
        s = self.settings
        try:
            problem = self._restore(route, before, reload)
        except NginxHostFailed as exc:
            problem = str(exc)
        if problem is not None:
            raise SwitchIncomplete(
                f"putting the old {route} include back failed ({problem}). {self.includes.path(route)} on the nginx "
                f"host ({self.host.description}) may name {shown(address)} or the old address, and nginx may serve "
                f"either.", todo=f" On that host, run `{shlex.join(s.nginx_test_command)}` and "
                f"`{shlex.join(s.nginx_reload_command)}`: nginx then serves what the include names")

    def _reload_step(self, route: str, token: str) -> List[str]:
        s = self.settings
        return ["sh", "-c", RELOAD_SCRIPT, "pipeline-reload", token, str(s.nginx_pid_file), self.loaded_path(route),
                str(self.includes.path(route)), str(self.confirm_seconds), *s.nginx_reload_command]

    def _reload(self, route: str) -> Reload:
        """The reload command alone, seen to apply or not (after putting an include back)."""
        token = f"__pipeline_reload_{os.urandom(8).hex()}"
        try:
            return Reload.parse(self.host.run(self._reload_step(route, token)), token)
        except NginxHostFailed as exc:
            raise self._named(exc, self.settings.nginx_reload_command) from exc

    @staticmethod
    def _named(exc: NginxHostFailed, *commands: Sequence[str]) -> NginxHostFailed:
        """The failure, naming the commands as configured rather than the check around the reload
        (a script of many lines, which would break the one-line message)."""
        ran = " then ".join(f"`{_short(shlex.join(argv))}`" for argv in commands)
        return NginxHostFailed(exc.part, f"running {ran}", exc.cause)

    def _failure(self, route: str, reload: Reload) -> PipelineError:
        s = self.settings
        command = shlex.join(s.nginx_reload_command)
        back = f"put the old {route} include back"
        if reload.verdict == "no-master":
            return DeployFailed(f"NGINX_PID_FILE={s.nginx_pid_file} names no running process on the nginx host: "
                                f"nginx was not reloaded (a reload there could not be seen to apply); {back}")
        if reload.verdict == "no-workers":
            return DeployFailed(f"nginx (master {reload.before.rstrip(':')}, NGINX_PID_FILE={s.nginx_pid_file}) "
                                f"has no worker process: nginx was not reloaded; {back}")
        if reload.verdict == "marker":
            return DeployFailed(f"could not move {self.loaded_path(route)} aside on the nginx host: nginx was not "
                                f"reloaded; {back}")
        if reload.verdict == "unknown":
            return DeployFailed(f"`{command}` (with the check that it applied) ended without saying what nginx "
                                f"loaded; {back}", tail(reload.output))
        if reload.code != 0:
            return RemoteCommandFailed(command, reload.code if reload.code is not None else 255, tail(reload.output),
                                       f"nginx reload failed; {back}")
        seen = ("its worker processes were not replaced, see nginx's error log" if reload.verdict == "unchanged"
                else f"its worker processes went from {reload.before} to {reload.after or 'none'}")
        return DeployFailed(f"`{command}` exited 0, but nginx was not seen loading the new {route} include within "
                            f"{self.confirm_seconds}s ({seen}); {back}", tail(reload.output))

    def _put_back(self, route: str, before: Optional[str], address: Route, why: PipelineError,
                  reload: bool) -> None:
        """Restore the include (and reload, seen to apply, when nginx may have loaded the new one);
        if that fails, say exactly what is left to do."""
        try:
            problem = self._restore(route, before, reload)
        except NginxHostFailed as exc:
            problem = str(exc)
        if problem is None:
            return
        s = self.settings
        raise SwitchIncomplete(
            f"{why}; then putting the old {route} include back failed ({problem}). {self.includes.path(route)} "
            f"on the nginx host may name {shown(address)} or the old address, and nginx may serve either, so the "
            f"new container is left running.", list(why.detail()),
            todo=f" On the nginx host, run `{shlex.join(s.nginx_test_command)}` and "
            f"`{shlex.join(s.nginx_reload_command)}`: nginx then serves what the include names, and the next "
            f"deploy goes to the other color") from why

    def _restore(self, route: str, before: Optional[str], reload: bool) -> Optional[str]:
        """Write the old include back (and reload, seen to apply): what went wrong, or None."""
        self.includes.write(route, before)
        if reload:
            again = self._reload(route)
            if again.verdict != "applied":
                return (f"`{shlex.join(self.settings.nginx_reload_command)}` after putting it back was not "
                        f"seen to apply ({again.verdict}, exit {again.code})")
        return None

    def _warn_loaded_not_written(self, route: str) -> None:
        log.warning(
            "    nginx loaded the new %s include, but %s could not be written: the next run reloads nginx "
            "once more before it touches a container", route, self.loaded_path(route))

    def check_answers(self) -> None:
        """The access log opens (answers.check_access_log)."""
        check_access_log(self.host, self.settings, self.nginx)

    def answers(self, route: Route) -> AnswerReader:
        """nginx's access log, from its size now."""
        return AccessLogReader(self.host, str(self.settings.nginx_access_log), route)

    def describe(self) -> Dict[str, Optional[str]]:
        """What each include names, read from the files (whether nginx loaded it: `current`)."""
        return {route: _text(parse_include(self.includes.read(route)))
                for route in (LIVE, PREVIEW) if self.includes.path(route)}


class ReloadPrepared:
    """A new include written and tested on one nginx host, not yet reloaded (core.switch.Prepared)."""

    def __init__(self, switch: ReloadSwitch, route: str, address: Route, before: Optional[str]) -> None:
        self.switch, self.route, self.address, self.text_before = switch, route, address, before
        self.before: Optional[Route] = parse_include(before) or None
        self.committed = False

    def commit(self) -> None:
        self.switch.commit(self.route, self.address, self.text_before)
        self.committed = True

    def undo(self) -> None:
        self.switch.undo(self.route, self.address, self.text_before, reload=self.committed)


def _short(command: str, limit: int = 120) -> str:
    return command if len(command) <= limit else command[:limit - 3] + "..."


def _text(route: Route) -> Optional[str]:
    return str(route[0]) if route else None
