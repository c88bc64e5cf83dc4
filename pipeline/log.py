"""Progress on stderr: a line per phase, indented detail, timestamps a Jenkins log can read.

Every secret value registered with `register_secret` is replaced by *** in every log record (a
filter on the handler) and in whatever `mask` or a `MaskedStream` passes on: the CLI's stdout and
its error lines.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
from collections import deque
from typing import Iterable, List, Optional, Protocol, TextIO

_BOLD, _RED, _YELLOW, _RESET = "\033[1m", "\033[31m", "\033[33m", "\033[0m"

MASK = "***"
# Shorter values would be masked wherever their characters happen to meet (in timestamps,
# versions, words): they are no secret anyway, and the log would become unreadable.
MIN_SECRET_LENGTH = 4

_secrets: List[str] = []     # longest first, with their JSON-escaped forms
_secrets_lock = threading.Lock()


def register_secret(value: str) -> None:
    """From now on `value` never reaches the log or the CLI's output: it shows as ***."""
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    with _secrets_lock:
        for form in forms:
            if form not in _secrets:
                _secrets.append(form)
        _secrets.sort(key=len, reverse=True)


def register_secrets(values: Iterable[str]) -> None:
    for value in values:
        register_secret(value)


def mask(text: str) -> str:
    """`text` with every registered secret replaced by ***."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class MaskSecrets(logging.Filter):
    """Rewrites each record so that no registered secret is in its message or traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:   # a bad format call: left for the handler to report as logging does
            return True
        record.msg = mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        if record.stack_info:
            record.stack_info = mask(record.stack_info)
        return True


def echo_output(lines: Iterable[str], last: "deque[str]") -> None:
    """A child process's output (the build, the smoke command) into the log line by line,
    indented under its phase, the last lines kept in `last` for the error that names them."""
    for line in lines:
        line = line.rstrip()
        last.append(line)
        logging.getLogger("pipeline").info("    | %s", line)


class TextOut(Protocol):
    """Where the CLI writes its output: a text stream, or a MaskedStream around one."""

    def write(self, text: str) -> int: ...


class MaskedStream:
    """A text stream that masks registered secrets in each write (write whole lines to it)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(mask(text))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()


class _Formatter(logging.Formatter):
    def __init__(self, colour: bool) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(message)s", "%H:%M:%S")
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.colour:
            return text
        if record.levelno >= logging.ERROR:
            return f"{_RED}{text}{_RESET}"
        if record.levelno >= logging.WARNING:
            return f"{_YELLOW}{text}{_RESET}"
        if record.getMessage().startswith("==>"):
            return f"{_BOLD}{text}{_RESET}"
        return text


def setup(verbose: bool = False, stream: Optional[TextIO] = None) -> logging.Logger:
    stream = stream or sys.stderr
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(colour=hasattr(stream, "isatty") and stream.isatty()))
    handler.addFilter(MaskSecrets())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # paramiko logs failures we already report in our own words (e.g. "Secsh channel open
    # FAILED"); without a handler Python would print them raw. Shown with --verbose only.
    ssh_logger = logging.getLogger("paramiko")
    ssh_logger.handlers[:] = [handler if verbose else logging.NullHandler()]
    ssh_logger.propagate = False
    return logger
