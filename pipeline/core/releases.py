"""The release record: which release is live, which was live before it, which one is staged.

It is kept on the nginx host beside the history (`APP_NAME.releases.json`), rewritten atomically
whenever traffic or the staged release changes, and read back when a flow starts. Flows decide
from it plus what Docker reports, never from whatever happens to be running: a container left
running by an interrupted drain is not "staged", and a never-promoted release sitting in the idle
color is not "the previous release".

A missing or damaged record, or one that contradicts what nginx serves (a run killed between the
switch and the write), is rebuilt from the history and the containers' labels, with a warning.

Everything here but `ReleaseStore` is pure.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from pipeline.core.decide import ColorChoice, ContainerFact, choose_colors, other
from pipeline.core.errors import NothingToDo, NotText, PipelineError
from pipeline.core.history import Entry
from pipeline.core.host import NginxHost

log = logging.getLogger("pipeline")

FORMAT = 1
# Releases that were live, newest first. Only those whose image is still there (KEEP_RELEASES)
# can be rolled back to; the list is cut so the file stays small.
KEPT_MAX = 50
# History actions after which the entry's release is the live one.
LIVE_ACTIONS = ("deploy", "promote", "rollback")


# What a release's `digest` is: the registry's manifest digest (pushed: every node pulls exactly
# that), or the image id on the engine it was built on (no REGISTRY).
DIGEST_REGISTRY = "registry"
DIGEST_IMAGE_ID = "image id"


@dataclass(frozen=True)
class Release:
    version: str
    color: str
    image: str
    digest: str = ""      # "sha256:..." as `digest_of` says; "" when not known (a record from before)
    digest_of: str = ""   # DIGEST_REGISTRY or DIGEST_IMAGE_ID

    def __str__(self) -> str:
        return f"{self.version} ({self.color})"


@dataclass(frozen=True)
class ReleaseRecord:
    live: Optional[Release] = None
    previous: Optional[Release] = None   # live before `live`: what `rollback` goes back to
    staged: Optional[Release] = None     # started by `deploy --no-promote`, waiting for `promote`
    kept: Tuple[Release, ...] = field(default_factory=tuple)   # every release that was live, newest first

    def made_live(self, release: Release) -> "ReleaseRecord":
        """After a switch: `release` serves. It went to the idle color, so nothing is staged there
        any more (it was promoted, or replaced)."""
        previous = self.live if self.live is not None and self.live.version != release.version else self.previous
        kept = (release,) + tuple(r for r in self.kept if r.version != release.version)
        return ReleaseRecord(live=release, previous=previous, staged=None, kept=kept[:KEPT_MAX])

    def with_staged(self, release: Optional[Release]) -> "ReleaseRecord":
        return replace(self, staged=release)

    def without_color(self, color: str) -> "ReleaseRecord":
        """After the container of `color` was removed or replaced: nothing is staged there."""
        if self.staged is not None and self.staged.color == color:
            return replace(self, staged=None)
        return self

    # -- the file ------------------------------------------------------------------------------

    def to_json(self) -> str:
        data = {"format": FORMAT, **{k: _out(v) for k, v in
                                     (("live", self.live), ("previous", self.previous), ("staged", self.staged))},
                "kept": [asdict(r) for r in self.kept]}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ReleaseRecord":
        """Raises ValueError for anything but a record this tool wrote."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not a release record of format {FORMAT}")
            return cls(live=_in(data.get("live")), previous=_in(data.get("previous")),
                       staged=_in(data.get("staged")), kept=tuple(_release(r) for r in data.get("kept") or ()))
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed release record: {exc}") from exc


def _out(release: Optional[Release]) -> Optional[Dict[str, str]]:
    return asdict(release) if release is not None else None


def _in(data: object) -> Optional[Release]:
    return None if data is None else _release(data)


def _release(data: object) -> Release:
    """A release as written: a kept one is never null (a hand edit that says so is damage)."""
    if not isinstance(data, dict):
        raise ValueError(f"not a release: {data!r}")
    release = Release(str(data["version"]), str(data["color"]), str(data["image"]),
                      str(data.get("digest") or ""), str(data.get("digest_of") or ""))
    if release.color not in ("blue", "green") or not release.version:
        raise ValueError(f"not a release: {data!r}")
    return release


