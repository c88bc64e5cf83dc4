"""Maintenance mode: what nginx answers on the public port instead of the release (503, a
`Retry-After` header and a small HTML page), and how that flag is written down.

Pure text in, text out; the switches (reload_switch.py, live_switch.py) carry it to nginx.

In both switch modes the live include carries the flag, as lines the shipped configs act on
(nginx/conf.d/app.conf, app-upstream.conf) and app-live.conf's Lua reads at start and reload:

    set form (server context):   set $pipeline_maintenance "60$pipeline_maintenance_ready";
                                 set $pipeline_maintenance_page "<!doctype html>...";
    upstream form (http context): map "" $pipeline_maintenance { default "60$pipeline_maintenance_ready"; }
                                 map "" $pipeline_maintenance_page { default "<!doctype html>..."; }

The value of `$pipeline_maintenance` is the `Retry-After` seconds (non-empty: on). Only a config
that acts on the flag defines `$pipeline_maintenance_ready` (empty): with an older app.conf
`nginx -t` refuses the include (unknown variable) rather than load a flag nothing reads. The page is one
nginx string on one line: `\\`, `"`, newline, CR and tab are escaped as nginx reads them back, and
`$` (which nginx would take for a variable) becomes the HTML entity `&#36;`. nginx reads one
string of at most 4095 bytes, hence MAX_PAGE_BYTES. A switch rewrites the include and keeps these
lines (`carry`); the route parsers skip them, so no text in a page can ever be read as an address.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from typing import Optional

from pipeline.core.errors import SettingsError, UsageError

MAX_MESSAGE = 300          # characters of --message
MAX_PAGE_BYTES = 3500      # the page as written in the include (escaped), under nginx's 4095
DEFAULT_MESSAGE = "This service is down for maintenance. Please try again in a few minutes."
FLAG = "$pipeline_maintenance"
READY = "$pipeline_maintenance_ready"   # defined by the shipped configs that act on the flag

_FLAG_LINE_RE = re.compile(r"^.*\$pipeline_maintenance.*$\n?", re.M)
_RETRY_RE = re.compile(r"\$pipeline_maintenance(?![\w])\D*?(\d+)", re.M)
_PAGE_RE = re.compile(r'\$pipeline_maintenance_page\b[^"\n]*"((?:[^"\\\n]|\\.)*)"', re.M)
_NGINX_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "$": "&#36;"}
_NGINX_UNESCAPES = {"n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True)
class Maintenance:
    """What nginx answers on the public port while maintenance mode is on."""

    page: str          # the HTML body of the 503 (with `$` as `&#36;`, as nginx sends it)
    retry_after: int   # the Retry-After header, in seconds


def check_message(text: str) -> str:
    """`--message`: printable text of at most MAX_MESSAGE characters (UsageError, exit 2)."""
    shown = repr(text if len(text) <= 60 else text[:57] + "...")
    if not text.strip():
        raise UsageError(f"--message={shown}: must not be empty")
    if len(text) > MAX_MESSAGE:
        raise UsageError(f"--message={shown}: at most {MAX_MESSAGE} characters, not {len(text)}")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), None)
    if bad is not None:
        raise UsageError(f"--message={shown}: holds the control character U+{ord(bad):04X}; one line of "
                         f"printable text")
    return text


def page_for(message: str) -> str:
    """The small page built from a message (HTML-escaped)."""
    text = html.escape(message, quote=True)
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>Down for maintenance</title></head>\n"
            f"<body><h1>Down for maintenance</h1>\n<p>{text}</p></body></html>\n").replace("$", "&#36;")


def check_page(name: str, data: bytes) -> str:
    """A page file (MAINTENANCE_PAGE): UTF-8 text, no NUL or other control characters but
    newlines and tabs, and small enough for one nginx string (SettingsError, exit 2)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(name, None, f"not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise SettingsError(name, None, "the file is empty")
    bad = next((c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\r\t"), None)
    if bad is not None:
        raise SettingsError(name, None, f"holds the control character U+{ord(bad):04X}")
    page = text.replace("$", "&#36;")
    size = len(nginx_string(page).encode("utf-8"))
    if size > MAX_PAGE_BYTES:
        raise SettingsError(name, None, f"{size} bytes as nginx reads it; at most {MAX_PAGE_BYTES} (one nginx "
                                        f"string): keep the page small, and link to anything bigger")
    return page


def nginx_string(text: str) -> str:
    """`text` as the inside of one double-quoted nginx string, on one line."""
    return "".join(_NGINX_ESCAPES.get(c, c) for c in text)


def render_flag(flag: Maintenance, form: str) -> str:
    """The include's maintenance lines for the include form (`set` or `upstream`)."""
    page = nginx_string(flag.page)
    if form == "upstream":
        return (f'map "" {FLAG} {{ default "{flag.retry_after}{READY}"; }}\n'
                f'map "" {FLAG}_page {{ default "{page}"; }}\n')
    return f'set {FLAG} "{flag.retry_after}{READY}";\nset {FLAG}_page "{page}";\n'


def without_flag(text: str) -> str:
    """The include without its maintenance lines (what the route parsers read)."""
    return _FLAG_LINE_RE.sub("", text)


def parse_flag(text: Optional[str]) -> Optional[Maintenance]:
    """The flag an include carries, or None (off; also for lines that are not understood)."""
    if not text:
        return None
    retry, page = _RETRY_RE.search(text), _PAGE_RE.search(text)
    if retry is None or page is None:
        return None
    unescaped = re.sub(r"\\(.)", lambda m: _NGINX_UNESCAPES.get(m.group(1), m.group(1)), page.group(1))
    return Maintenance(unescaped, int(retry.group(1)))


def carry(before: Optional[str], text: str, form: str) -> str:
    """`text` (a new include) with the maintenance lines `before` (the include it replaces) had."""
    flag = parse_flag(before)
    return with_flag(text, flag, form)


def with_flag(text: str, flag: Optional[Maintenance], form: str) -> str:
    """The include with `flag` as its maintenance lines (none when None)."""
    bare = without_flag(text)
    if flag is None:
        return bare
    return bare + ("" if not bare or bare.endswith("\n") else "\n") + render_flag(flag, form)


def admin_body(flag: Maintenance) -> str:
    """`PUT /pipeline/maintenance`'s body (live mode): the seconds, a newline, the page."""
    return f"{flag.retry_after}\n{flag.page}"


def parse_admin_answer(text: str) -> Optional[Maintenance]:
    """`GET /pipeline/maintenance`'s answer: "off\\n", or "on SECONDS\\n" and the page; raises
    ValueError for anything else."""
    if text == "off\n":
        return None
    head, _, page = text.partition("\n")
    match = re.fullmatch(r"on (\d{1,6})", head)
    if match is None or not page:
        raise ValueError(f"not a maintenance state: {text[:40]!r}")
    return Maintenance(page, int(match.group(1)))


def describe(flag: Optional[Maintenance]) -> str:
    return f"on (503, Retry-After {flag.retry_after})" if flag else "off"
