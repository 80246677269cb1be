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


class VersionMismatchWarning(UserWarning):
    """A package whose objects a file holds is installed in another version
    than the one that wrote it."""


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
        except Exception:  # noqa: BLE001 - broken environments  # pragma: no cover
            _dist_map = {}
    for dist in _dist_map.get(top, ()):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_differences(meta: dict, python: bool = False) -> list:
    """[{"package", "recorded", "installed"}] for each package version the
    metadata records that is not the installed one (and Python's, with
    `python`): what load warns about and firkin.check reports."""
    out = []
    py = meta.get("python")
    if python and isinstance(py, str) and py != platform.python_version():
        out.append({"package": "python", "recorded": py, "installed": platform.python_version()})
    out += [{k: p[k] for k in ("package", "recorded", "installed")}
            for p in package_table(meta) if p["mismatch"]]
    return out


def package_table(meta: dict) -> list:
    """[{"package", "recorded", "installed", "mismatch"}] for every package the
    metadata records, sorted: the one place that decides whether a recorded
    version differs from the installed one (a version the writer could not
    read, recorded as null, never does)."""
    packages = meta.get("packages")
    out = []
    for pkg, rec in sorted(packages.items() if isinstance(packages, dict) else ()):
        inst = package_version(pkg)
        out.append({"package": pkg, "recorded": rec, "installed": inst,
                    "mismatch": isinstance(rec, str) and inst != rec})
    return out


def package_versions(modules) -> dict:
    """{top-level package: version} for the third-party packages in `modules`."""
    out = {}
    for top in modules:
        if top in _SKIP or top in _STDLIB or top.startswith("_"):
            continue
        out[top] = package_version(top)
    return out


#: how deeply the metadata JSON may nest arrays and objects (its top-level
#: object and the user's dict under "user" included); deeper is refused when
#: dumping and is a FormatError when reading
MAX_DEPTH = 64


def check_user_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")

    def walk(value, path, depth=2):  # the file's top-level object holds it under "user"
        if value is None or isinstance(value, (bool, int, float, str)):
            if isinstance(value, float) and not math.isfinite(value):
                raise TypeError(f"metadata{path} is {value!r}: JSON has no NaN or infinity (store "
                                "it as a string, e.g. 'inf', or as null)")
            return
        if isinstance(value, (list, tuple, dict)) and depth > MAX_DEPTH:
            raise ValueError(f"metadata{path} nests more than {MAX_DEPTH - 1} levels deep")
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{path}[{i}]", depth + 1)
            return
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    raise TypeError(f"metadata{path} has a key {k!r} of type {type(k).__name__}; "
                                    "keys must be str")
                walk(v, f"{path}[{k!r}]", depth + 1)
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


def parse(raw: bytes | None, name: str) -> dict:
    """The metadata section's JSON object, as strict JSON: NaN and infinities
    (which firkin never writes, but an older firkin let into user metadata,
    and anyone can put in a file) come back as the strings "NaN",
    "Infinity", "-Infinity". FormatError naming `name` for anything that
    is not a JSON object (invalid UTF-8 or JSON, nesting deeper than
    MAX_DEPTH). The nesting is measured before parsing (linear, vectorised,
    no recursion), so a deeply nested section costs no more than its bytes.
    None (a file without metadata) is {}. load (before unpickling),
    load_metadata, info and verify all read the section here."""
    if raw is None:
        return {}
    raw = bytes(raw)
    # the depth is at most the number of opening brackets: most sections need no measuring
    depth = 0 if raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH else _depth(raw)
    if depth > MAX_DEPTH:
        raise _core.FormatError(f"{name}: the metadata section is not valid: it nests {depth} "
                                f"levels deep (at most {MAX_DEPTH})")
    try:
        meta = json.loads(raw.decode("utf-8"), parse_constant=_CONSTANTS.__getitem__)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise _core.FormatError(f"{name}: the metadata section is not valid JSON: {what}") from None
    if not isinstance(meta, dict):
        raise _core.FormatError(f"{name}: the metadata section is not a JSON object")
    return meta


#: the format version this build writes, as the metadata records it
_FORMAT = "%d.%d" % (_core.FORMAT_MAJOR, _core.FORMAT_MINOR)

#: the array table in the metadata lists at most this many arrays
MAX_ARRAYS_LISTED = 1000


def build(modules, user: dict, buffer_count: int, buffer_bytes: int, compress,
          top_type: str = "", arrays=(), by_value=(), models=(), check=None) -> bytes:
    now = datetime.datetime.now(datetime.timezone.utc)
    listed = [None if a is None else {"dtype": a[0], "shape": list(a[1])}
              for a in list(arrays)[:MAX_ARRAYS_LISTED]]
    meta = {
        "format": _FORMAT,
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
    if models:
        # scikit-learn-style estimators' signatures (firkin._model, docs/FORMAT.md)
        meta["models"] = list(models)
    if check is not None:
        # the check sample stored after the object's pickle (docs/FORMAT.md, "Check sample")
        meta["check"] = check
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, without
    parsing it: linear, vectorised, no recursion. Brackets inside strings do
    not count (a quote preceded by an odd run of backslashes is escaped)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size == 0:
        return 0
    pos = np.arange(b.size)
    # where the run of backslashes that ends just before each byte starts
    last_other = np.maximum.accumulate(np.where(b != 0x5C, pos, -1))
    before = np.concatenate(([-1], last_other[:-1]))
    run = pos - 1 - before
    quote = (b == 0x22) & (run % 2 == 0)
    inside = (np.cumsum(quote) - quote) % 2 == 1  # a quote itself belongs to no string
    step = ((b == 0x7B) | (b == 0x5B)).astype(np.int64) - ((b == 0x7D) | (b == 0x5D))
    step[inside] = 0
    return int(np.cumsum(step).max())
