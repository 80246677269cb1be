"""A pytest plugin that runs joblib's own tests with firkin in joblib's place,
the way a user switches: joblib.dump / joblib.load (and the names joblib's
numpy_pickle module exports) become firkin's, loading with trusted=True as
joblib.load does. Used by tests/test_joblib_conformance.py:

    python -m pytest -p joblib_plugin --pyargs joblib.test.test_numpy_pickle
"""
import functools

import joblib
from joblib import numpy_pickle

import firkin

PATCHED = {
    "dump": firkin.dump,
    "load": functools.partial(firkin.load, trusted=True),
}


def pytest_configure(config):
    for name, func in PATCHED.items():
        setattr(joblib, name, func)
        setattr(numpy_pickle, name, func)