# -- reading it back: checked against what nginx serves and Docker reports -------------------------

def problem_with(record: ReleaseRecord, live_color: Optional[str],
                 containers: Mapping[str, ContainerFact]) -> Optional[str]:
    """Why `record` cannot be trusted, or None. The live color is what nginx serves (gathered)."""
    if live_color is None:
        return None if record.live is None else f"it says {record.live} is live, but nginx serves neither color"
    fact = containers.get(live_color)
    if record.live is None:
        return f"it says nothing is live, but nginx serves {live_color}"
    if record.live.color != live_color:
        return f"it says {record.live} is live, but nginx serves {live_color}"
    if fact is not None and fact.version and fact.version != record.live.version:
        return f"it says {record.live} is live, but the {live_color} container runs {fact.version}"
    return None


def rebuild(entries: Sequence[Entry], live_color: Optional[str], containers: Mapping[str, ContainerFact],
            image_of: Callable[[str], str]) -> ReleaseRecord:
    """The record as the history and the containers' labels tell it.

    The live release is the one whose container nginx serves (its labels); the others, newest
    first, are the releases the history saw made live; the staged one is the last `stage` after
    the last switch, if its container still runs it.
    """
    releases = [entry for entry in entries if _names_a_release(entry)]
    live = _serving(containers.get(live_color) if live_color else None, image_of)
    kept = _live_first(live, _made_live(releases, containers, image_of))
    record = ReleaseRecord(live=live, previous=_previous(kept, live),
                           staged=_still_staged(_last_stage(releases), live, containers), kept=tuple(kept[:KEPT_MAX]))
    return _with_digests(record, releases)


def _with_digests(record: ReleaseRecord, releases: Sequence[Entry]) -> ReleaseRecord:
    """Each release's digest as the history recorded it when the release was built (the last
    entry of its version that names one)."""
    digests = {e.version: (e.digest, e.digest_of) for e in releases if e.digest}

    def of(release: Optional[Release]) -> Optional[Release]:
        if release is None or release.digest or release.version not in digests:
            return release
        digest, digest_of = digests[release.version]
        return replace(release, digest=digest, digest_of=digest_of)

    return ReleaseRecord(live=of(record.live), previous=of(record.previous), staged=of(record.staged),
                         kept=tuple(r for r in map(of, record.kept) if r is not None))


def _names_a_release(entry: Entry) -> bool:
    """A run that finished and names a release and its color (not a failure, not a hand edit)."""
    return entry.result == "ok" and bool(entry.version) and entry.color in ("blue", "green")


def _serving(fact: Optional[ContainerFact], image_of: Callable[[str], str]) -> Optional[Release]:
    """The release the container nginx serves runs, by its labels; None without a version label."""
    if fact is None or not fact.version:
        return None
    return Release(fact.version, fact.color, fact.image or image_of(fact.version))


def _made_live(releases: Sequence[Entry], containers: Mapping[str, ContainerFact],
               image_of: Callable[[str], str]) -> List[Release]:
    """Every release the history saw made live, newest first, each once (where it was live last)."""
    kept: List[Release] = []
    for entry in reversed(releases):
        if entry.action in LIVE_ACTIONS and all(r.version != entry.version for r in kept):
            kept.append(Release(entry.version, entry.color, _image(entry.version, entry.color, containers, image_of)))
    return kept


def _live_first(live: Optional[Release], made_live: List[Release]) -> List[Release]:
    """What the containers say is live comes first, whatever the history says."""
    if live is None:
        return made_live
    return [live] + [r for r in made_live if r.version != live.version]


def _previous(kept: Sequence[Release], live: Optional[Release]) -> Optional[Release]:
    """The newest kept release that is not the live one: what `rollback` goes back to."""
    return next((r for r in kept if live is None or r.version != live.version), None)


def _last_stage(releases: Sequence[Entry]) -> Optional[Entry]:
    """The last `stage` after the last switch: a switch since then promoted or replaced it."""
    for entry in reversed(releases):
        if entry.action in LIVE_ACTIONS:
            return None
        if entry.action == "stage":
            return entry
    return None


