"""Process-wide defaults of dump/load arguments: firkin.set_defaults() and
the environment variables behind it.

Each setting is resolved at call time, first match wins: the argument the
call passes, then set_defaults(), then the environment variable, then the
built-in default. Only what the environment variable says is read on every
call, so changing os.environ takes effect at once.
"""
from __future__ import annotations

import os

__all__ = ["durable", "progress", "set_defaults"]

_UNSET = object()
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}

#: built-in default, environment variable, what "auto" means (None: no auto)
_SPECS = {
    "durable": (True, "FIRKIN_DURABLE", False),
    "progress": (None, "FIRKIN_PROGRESS", True),
}
_set: dict = {}


def _check(name: str, value):
    allowed = (True, False, None) if _SPECS[name][2] else (True, False)
    if not any(value is v for v in allowed):
        raise TypeError(f"{name} must be {' or '.join(map(repr, allowed))}, not {value!r}")
    return value


def set_defaults(*, durable=_UNSET, progress=_UNSET) -> dict:
    """Set process-wide defaults for the arguments a call does not pass, and
    return the previous settings (``set_defaults(**previous)`` restores them).

    durable (dump): True fsyncs the file and its directory before dump
    returns (the new file survives a power loss), False skips both fsyncs
    but still writes a temporary file and renames it (a killed process never
    leaves a torn file; a power loss may). Environment: FIRKIN_DURABLE=1/0.

    progress (dump, load): True always shows a bar, False never; None (auto)
    shows one for transfers over 256 MB when someone watches: stderr is a
    terminal or the process is a Jupyter kernel. Environment:
    FIRKIN_PROGRESS=1/0/auto.

    A keyword left out keeps its setting; None clears it, so that the
    environment variable (read at each call), else the built-in default
    (durable=True, progress=auto), applies again.
    """
    previous = {k: _set.get(k) for k in _SPECS}
    for name, value in (("durable", durable), ("progress", progress)):
        if value is _UNSET:
            continue
        if value is None:
            _set.pop(name, None)
        else:
            _set[name] = _check(name, value)
    return previous


def _resolve(name: str, value):
    if value is not None:
        return _check(name, value)
    if name in _set:
        return _set[name]
    builtin, env, auto = _SPECS[name]
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return builtin
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    if auto and word == "auto":
        return None
    choices = "1/0" + ("/auto" if auto else "")
    raise ValueError(f"the environment variable {env}={raw!r} must be one of {choices}")


def durable(value=None) -> bool:
    """dump's durable= as this call resolves it."""
    return _resolve("durable", value)


def progress(value=None):
    """progress= as this call resolves it: True, False or None (auto)."""
    return _resolve("progress", value)
