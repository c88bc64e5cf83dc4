"""Deferred imports: a module that runs its code the first time one of its attributes is missed.

`defer_import(NAME)` puts a module object for NAME into sys.modules with its spec, `__path__` and
`__file__` set but its code not run yet. Every later `import NAME`, ours or a library's, gets that
object at no cost; the first read of anything else (`NAME.SSHException`, `from NAME import X`)
runs the module's code, once, under a lock, and from then on it is the ordinary module.

Why not `importlib.util.LazyLoader`: its module loads on *any* attribute read, and the import
statement itself reads `__spec__` (CPython's import_ensure_initialized), so the next `import NAME`
anywhere loads it at once; and before Python 3.12 it has no lock for threads.

What this means for code: a module-level `paramiko.SSHException` (a tuple of errors, a default
argument, a base class) loads paramiko when that module is imported. Code that may run without
SSH names paramiko's attributes inside functions only; tests/unit/test_startup.py checks it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any, Optional


class _Deferred(types.ModuleType):
    """A module whose code has not run yet; the instance turns into a plain module when it has."""

    def __getattr__(self, attr: str) -> Any:   # only for attributes not there (yet)
        state: _Loading = self.__dict__["__spec__"].loader_state
        with state.lock:
            if self.__class__ is _Deferred and not state.loading:
                state.loading = True   # the module's own imports of itself see a partial module
                try:
                    state.loader.exec_module(self)
                finally:
                    state.loading = False
                _become_plain(self)
        return types.ModuleType.__getattribute__(self, attr)


def _become_plain(module: types.ModuleType) -> None:
    """From now on an ordinary module: no hook on attributes it lacks."""
    module.__class__ = types.ModuleType


@dataclass
class _Loading:
    """A deferred module's spec.loader_state: the loader that runs its code, once, under the lock."""

    loader: importlib.abc.Loader
    lock: threading.RLock = field(default_factory=threading.RLock)
    loading: bool = False


def defer_import(name: str, version_from: Optional[str] = None) -> None:
    """Defer loading the top-level module `name`; nothing changes if it is loaded already or
    not installed (then `import name` fails where it is used, as it would have).

    `version_from`: a small submodule whose `__version__` is put on the deferred module at once,
    for a library that others import only to read its version (requests does
    `from charset_normalizer import __version__` to check compatibility). If that submodule
    cannot be read, `name` is not deferred.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    spec.loader_state = _Loading(spec.loader)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _Deferred
    sys.modules[name] = module
    if version_from is None:
        return
    try:
        # A submodule runs without its package's __init__ (the deferred module has its __path__).
        version = importlib.import_module(f"{name}.{version_from}").__version__
    except Exception:   # another layout than expected: load it the ordinary way, when imported
        sys.modules.pop(f"{name}.{version_from}", None)
        del sys.modules[name]
        return
    module.__dict__["__version__"] = version


def is_deferred(name: str) -> bool:
    """`name` is in sys.modules but its code has not run (e.g. paramiko while nothing used SSH)."""
    return type(sys.modules.get(name)) is _Deferred
