"""The metadata section: what every firkin file records about itself."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import platform
import sys

import numpy as np

from . import _core

_SKIP = {"builtins", "__main__", "__builtin__"}
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ()))
_dist_map = None


def package_version(top: str) -> str | None:
    """The installed version of a top-level import name (sklearn -> scikit-learn's), or None."""
    mod = sys.modules.get(top)
    ver = getattr(mod, "__version__", None)
    if isinstance(ver, str):
        return ver
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        pass
    global _dist_map
    if _dist_map is None:
        try:
            _dist_map = importlib.metadata.packages_distributions()
        except Exception:  # pragma: no cover - broken environments
            _dist_map = {}
    for dist in _dist_map.get(top, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package_versions(modules) -> dict:
    """{top-level package: version} for the third-party packages in `modules`."""
    out = {}
    for top in modules:
        if top in _SKIP or top in _STDLIB or top.startswith("_"):
            continue
        out[top] = package_version(top)
    return out


def check_user_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")

    def walk(value, path):
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, float) and not math.isfinite(value):
                raise TypeError(f"metadata{path} is {value!r}: JSON has no NaN or infinity (store "
                                "it as a string, e.g. 'inf', or as null)")
            return
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]")
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"metadata{path} has a key {k!r} of type {type(k).__name__}; "
                                    "keys must be str")
                walk(v, f"{path}[{k!r}]")
            return
        raise TypeError(f"metadata{path} is not JSON-serialisable: {type(value).__name__} "
                        f"({value!r:.60})")

    walk(metadata, "")
    size = len(json.dumps(metadata, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    if size > MAX_USER_METADATA:
        raise ValueError(f"metadata is {size:,} bytes as JSON; a firkin file holds at most "
                         f"{MAX_USER_METADATA:,} bytes of it (docs/FORMAT.md, Limits)")
    return metadata


#: the largest user metadata dump accepts: the metadata section's limit less
#: room for what firkin records itself (versions, the table of 1,000 arrays)
MAX_USER_METADATA = _core.MAX_METADATA - (1 << 20)


_CONSTANTS = {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}


def parse(raw: bytes, name: str) -> dict:
    """The metadata section's JSON object, as strict JSON: NaN and infinities
    (which firkin never writes, but an older firkin let into user metadata,
    and anyone can put in a file) come back as the strings "NaN",
    "Infinity", "-Infinity". FormatError naming `name` for anything that
    is not a JSON object (invalid UTF-8 or JSON, nesting too deep)."""
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _core.FormatError(f"{name}: the metadata section is not valid JSON: {what}") from None
    if not isinstance(meta, dict):
        raise _core.FormatError(f"{name}: the metadata section is not a JSON object")
    return meta


#: the array table in the metadata lists at most this many arrays
MAX_ARRAYS_LISTED = 1000


def build(modules, user: dict, buffer_count: int, buffer_bytes: int, compress,
          top_type: str = "", arrays=(), by_value=()) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    listed = [None if a is None else {"dtype": a[0], "shape": list(a[1])}
              for a in list(arrays)[:MAX_ARRAYS_LISTED]]
    info = _core.build_info()
    meta = {
        "format": "%d.%d" % (info["format_major"], info["format_minor"]),
        "firkin": _core.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "created": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "packages": package_versions(modules),
        "buffers": buffer_count,
        "buffer_bytes": buffer_bytes,
        "compress": compress,
        "type": top_type,
        "arrays": listed,
        "user": user,
    }
    if by_value:
        # classes and functions saved by value: name, source file (None when
        # stripped), captured global names (docs/FORMAT.md, "Metadata")
        meta["by_value"] = list(by_value)
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