def _still_staged(stage: Optional[Entry], live: Optional[Release],
                  containers: Mapping[str, ContainerFact]) -> Optional[Release]:
    """`stage`'s release, if it went to the idle color and its container still runs it."""
    if stage is None or live is None or stage.color != other(live.color):
        return None
    fact = containers.get(stage.color)
    if fact is None or not fact.running or fact.version != stage.version:
        return None
    return Release(stage.version, stage.color, fact.image)


def _image(version: str, color: str, containers: Mapping[str, ContainerFact], image_of: Callable[[str], str]) -> str:
    fact = containers.get(color)
    if fact is not None and fact.version == version and fact.image:
        return fact.image
    return image_of(version)


@dataclass(frozen=True)
class Copy:
    """One nginx host's copy of the record, as read: the record, or None and why it is unusable."""

    host: str
    record: Optional[ReleaseRecord]
    why: str = ""

    def says(self) -> str:
        """What the copy says, for a warning: which release is live, or why it is unusable."""
        if self.record is None:
            return self.why
        return f"says {self.record.live} is live" if self.record.live else "says nothing is live"


@dataclass(frozen=True)
class Reconciled:
    """What the copies of the record come to (`reconcile`): the record to check against the facts
    (None: there is none to use; `why` says why), a warning naming the hosts whose copy was not
    taken ("" when every copy is the same), and those hosts."""

    record: Optional[ReleaseRecord]
    why: str
    warning: str = ""
    stale_hosts: Tuple[str, ...] = ()


def reconcile(copies: Sequence[Copy], live_color: Optional[str],
              containers: Mapping[str, ContainerFact]) -> Reconciled:
    """The record from every nginx host's copy (pure). The same everywhere: that one (checked
    against the facts by `load`, as one host's is). Copies that disagree (a host that missed a
    write: it could not be reached, or a run was killed between two hosts' writes): the one copy
    that agrees with what nginx serves and the containers' labels (`problem_with`), if exactly one
    distinct record does; else none, so that `load` rebuilds it from the history and the labels.
    Either way the warning names the hosts whose copy was not taken."""
    first = copies[0]
    if all(c.record == first.record and (c.record is not None or c.why == first.why) for c in copies):
        return Reconciled(first.record, first.why)
    fitting = []
    for c in copies:
        if c.record is not None and problem_with(c.record, live_color, containers) is None \
                and c.record not in fitting:
            fitting.append(c.record)
    said = "; ".join(f"{c.host}: {c.says()}" for c in copies)
    if len(fitting) == 1:
        stale = tuple(c.host for c in copies if c.record != fitting[0])
        taken = next(c.host for c in copies if c.record == fitting[0])
        return Reconciled(fitting[0], "", f"the release record's copies disagree ({said}); the copy on "
                          f"{', '.join(stale)} is out of date: taking {taken}'s, which agrees with what nginx "
                          f"serves and the containers' labels", stale)
    return Reconciled(None, "differs between the nginx hosts",
                      f"the release record's copies disagree ({said}) and "
                      f"{'none' if not fitting else 'more than one'} of them agrees with what nginx serves and "
                      f"the containers' labels", tuple(c.host for c in copies))


def agreed(copies: Sequence[Copy]) -> Optional[ReleaseRecord]:
    """The record every copy holds, if they all hold the same one (pure)."""
    first = copies[0].record
    return first if all(c.record == first for c in copies) else None


