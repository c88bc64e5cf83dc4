"""`maintenance on [--message TEXT]` / `maintenance off`: nginx answers the public port with 503,
`Retry-After` and a small page instead of the release, or serves the release again.

No container is started or stopped and the preview route keeps serving: only the switch changes
what nginx answers (core/maintenance.py says how it is written down, the switches carry it). Like
every changing command it holds the deploy lock and is written in the history (who, when, on/off);
a deploy during maintenance keeps it on (the switches carry the flag over) and says so.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from pipeline.core.errors import SettingsError
from pipeline.core.maintenance import DEFAULT_MESSAGE, Maintenance, check_page, describe, page_for
from pipeline.core.settings import Settings
from pipeline.flows.deploy import Context, Outcome, phase, preflight

log = logging.getLogger("pipeline")


def flag_for(settings: Settings, cwd: Path, message: Optional[str]) -> Maintenance:
    """The page nginx is to answer with: from --message (checked by the CLI), else the
    MAINTENANCE_PAGE file, else a page saying DEFAULT_MESSAGE. A bad page file: exit 2."""
    if message is None and settings.maintenance_page is not None:
        path = settings.maintenance_page if settings.maintenance_page.is_absolute() else cwd / settings.maintenance_page
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SettingsError("MAINTENANCE_PAGE", settings.maintenance_page,
                                f"cannot read it: {exc.strerror or exc}") from exc
        try:
            page = check_page("MAINTENANCE_PAGE", data)
        except SettingsError as exc:
            raise SettingsError("MAINTENANCE_PAGE", settings.maintenance_page, exc.problem) from exc
        return Maintenance(page, settings.maintenance_retry_after)
    return Maintenance(page_for(message or DEFAULT_MESSAGE), settings.maintenance_retry_after)


def turn_on(ctx: Context, message: Optional[str] = None) -> Outcome:
    """Maintenance mode on: 503 and the page on the public port, with the lock held."""
    flag = flag_for(ctx.settings, ctx.cwd, message)   # bad input before the lock: nothing changed
    said = message if message is not None else (
        f"page {ctx.settings.maintenance_page}" if ctx.settings.maintenance_page else DEFAULT_MESSAGE)
    with preflight(ctx, "maintenance on") as run:
        if ctx.switch.maintenance() == flag:
            log.info("    maintenance mode is already on with this page")
        else:
            phase("maintenance mode on: nginx answers 503 on the public port [%s]", ctx.switch.mode)
            with ctx.guard.critical():
                ctx.switch.set_maintenance(flag)
        return run.done(Outcome("maintenance on", "", "", said[:200]))


def turn_off(ctx: Context) -> Outcome:
    """Maintenance mode off: the live release serves the public port again."""
    with preflight(ctx, "maintenance off") as run:
        before = ctx.switch.maintenance()
        if before is None:
            log.info("    maintenance mode is already off")
        else:
            phase("maintenance mode off: the live release serves the public port again [%s]", ctx.switch.mode)
            with ctx.guard.critical():
                ctx.switch.set_maintenance(None)
        return run.done(Outcome("maintenance off", "", "", f"was {describe(before)}"))
