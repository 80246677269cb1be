"""Warnings that name the user's line: the first caller outside firkin.

A warning raised deep in a load (from inside the unpickler, or several calls
below the public function) would otherwise name one of firkin's own lines,
or "sys:1" when the count of frames is off."""
from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel(skip: int = 1) -> int:
    """warnings.warn's stacklevel, for a call made ``skip`` frames below the
    caller of this function, that points at the first frame outside firkin."""
    frame, level = sys._getframe(skip), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn(message, category), attributed to the user's line."""
    warnings.warn(message, category, stacklevel=user_stacklevel(2) + 1)
