"""Who is measured: every contender is one registered function that, in the
measuring process, turns (value or nothing, path, spec) into the operation
to time. A dumper writes the file its loaders read; `applies` says for which
workloads a contender runs. The suites and the report take the lists from
here (dumpers_for, loaders_for), so a new contender is one function."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from workloads import WORKLOADS


@dataclass
class Contender:
    name: str
    op: str  # "dump" or "load"
    make: Callable  # (value, path, spec) -> the operation, a function of no arguments
    reads: str | None  # load: the dumper whose file it reads
    applies: Callable[[str], bool]


DUMPERS: dict[str, Contender] = {}
LOADERS: dict[str, Contender] = {}
LIB: dict[tuple, Callable] = {}  # ("firkin"|"joblib", op) -> make, for explicit compress/threads


def _everywhere(workload: str) -> bool:
    return True


def _array_only(workload: str) -> bool:
    return WORKLOADS[workload].array


#: workloads where the cost of the trust policy is shown (firkin vs firkin-trusted)
POLICY_WORKLOADS = {"forest", "tfidf", "pipeline", "dataframe"}


def dumper(name: str, applies=_everywhere):
    def register(make):
        DUMPERS[name] = Contender(name, "dump", make, None, applies)
        return make
    return register


def loader(name: str, reads: str, applies=_everywhere):
    def register(make):
        LOADERS[name] = Contender(name, "load", make, reads, applies)
        return make
    return register


def lib(name: str, op: str):
    def register(make):
        LIB[(name, op)] = make
        return make
    return register


def dumpers_for(workload: str) -> list[str]:
    return [n for n, c in DUMPERS.items() if c.applies(workload)]


def loaders_for(workload: str) -> list[str]:
    return [n for n, c in LOADERS.items() if c.applies(workload)]


def loader_file(contender: str) -> str:
    """The dumper whose file a contender's load reads (a dumper reads its own)."""
    c = LOADERS.get(contender)
    return c.reads if c is not None else contender


def make(spec: dict, value):
    """The operation of one measurement (in the measuring process)."""
    op, path = spec["op"], spec["path"]
    if spec.get("lib") is not None:
        return LIB[(spec["lib"], op)](value, path, spec)
    table = DUMPERS if op == "dump" else LOADERS
    return table[spec["contender"]].make(value, path, spec)


# ------------------------------------------------------------------ helpers

