"""Helpers several test modules share: test modules never import each other.

Signing keys for "written by someone else" tests; joblib < 0.10 files as
joblib 0.9 wrote them; fresh interpreters for loads that may crash (with
the static scan switched off, to test the loader's own checks); refcount
stability; scikit-learn tree states changed behind a model's back; the
system calls a child makes, through strace.
"""
from __future__ import annotations

import copy
import gc
import io
import os
import pathlib
import pickle
import subprocess
import sys
import types
import zlib

import numpy as np

import firkin
from firkin import _core

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
from allowlist_corpus import _same  # noqa: F401 - the comparison of loaded objects the corpus uses

KEY_A, KEY_B = "firkin-test-key-A (the author)", "firkin-test-key-B (the reader)"


def _zfile(data: bytes, wide: bool = False) -> bytes:
    header = hex(len(data)).encode().ljust(19)
    return b"ZF" + header + (b" " if wide else b"") + zlib.compress(data, 1)


def _old_joblib_module():
    """Stand-ins for joblib 0.9's wrapper classes, pickled under their real names."""
    # the real package first: pickling a class of "joblib.numpy_pickle" imports
    # its parent, whose own import of numpy_pickle fails on a stand-in (a test
    # that ran alone, before anything imported joblib, failed)
    import joblib  # noqa: F401
    mod = types.ModuleType("joblib.numpy_pickle")

    class NDArrayWrapper:
        def __init__(self, filename, subclass, allow_mmap=True):
            self.filename, self.subclass, self.allow_mmap = filename, subclass, allow_mmap

    class ZNDArrayWrapper:
        def __init__(self, filename, init_args, state):
            self.filename, self.init_args, self.state = filename, init_args, state

    for cls in (NDArrayWrapper, ZNDArrayWrapper):
        cls.__module__ = "joblib.numpy_pickle"
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    return mod


def dump_pre010(value, path, monkeypatch, compress=False, protocol=2, wide_header=False):
    """Write `value` as joblib 0.9 did: a main pickle (a ZF file when compressing)
    plus one companion file per array: NAME_01.npy (np.save) or NAME_01.npy.z
    (ZF file of the raw bytes, the array's metadata in the wrapper)."""
    mod = _old_joblib_module()
    monkeypatch.setitem(sys.modules, "joblib.numpy_pickle", mod)
    path = str(path)
    folder, base = os.path.split(path)
    count = [0]

    class OldPickler(pickle._Pickler):
        def save(self, obj, save_persistent_id=True):
            if type(obj) in (np.ndarray, np.matrix):
                count[0] += 1
                name = "%s_%02i.npy" % (base, count[0])
                if compress:
                    name += ".z"
                    _, init_args, state = obj.__reduce__()
                    with open(os.path.join(folder, name), "wb") as f:
                        f.write(_zfile(state[-1]))
                    obj = mod.ZNDArrayWrapper(name, init_args, state[:-1])
                else:
                    np.save(os.path.join(folder, name), obj, allow_pickle=True)
                    obj = mod.NDArrayWrapper(name, type(obj),
                                             allow_mmap=not obj.dtype.hasobject)
            return pickle._Pickler.save(self, obj, save_persistent_id)

    buf = io.BytesIO()
    OldPickler(buf, protocol=protocol).dump(value)
    monkeypatch.undo()
    with open(path, "wb") as f:
        f.write(_zfile(buf.getvalue(), wide_header) if compress else buf.getvalue())


def _refcount_stable(fn, objs, n=50):
    for _ in range(3):
        fn()  # warm caches (interned strings, imports, memo structures)
    gc.collect()
    before = [sys.getrefcount(o) for o in objs]
    for _ in range(n):
        fn()
    gc.collect()
    after = [sys.getrefcount(o) for o in objs]
    return before, after


def _with_tree(est, change):
    c = copy.copy(est)
    vars(c)["tree_"] = _tree_state(est.tree_, change)
    return c


def _set(field, value, node=None):
    def change(state):
        i = _first_split(state) if node is None else node
        state["nodes"][field][i] = value
    return change


def without_scan():
    """firkin with its static scan reporting nothing unsafe: what is refused
    then is refused by the loader's own checks"""
    for fn in ("scan_pickle", "scan_joblib", "scan_joblib_file"):
        real = getattr(_core, fn)
        setattr(_core, fn, lambda *args, real=real: {**real(*args), "globals": [], "unsafe_ops": []})


