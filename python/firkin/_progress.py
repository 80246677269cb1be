"""Byte-based progress bars for big dumps and loads (tqdm.auto: a widget in
Jupyter, text in a terminal), fed from the C write/read loops every 8 MiB.
By default only where someone watches: never into logs or CI output."""
from __future__ import annotations

import sys

from . import _defaults

#: dumps and loads that move more than this show a bar when progress=None
AUTO_THRESHOLD = 256 << 20


def watched() -> bool:
    """Whether a person is likely watching this process's progress: stderr
    is a terminal, or the process is a Jupyter kernel (its bars are widgets
    in the notebook)."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, OSError, ValueError):
        pass
    ipython = sys.modules.get("IPython")
    if ipython is None or "ipykernel" not in sys.modules:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a broken IPython install means no kernel
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


class Progress:
    """Callable handed to the C core: progress(done) or progress(done, total)."""

    def __init__(self, mode, desc: str, total=None):
        """total: the bytes to come, or a callable that returns them, called
        only where a bar may be shown (a load's count walks every buffer)."""
        if mode not in (None, True, False):
            raise TypeError(f"progress must be None, True or False, not {mode!r}")
        mode = _defaults.progress(mode)  # firkin.set_defaults, FIRKIN_PROGRESS
        if mode is None and not watched():
            mode = False  # nobody to show it to: keep bars out of logs
        self.mode = mode
        self.desc = desc
        if callable(total):
            total = total() if mode is not False else None
        self.total = total or None
        self.bar = None
        if mode is True or (mode is None and self.total and self.total > AUTO_THRESHOLD):
            self._open()

    def _open(self):
        try:
            from tqdm.auto import tqdm  # optional dependency
        except ImportError:
            if self.mode is True:
                raise ImportError("progress=True needs tqdm: pip install tqdm "
                                  "(or pip install 'firkin[jupyter]')") from None
            self.mode = False
            return
        self.bar = tqdm(total=self.total, desc=self.desc, unit="B", unit_scale=True,
                        unit_divisor=1024, leave=True)

    def __call__(self, done: int, total: int = 0) -> None:
        if self.mode is False:
            return
        if total and total != self.total:
            self.total = total
            if self.bar is not None:
                # reset() also resizes a Jupyter widget bar (setting .total does not)
                n = self.bar.n
                self.bar.reset(total=total)
                self.bar.update(n)
        if self.bar is None:
            big = (self.total or done) > AUTO_THRESHOLD
            if not big:
                return
            self._open()
            if self.bar is None:
                return
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