def _fsync_dir(dirname: str) -> None:
    fd = os.open(dirname, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: str, write, durable: bool = True) -> None:
    """Temp file in the same directory, write, (flush, fsync,) rename, (fsync
    the directory): what firkin.dump does with durable=True / False."""
    dirname = os.path.dirname(path)
    tmp = os.path.join(dirname, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(dirname)


# ------------------------------------------------------------------ dumpers

@dumper("firkin")
def _firkin_dump(value, path, spec):
    import firkin

    return lambda: firkin.dump(value, path)


@dumper("firkin-nodurable")
def _firkin_dump_nodurable(value, path, spec):
    import firkin

    return lambda: firkin.dump(value, path, durable=False)


#: workloads measured also as LOOP dumps in one process (a user saving many
#: small models, each to its own file): the fixed costs of a first call in a
#: fresh interpreter (OpenSSL's first HMAC, the key file, the first JSON
#: encoding) are paid once there, not per dump
LOOP_WORKLOADS = {"pipeline"}
#: dumps per LOOP measurement; its times are the whole loop's
LOOP = 100


def _loop_paths(path: str) -> list[str]:
    """Fresh files for one loop: the last is `path` itself (the loaders' and
    the size table's file); earlier runs' leftovers are removed first."""
    paths = [f"{path}.{i}" for i in range(LOOP - 1)] + [path]
    for p in paths[:-1]:
        if os.path.exists(p):
            os.unlink(p)
    return paths


@dumper("firkin-nodurable-x100", lambda w: w in LOOP_WORKLOADS)
def _firkin_dump_nodurable_loop(value, path, spec):
    import firkin

    paths = _loop_paths(path)
    return lambda: [firkin.dump(value, p, durable=False) for p in paths]


@dumper("joblib-x100", lambda w: w in LOOP_WORKLOADS)
def _joblib_dump_loop(value, path, spec):
    import joblib

    paths = _loop_paths(path)
    return lambda: [joblib.dump(value, p) for p in paths]


@dumper("joblib")
def _joblib_dump(value, path, spec):
    import joblib

    return lambda: joblib.dump(value, path)


@dumper("pickle5")
def _pickle_dump(value, path, spec):
    import pickle

    return lambda: _atomic_write(path, lambda f: pickle.Pickler(f, protocol=5).dump(value))


@dumper("pickle5-nosync")
def _pickle_dump_nosync(value, path, spec):
    import pickle

    return lambda: _atomic_write(path, lambda f: pickle.Pickler(f, protocol=5).dump(value),
                                 durable=False)


@dumper("raw-write", _array_only)
def _raw_write(value, path, spec):
    return lambda: _atomic_write(path, lambda f: f.write(value.data))


@dumper("firkin-progress", _array_only)
def _firkin_dump_progress(value, path, spec):
    import firkin
    import tqdm.auto  # noqa: F401  (imported outside the timed region)

    return lambda: firkin.dump(value, path, progress=True)


@dumper("firkin-noprogress", _array_only)
def _firkin_dump_noprogress(value, path, spec):
    import firkin

    return lambda: firkin.dump(value, path, progress=False)


# ------------------------------------------------------------------ loaders

@loader("firkin", "firkin")
def _firkin_load(value, path, spec):
    import firkin

    return lambda: firkin.load(path)


@loader("firkin-mmap", "firkin")
def _firkin_load_mmap(value, path, spec):
    import firkin

    return lambda: firkin.load(path, mmap_mode="r")


@loader("joblib", "joblib")
def _joblib_load(value, path, spec):
    import joblib

    return lambda: joblib.load(path)


@loader("joblib-mmap", "joblib")
def _joblib_load_mmap(value, path, spec):
    import joblib

    return lambda: joblib.load(path, mmap_mode="r")


@loader("pickle5", "pickle5")
def _pickle_load(value, path, spec):
    import pickle

    def fn():
        with open(path, "rb") as f:
            return pickle.load(f)
    return fn


def _readinto(path, out):
    mv = memoryview(out).cast("B")
    with open(path, "rb", buffering=0) as f:
        pos = 0
        while pos < len(mv):
            n = f.readinto(mv[pos:])
            if not n:
                raise EOFError(path)
            pos += n
    return out


@loader("raw-readinto-prefaulted", "raw-write", _array_only)
def _raw_prefaulted(value, path, spec):
    import numpy as np

    buf = np.empty(os.path.getsize(path) // 8, dtype=np.float64)
    buf.fill(1.0)  # allocate and touch every page outside the timed region
    return lambda: _readinto(path, buf)


@loader("raw-readinto-alloc", "raw-write", _array_only)
def _raw_alloc(value, path, spec):
    import numpy as np

    return lambda: _readinto(path, np.empty(os.path.getsize(path) // 8, dtype=np.float64))


@loader("firkin-noverify", "firkin", _array_only)
def _firkin_load_noverify(value, path, spec):
    import firkin

    return lambda: firkin.load(path, verify=False)


@loader("firkin-trusted", "firkin", lambda w: w in POLICY_WORKLOADS)
def _firkin_load_trusted(value, path, spec):
    import firkin

    return lambda: firkin.load(path, trusted=True)


@loader("firkin-progress", "firkin-progress", _array_only)
def _firkin_load_progress(value, path, spec):
    import firkin
    import tqdm.auto  # noqa: F401

    return lambda: firkin.load(path, progress=True)


@loader("firkin-noprogress", "firkin-noprogress", _array_only)
def _firkin_load_noprogress(value, path, spec):
    import firkin

    return lambda: firkin.load(path, progress=False)


@loader("firkin-joblibfile", "joblib")
def _firkin_load_joblib(value, path, spec):
    import firkin
    import firkin._joblib  # imported outside the timed region, as joblib is

    return lambda: firkin.load(path)


# ------------------------------------------------------------------ compression suite, scaling

def _compress(spec):
    compress = spec.get("compress", 0)
    return tuple(compress) if isinstance(compress, list) else compress


@lib("firkin", "dump")
def _lib_firkin_dump(value, path, spec):
    import firkin

    compress, threads = _compress(spec), spec.get("threads")
    return lambda: firkin.dump(value, path, compress=compress, threads=threads)


@lib("firkin", "load")
def _lib_firkin_load(value, path, spec):
    import firkin

    threads = spec.get("threads")
    return lambda: firkin.load(path, threads=threads)


@lib("joblib", "dump")
def _lib_joblib_dump(value, path, spec):
    import joblib

    compress = _compress(spec)
    return lambda: joblib.dump(value, path, compress=compress)


@lib("joblib", "load")
def _lib_joblib_load(value, path, spec):
    import joblib

    return lambda: joblib.load(path)