class ReleaseStore:
    """The record's file on the nginx host, and on each of `others` (the rest of NGINX_HOSTS):
    written on every one, read from every one (`load` reconciles copies that disagree)."""

    def __init__(self, host: NginxHost, path: str, others: Sequence[NginxHost] = ()) -> None:
        self.host = host
        self.path = path
        self.hosts: Tuple[NginxHost, ...] = (host, *others)

    def read(self) -> Tuple[Optional[ReleaseRecord], str]:
        """The record, or None and why it cannot be used (a file that is not UTF-8 text, as a
        write cut short by a full disk leaves it, is damaged like one that is not a record).
        With several hosts whose copies differ: None (`copies` has them all)."""
        copies = self.copies()
        if len(copies) == 1 or all(c == replace(copies[0], host=c.host) for c in copies):
            return copies[0].record, copies[0].why
        return None, f"{self.path} differs between the nginx hosts"

    def copies(self) -> Tuple[Copy, ...]:
        """Every host's copy, in NGINX_HOSTS' order."""
        return tuple(self._read_on(host) for host in self.hosts)

    def _read_on(self, host: NginxHost) -> Copy:
        try:
            text = host.read_text(self.path)
        except NotText as exc:
            return Copy(host.description, None, f"{self.path} is damaged ({exc.cause})")
        if text is None:
            return Copy(host.description, None, f"{self.path} does not exist")
        try:
            return Copy(host.description, ReleaseRecord.from_json(text))
        except ValueError as exc:
            return Copy(host.description, None, f"{self.path} is damaged ({exc})")

    def write(self, record: ReleaseRecord) -> List[str]:
        """On every host. Never turns a switch that happened into a failure: a record that could
        not be written is rebuilt by the next run, which says so. Returns the hosts where the
        write failed (each already warned about)."""
        failed = []
        for host in self.hosts:
            try:
                host.write_text_atomic(self.path, record.to_json())
            except (OSError, PipelineError) as exc:
                where = f" on the nginx host {host.description}" if len(self.hosts) > 1 else ""
                log.warning("    could not write the release record %s%s: %s; the next run rebuilds it from "
                            "the history and the containers' labels", self.path, where, exc)
                failed.append(host.description)
        return failed


def load(store: ReleaseStore, entries: Callable[[], Sequence[Entry]], live_color: Optional[str],
         containers: Mapping[str, ContainerFact], image_of: Callable[[str], str],
         read: Optional[Sequence[Copy]] = None) -> ReleaseRecord:
    """`read`: what `store.copies()` gave earlier in the same run (under the lock), to spare a read."""
    decision = reconcile(read if read is not None else store.copies(), live_color, containers)
    if decision.warning:
        log.warning("    %s", decision.warning)
    record, why = decision.record, decision.why
    if record is not None:
        why = problem_with(record, live_color, containers) or ""
        if not why:
            return record
        why = f"the release record {store.path} is out of date: {why}"
    elif why and "does not exist" in why and not entries() and not containers:
        return ReleaseRecord()   # a first deploy: nothing to rebuild, nothing to warn about
    elif decision.stale_hosts:   # copies that disagree, none of them to be trusted
        why = f"the release record {store.path} {why}"
    else:
        why = f"the release record {why}"
    log.warning("    %s; rebuilding it from the history and the containers' labels", why)
    return rebuild(entries(), live_color, containers, image_of)


# -- decisions -------------------------------------------------------------------------------------

def settle_live(choice: ColorChoice, record: Optional[ReleaseRecord], running: FrozenSet[str]) -> ColorChoice:
    """With no usable include, the seed's probe takes a blue that answers for the live release.
    A record that says nothing is live (a first release staged in blue) knows better."""
    if choice.by_probe and record is not None and record.live is None:
        return choose_colors(None, False, running)
    return choice


@dataclass(frozen=True)
class RollbackPlan:
    release: Release            # what becomes live, on `color`
    color: str                  # always the idle color: the live container is never touched
    how: str                    # "running" (still up), "start" (kept, stopped) or "recreate" (from its image)
    replaces: Optional[str]     # the version of the container `recreate` removes, if any


def rollback_targets(record: ReleaseRecord, live_color: Optional[str], containers: Mapping[str, ContainerFact],
                     images: Iterable[str]) -> List[Release]:
    """Releases `rollback --to` can make live, newest first: they were live once, are not live
    now, and their kept container or their image is still there."""
    present = set(images)
    live_version = record.live.version if record.live is not None else None
    idle = containers.get(other(live_color)) if live_color else None
    out = []
    for release in record.kept:
        if release.version == live_version:
            continue
        if release.image in present or (idle is not None and idle.version == release.version):
            out.append(release)
    return out


