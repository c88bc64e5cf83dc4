"""Progress on stderr: a line per phase, indented detail, timestamps a Jenkins log can read."""
from __future__ import annotations

import logging
import sys

_BOLD, _RED, _YELLOW, _RESET = "\033[1m", "\033[31m", "\033[33m", "\033[0m"


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


def setup(verbose: bool = False, stream=None) -> logging.Logger:
    stream = stream or sys.stderr
    logger = logging.getLogger("pipeline")
    logger.handlers[:] = []
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_Formatter(colour=hasattr(stream, "isatty") and stream.isatty()))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    # paramiko logs failures we already report in our own words (e.g. "Secsh channel open
    # FAILED"); without a handler Python would print them raw. Shown with --verbose only.
    ssh_logger = logging.getLogger("paramiko")
    ssh_logger.handlers[:] = [handler if verbose else logging.NullHandler()]
    ssh_logger.propagate = False
    return logger
