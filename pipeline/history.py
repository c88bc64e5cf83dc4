"""The release history: JSON lines appended beside the include on the nginx host."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import List, Optional

from .errors import NginxHostFailed
from .log import mask
from .nginx_host import NginxHost

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Entry:
    time: str
    who: str
    app: str
    action: str       # deploy, stage, promote, rollback
    version: str
    color: str
    result: str       # ok, failed, interrupted, switched back, live unverified
    duration: float
    message: str = ""


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
        text = self.host.read_text(self.path) or ""
        entries = []
        for line in text.splitlines():
            entry = _parse(line)
            if entry is not None:
                entries.append(entry)
        return entries


def _parse(line: str) -> Optional[Entry]:
    try:
        data = json.loads(line)
        return Entry(**{k: data[k] for k in Entry.__dataclass_fields__ if k in data})
    except (ValueError, TypeError):
        return None


def format_table(entries: List[dict]) -> str:
    """`history`'s table. ROLLBACK says `live` for the release serving now and `yes` for one
    `rollback --to VERSION` can make live (entries as deploy.history marks them)."""
    header = ("TIME", "WHO", "ACTION", "VERSION", "COLOR", "RESULT", "SECONDS", "ROLLBACK", "MESSAGE")
    rows = [header] + [(e["time"], e["who"], e["action"], e["version"], e["color"], e["result"],
                        f"{e['duration']:.1f}", _mark(e), e["message"][:60]) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]).rstrip()
        for row in rows
    ) + "\n"


def _mark(entry: dict) -> str:
    if entry.get("live"):
        return "live"
    return "yes" if entry.get("rollback_target") else "-"