def plan_rollback(record: ReleaseRecord, live_color: Optional[str], containers: Mapping[str, ContainerFact],
                  images: Callable[[], Iterable[str]], to_version: Optional[str] = None) -> RollbackPlan:
    """Raises NothingToDo (exit 5), naming what can be rolled back to, when there is nothing.

    `images` (the release images the engine keeps) is asked only when the idle container does not
    hold the release gone back to: a rollback to a kept container, the one a bad day needs fast,
    does without the engine's image list (a round trip before `docker start`, issue 15)."""
    if live_color is None or record.live is None:
        raise NothingToDo("no previous release to roll back to (nothing is live)")
    wanted = to_version if to_version is not None else record.previous.version if record.previous else None
    targets = rollback_targets(record, live_color, containers, ())   # what the idle container holds
    if wanted is None or _find(targets, wanted) is None:
        targets = rollback_targets(record, live_color, containers, images())
    if to_version is None:
        release = _going_back(record.previous, record.live, targets)
    else:
        release = _going_to(to_version, record.live, targets)
    color = other(live_color)
    return _plan_on(replace(release, color=color), containers.get(color))


def _going_back(previous: Optional[Release], live: Release, targets: Sequence[Release]) -> Release:
    """Plain `rollback`: the release that was live before, if its container or image is still there."""
    if previous is None:
        raise NothingToDo(f"no previous release to roll back to (live: {live})")
    found = _find(targets, previous.version)
    if found is None:
        raise NothingToDo(f"no previous release to roll back to: {previous.version} has neither its container "
                          f"nor its image any more (live: {live}; can go to: {_versions(targets)})")
    return found


def _going_to(version: str, live: Release, targets: Sequence[Release]) -> Release:
    """`rollback --to VERSION`: any kept release but the live one."""
    if version == live.version:
        raise NothingToDo(f"{version} is already live on {live.color} (can go to: {_versions(targets)})")
    found = _find(targets, version)
    if found is None:
        raise NothingToDo(f"cannot roll back to {version}: not a kept release (can go to: {_versions(targets)})")
    return found


def _find(releases: Sequence[Release], version: str) -> Optional[Release]:
    return next((r for r in releases if r.version == version), None)


def _versions(releases: Sequence[Release]) -> str:
    return ", ".join(r.version for r in releases) or "none"


# The states of a container (or a swarm color scaled to 0: "stopped") that can be started again.
_STARTABLE = ("running", "exited", "created", "stopped")


def _plan_on(release: Release, idle: Optional[ContainerFact]) -> RollbackPlan:
    """`release` in the idle color: its container reused when it holds exactly that release and
    can be started, else recreated from the image (replacing whatever release is there)."""
    if idle is None or idle.version != release.version or idle.image != release.image:
        return RollbackPlan(release, release.color, "recreate", idle.version if idle is not None else None)
    if idle.status not in _STARTABLE:
        return RollbackPlan(release, release.color, "recreate", None)
    how = "running" if idle.running and idle.restart_count == 0 else "start"
    return RollbackPlan(release, release.color, how, None)


def staged_release(record: ReleaseRecord, live_color: Optional[str],
                   containers: Mapping[str, ContainerFact]) -> Release:
    """What `promote` makes live: the release `deploy --no-promote` recorded, if its container
    still runs it in the idle color. Raises NothingToDo (exit 5) otherwise."""
    staged = record.staged
    live = f"live: {record.live}" if record.live else "nothing is live"
    if staged is None:
        raise NothingToDo(f"nothing is staged: run `deploy --no-promote` first ({live})")
    fact = containers.get(staged.color)
    if live_color is not None and staged.color != other(live_color):
        raise NothingToDo(f"nothing is staged: {staged} was staged, but nginx now serves {live_color} ({live})")
    if fact is None or fact.version != staged.version or not fact.running:
        state = "gone" if fact is None else (f"{fact.status}" if fact.version == staged.version
                                             else f"replaced by {fact.version}")
        raise NothingToDo(f"nothing is staged: {staged} was staged, but its container is {state}; "
                          f"run `deploy --no-promote` again ({live})")
    return staged
