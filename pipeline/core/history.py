"""The release history: JSON lines appended beside the include on the nginx host (on every one of
NGINX_HOSTS: each keeps a copy, and a reader merges the copies, `merge_copies`)."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipeline.core.errors import NginxHostFailed, NotText
from pipeline.log import mask
from pipeline.core.host import NginxHost

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Entry:
    time: str
    who: str
    app: str
    action: str       # deploy, stage, promote, rollback, release-phase
    version: str
    color: str
    result: str       # ok, failed, interrupted, switched back, live unverified
    duration: float
    message: str = ""
    digest: str = ""      # the release's image: its registry digest, or its image id (digest_of says)
    digest_of: str = ""   # "registry" or "image id" (releases.DIGEST_*); "" for a failed run


class History:
    """The history file on the nginx host, and on each of `others` (the rest of NGINX_HOSTS)."""

    def __init__(self, host: NginxHost, path: str, others: Sequence[NginxHost] = ()) -> None:
        self.host = host
        self.path = path
        self.hosts: Tuple[NginxHost, ...] = (host, *others)

    def append(self, entry: Entry) -> List[Tuple[str, str]]:
        """The entry, on every host. Returns the hosts where that failed (description, cause),
        each already warned about."""
        # A failure's message may quote a secret (a build command's output, say): never on file.
        entry = replace(entry, message=mask(entry.message), version=mask(entry.version))
        line = json.dumps(asdict(entry), ensure_ascii=False) + "\n"
        failed = []
        for host in self.hosts:
            try:
                host.append_text(self.path, line)
            except NginxHostFailed as exc:
                # The history must not turn a good deploy into a failed one, nor hide why one failed.
                where = f" on the nginx host {host.description}" if len(self.hosts) > 1 else ""
                log.warning("    could not append to history %s%s: %s", self.path, where, exc)
                failed.append((host.description, exc.cause))
        return failed

    def entries(self) -> List[Entry]:
        """Every entry, oldest first; with several hosts, their copies merged (`merge_copies`),
        with a warning naming a host whose copy lacks entries the others have."""
        if len(self.hosts) == 1:
            return self._entries_on(self.host)
        merged, lacking = merge_copies([(host.description, self._entries_on(host)) for host in self.hosts])
        for description, missing in lacking:
            log.warning("    history %s on the nginx host %s lacks %d entr%s the other hosts have (a run that "
                        "could not reach it); reading the entries of every host", self.path, description,
                        missing, "y" if missing == 1 else "ies")
        return merged

    def mend(self) -> None:
        """With several hosts, under the deploy lock: a host whose copy lacks entries the others
        have (it was unreachable, or newly added to NGINX_HOSTS) gets the merged history written
        over its copy, atomically, with a warning naming it. A host that cannot take it is warned
        about; the run goes on (its own line is appended everywhere later)."""
        if len(self.hosts) == 1:
            return
        copies = [(host, self._entries_on(host)) for host in self.hosts]
        merged, lacking = merge_copies([(host.description, entries) for host, entries in copies])
        text = "".join(json.dumps(asdict(entry), ensure_ascii=False) + "\n" for entry in merged)
        for host, entries in copies:
            missing = sum(1 for entry in merged if entry not in entries)
            if not missing:
                continue
            log.warning("    history %s on the nginx host %s lacked %d entr%s the other hosts have; writing it "
                        "again from every host's copy", self.path, host.description, missing,
                        "y" if missing == 1 else "ies")
            try:
                host.write_text_atomic(self.path, text)
            except NginxHostFailed as exc:
                log.warning("    could not write history %s on the nginx host %s: %s", self.path,
                            host.description, exc)

    def _entries_on(self, host: NginxHost) -> List[Entry]:
        """One host's entries. A line that is not UTF-8 text or not an entry (a hand edit,
        a line cut short by a full disk) is skipped with a warning naming the file and the line.
        Lines end at "\\n" only: a message may hold U+2028, where str.splitlines would split too."""
        try:
            lines: List[Optional[str]] = list((host.read_text(self.path) or "").split("\n"))
        except NotText as exc:
            lines = [_decoded(raw) for raw in exc.data.split(b"\n")]
        entries = []
        for number, line in enumerate(lines, 1):
            if line is None:
                log.warning("    history %s, line %d: not UTF-8 text; skipped", self.path, number)
                continue
            if not line.strip():
                continue
            entry = _parse(line)
            if entry is None:
                log.warning("    history %s, line %d: not a history entry; skipped", self.path, number)
            else:
                entries.append(entry)
        return entries


def merge_copies(copies: Sequence[Tuple[str, Sequence[Entry]]]) -> Tuple[List[Entry], List[Tuple[str, int]]]:
    """Every host's copy of the history as one (pure). Each run appends the same entry on every
    host, so copies differ only by entries a host missed (it could not be reached): the merge is
    the first copy with every entry another copy has and it lacks put in after the entry that
    precedes it there (after the first copy's own entries there that are not newer), so each
    copy's order is kept. Also returns each host whose copy lacks
    entries, and how many."""
    merged: List[Entry] = list(copies[0][1]) if copies else []
    for _, entries in copies[1:]:
        place = 0   # where the next entry missing from `merged` goes: after the last one both have
        for entry in entries:
            if entry in merged:
                place = merged.index(entry) + 1
            else:
                # Between two entries both copies have, the other copy's own ones by their time.
                while place < len(merged) and merged[place] not in entries and merged[place].time <= entry.time:
                    place += 1
                merged.insert(place, entry)
                place += 1
    lacking = []
    for description, entries in copies:
        missing = sum(1 for entry in merged if entry not in entries)
        if missing:
            lacking.append((description, missing))
    return merged, lacking


def _decoded(raw: bytes) -> Optional[str]:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


_TEXT_FIELDS = tuple(name for name in Entry.__dataclass_fields__ if name != "duration")


def _parse(line: str) -> Optional[Entry]:
    """One line's entry; None unless it is a JSON object with the fields of one, of their types."""
    try:
        data = json.loads(line)
        entry = Entry(**{k: data[k] for k in Entry.__dataclass_fields__ if k in data})
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(getattr(entry, k), str) for k in _TEXT_FIELDS):
        return None
    if isinstance(entry.duration, bool) or not isinstance(entry.duration, (int, float)):
        return None
    return entry


def format_table(entries: List[Dict[str, Any]]) -> str:
    """`history`'s table. ROLLBACK says `live` for the release serving now and `yes` for one
    `rollback --to VERSION` can make live (entries as deploy.history marks them)."""
    header = ("TIME", "WHO", "ACTION", "VERSION", "COLOR", "RESULT", "SECONDS", "ROLLBACK", "IMAGE DIGEST",
              "MESSAGE")
    rows = [header] + [(e["time"], e["who"], e["action"], e["version"], e["color"], e["result"],
                        f"{e['duration']:.1f}", _mark(e), short_digest(e.get("digest", ""), e.get("digest_of", "")),
                        e["message"][:60]) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip()
        for row in rows
    ) + "\n"


def short_digest(digest: str, digest_of: str) -> str:
    """A digest as the tables show it: 12 hex digits and what it is (`--json` has it whole)."""
    if not digest:
        return "-"
    return f"{digest[:19]} ({digest_of or 'unknown'})"


def _mark(entry: Dict[str, Any]) -> str:
    if entry.get("live"):
        return "live"
    return "yes" if entry.get("rollback_target") else "-"
