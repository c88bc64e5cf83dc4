"""The release history: JSON lines appended beside the include on the nginx host."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional

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
    def __init__(self, host: NginxHost, path: str) -> None:
        self.host = host
        self.path = path

    def append(self, entry: Entry) -> None:
        # A failure's message may quote a secret (a build command's output, say): never on file.
        entry = replace(entry, message=mask(entry.message), version=mask(entry.version))
        try:
            self.host.append_text(self.path, json.dumps(asdict(entry), ensure_ascii=False) + "\n")
        except NginxHostFailed as exc:
            # The history must not turn a good deploy into a failed one, nor hide why one failed.
            log.warning("    could not append to history %s: %s", self.path, exc)

    def entries(self) -> List[Entry]:
        """Every entry, oldest first. A line that is not UTF-8 text or not an entry (a hand edit,
        a line cut short by a full disk) is skipped with a warning naming the file and the line.
        Lines end at "\\n" only: a message may hold U+2028, where str.splitlines would split too."""
        try:
            lines: List[Optional[str]] = list((self.host.read_text(self.path) or "").split("\n"))
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
