"""What one run did, as it goes: what it decided to release and how long each phase took.

The flows fill it in (deploy.py: `timed(ctx, "build")` around each step, `decided` once the color
and the version are known); the hooks are told its facts (flows/hooks.py), and `--report FILE`
turns it into one JSON document however the run ended (cli.py; the schema is
docs/report.schema.json). Time comes from the run's clock, so a unit test on a fake clock sees the
same phases a real run would.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from pipeline.core.clock import Clock

# The report's format: a consumer that finds another number knows the fields may differ.
REPORT_FORMAT = 1


@dataclass
class Phase:
    """One step of the run: when it started (seconds since the run started) and how long it took.
    `counts`: what the step counted (verification: requests, 5xx, health probes). `failed`: the run
    ended in this step (an error or a signal)."""

    name: str
    started: float
    seconds: float = 0.0
    counts: Dict[str, int] = field(default_factory=dict)
    failed: bool = False
    origin: float = field(default=0.0, repr=False)
    ended: bool = field(default=False, repr=False)

    def end(self, clock: Clock, failed: bool = False) -> None:
        """The phase is over (a second call changes nothing: the first one said how it ended)."""
        if self.ended:
            return
        self.ended, self.failed = True, failed
        self.seconds = round(clock.now() - self.origin - self.started, 3)

    def as_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"name": self.name, "started": self.started, "seconds": self.seconds}
        if self.counts:
            out["counts"] = dict(self.counts)
        if self.failed:
            out["failed"] = True
        return out


@dataclass
class RunLog:
    """One run's facts and phases. `action`: deploy, stage, promote or rollback. `version`,
    `previous_version`, `color`: what the run releases, what was live before it, and the color it
    goes to, once the flow has decided (None until then, or when the run stopped earlier)."""

    action: str = ""
    version: Optional[str] = None
    previous_version: Optional[str] = None
    color: Optional[str] = None
    phases: List[Phase] = field(default_factory=list)

    def begin(self, name: str, clock: Clock, origin: float) -> Phase:
        """Phase `name` starts now on `clock` (`origin`: when the run started, on the same clock);
        `Phase.end` ends it. For a step that is no block of its own; else `timed`."""
        phase = Phase(name, round(clock.now() - origin, 3))
        phase.origin = origin
        self.phases.append(phase)
        return phase

    @contextmanager
    def timed(self, name: str, clock: Clock, origin: float) -> Iterator[Phase]:
        """Time the block as phase `name`. Recorded however the block ends; an exception (a
        signal too) marks the phase failed."""
        phase = self.begin(name, clock, origin)
        try:
            yield phase
        except BaseException:
            phase.end(clock, failed=True)
            raise
        phase.end(clock)


def report_document(runlog: RunLog, exit_code: int, result: str, error: Optional[str], started_at: str,
                    seconds: float) -> Dict[str, Any]:
    """The `--report` document (docs/report.schema.json): the run's facts, how it ended, its phases."""
    return {
        "format": REPORT_FORMAT,
        "action": runlog.action,
        "version": runlog.version,
        "previous_version": runlog.previous_version,
        "color": runlog.color,
        "result": result,
        "exit_code": exit_code,
        "error": error,
        "started_at": started_at,
        "seconds": round(seconds, 3),
        "phases": [phase.as_json() for phase in runlog.phases],
    }
