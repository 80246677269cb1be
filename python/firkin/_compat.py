"""Former name of firkin._joblib, kept only because bench/ imports it.

Remove it once bench/ imports firkin._joblib.
"""
from ._joblib import *  # noqa: F403
from ._joblib import __all__  # noqa: F401