def _isolated(code: str, expect_crash: bool = False) -> list[str]:
    """Runs code in a fresh interpreter (a crash must fail the test, not kill
    pytest); returns its output lines."""
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], cwd=str(_here()), capture_output=True,
                         text=True, env=env, timeout=900)
    if expect_crash:
        assert res.returncode < 0, (res.returncode, res.stderr[-2000:])
    else:
        assert res.returncode == 0, f"the loader crashed or failed (rc {res.returncode}):\n{res.stderr[-3000:]}"
    return res.stdout.splitlines()


def run_isolated(cases_code: str) -> list[str]:
    """cases_code run in a fresh interpreter with the static scan switched off"""
    return _isolated("import _support\n_support.without_scan()\n" + cases_code)


run_isolated.__wrapped__ = _isolated  # the same, with the scan on


def load_each(blobs, tmp):
    """loads each (label, blob) from a file; prints 'label: outcome'"""
    import os

    for label, blob in blobs:
        path = os.path.join(tmp, "x")
        with open(path, "wb") as f:
            f.write(blob)
        try:
            firkin.load(path)
            print(f"{label}: LOADED", flush=True)
        except firkin.UntrustedTypesError as exc:
            print(f"{label}: refused {' '.join(str(exc).split())}", flush=True)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            print(f"{label}: {type(exc).__name__} {' '.join(str(exc).split())}", flush=True)


def isolated_outcomes(cases_expr: str, tmp, scan: bool = True) -> list[tuple[str, str]]:
    """(label, outcome) of each case load_each loads from `cases_expr` (an
    expression over the imports it names, e.g. "test_x._cases()"), in a fresh
    interpreter with the static scan on or off; one line per case, checked."""
    module = cases_expr.split(".", 1)[0]
    code = (f"import {module}, _support\n"
            f"_support.load_each({cases_expr}, {str(tmp)!r})\n"
            f"print('cases:', len({cases_expr}))\n")
    out = _isolated(code) if scan else run_isolated(code)
    assert out and out[-1] == f"cases: {len(out) - 1}", out[-5:]
    return [tuple(line.split(": ", 1)) for line in out[:-1]]


class _Reduce:
    """Pickles as the given reduce tuple: a model's state, changed, with no
    live object holding it."""

    def __init__(self, rv):
        self.rv = rv

    def __reduce__(self):
        return self.rv


def _tree_state(tree, change):
    state = {k: (v.copy() if isinstance(v, np.ndarray) else v)
             for k, v in tree.__getstate__().items()}
    change(state)
    f, args, _ = tree.__reduce__()
    return _Reduce((f, args, state))


def _first_split(state):
    return int(np.flatnonzero(state["nodes"]["left_child"] != -1)[0])

def _here():
    return pathlib.Path(__file__).parent


class OneWayStream:
    """A stream that cannot seek and hands out at most `step` bytes per read,
    like a socket: whatever follows `data` is never reached without waiting."""

    def __init__(self, data: bytes, step: int = 4096):
        self._data, self._pos, self._step = data, 0, step

    def seekable(self):
        return False

    def read(self, n=-1):
        n = len(self._data) if n is None or n < 0 else n
        out = self._data[self._pos:self._pos + min(n, self._step)]
        self._pos += len(out)
        return out


class PipeSink(io.RawIOBase):
    """A sink that cannot seek, like a pipe: dump writes the streamed layout
    to it; the bytes written are in `data`."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        self.data += b
        return len(b)


def memory_owner(a):
    """What finally holds an array's bytes: its chain of bases followed
    through arrays and memoryviews (None: the array owns them itself)."""
    while isinstance(a, (np.ndarray, memoryview)):
        a = a.obj if isinstance(a, memoryview) else a.base
    return a


def traced_calls(log_dir, calls: str, argv: list[str], expect: str, env=None) -> list[str]:
    """Run `python argv...` under strace -f, tracing `calls` (strace's
    trace= list) and getppid, which the child calls where the part of
    interest starts. The child must print `expect`. Returns strace's lines
    from that getppid on, each starting with the thread id."""
    log = pathlib.Path(log_dir) / "strace.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", f"trace=getppid,{calls}",
                           sys.executable, *argv],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})), timeout=300)
    assert proc.returncode == 0 and expect in proc.stdout, proc.stderr[-3000:]
    lines = log.read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if "getppid" in line)
    return lines[start:]
