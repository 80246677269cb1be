"""Loading files that are not firkin containers (joblib, pickle).

Until joblib/pickle support lands this reports what the file is.
"""
from . import _core


def load_foreign(f, name, mmap_mode, **kwargs):
    # the reader's validation names what the file looks like
    _core.Reader(f.fileno(), name=name)
    raise _core.FormatError(f"{name}: not a firkin file")
