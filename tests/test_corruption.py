"""Corrupted files: every damaged firkin file either raises a firkin.FirkinError
subclass or loads data identical to the original -- never a crash, a hang,
another exception type or silently different data.

Each parametrized test builds one kind of valid file (uncompressed, each
codec, many small out-of-band arrays, big arrays, many small chunks) and
damages it at CASES seeded random places spread over every region of the
file (header, pickle stream, buffers, metadata, padding, index, trailer):
one-bit flips, truncations, inserted bytes, overwritten bytes. Padding is not
covered by a checksum and never read (docs/FORMAT.md), so a flip there must
load identical data.

The loop runs in a child process, so a segfault or an abort (a sanitizer
report under .ci/sanitize) fails the test with the case that caused it
instead of killing the test run; a hang is caught by faulthandler in the
child and by a timeout here.

    FIRKIN_CORRUPTION_CASES=5000 FIRKIN_CORRUPTION_SEED=7 python -m pytest tests/test_corruption.py

runs longer, differently seeded campaigns. The fuzz regression inputs
(tests/fuzz/regressions/) are replayed at the end of this file.
"""
from __future__ import annotations

import collections
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest

import firkin

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ_DIR = os.path.join(HERE, "fuzz")
if FUZZ_DIR not in sys.path:
    sys.path.insert(0, FUZZ_DIR)
import fuzzlib  # noqa: E402

CASES = int(os.environ.get("FIRKIN_CORRUPTION_CASES", "300"))  # per kind of file
SEED = int(os.environ.get("FIRKIN_CORRUPTION_SEED", "20240611"))
OPS = ("flip", "truncate", "insert", "overwrite")

_CODECS = firkin.codecs()
KINDS = ["raw", "zlib", "zstd", "lz4", "bz2", "xz", "small_oob", "big", "chunked"]
_NEEDS = {"zstd": "zstd", "lz4": "lz4"}


# ---------------------------------------------------------------- the files

def make_value(kind: str):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    base = {
        "marker": f"original-{kind}",
        "ints": list(range(40)),
        "nested": {"t": (1, 2.5, None, True), "b": b"\x00\x01bytes", "s": "text" * 8},
        "small": np.arange(30, dtype=np.int32),                                # in-band
        "a": np.arange(9000, dtype=np.float64),                                 # 72 KB: out-of-band
        "r": rng.integers(0, 50, size=(90, 100)).astype(np.int64),              # compressible-ish
        "f": np.asfortranarray(rng.random((30, 40))),
    }
    if kind == "small_oob":
        # with OOB_THRESHOLD = 0 every buffer gets its own aligned section
        base["many"] = [np.full(i + 1, i, dtype=dt) for i, dt in
                        enumerate(["u1", "i2", "f4", "f8", "c8", "?", "i8", "u4"] * 5)]
        base["ba"] = bytearray(b"mutable" * 20)
        base["empty"] = np.zeros(0)
    if kind == "big":
        base["big1"] = rng.random(300_000)                  # 2.4 MB: three 1 MiB chunks
        base["big2"] = np.arange(200_000, dtype=np.int32)
    return base


def make_file(kind: str) -> bytes:
    value = make_value(kind)
    meta = {"kind": kind, "n": 1}
    if kind in ("raw", "big"):
        return firkin.dumps(value, metadata=meta)
    if kind == "zlib":
        return firkin.dumps(value, compress=("zlib", 1), metadata=meta, whole_file=False)
    if kind in ("zstd", "lz4", "bz2", "xz"):
        return firkin.dumps(value, compress=(kind, 1), metadata=meta, whole_file=False)
    if kind == "small_oob":
        from firkin import _api
        old = _api.OOB_THRESHOLD
        _api.OOB_THRESHOLD = 0
        try:
            return firkin.dumps(value, metadata=meta)
        finally:
            _api.OOB_THRESHOLD = old
    if kind == "chunked":
        # 4 KiB chunks, zlib, low threshold: many multi-chunk sections, some chunks raw
        return fuzzlib.build_container(value, firkin._core.CODEC_ZLIB, 1, chunk_size=4096,
                                       threshold=512, metadata=meta)
    raise ValueError(kind)


def regions(data: bytes):
    """[(region kind, start, end)] covering every byte of a valid container."""
    r = firkin._core.Reader(data)
    total = r.total_length
    toff = total - 40
    ioff = struct.unpack_from("<Q", data, toff)[0]
    out = [("header", 0, 64)]
    pos = 64
    for s in sorted(r.sections(), key=lambda s: s["offset"]):
        if s["offset"] > pos:
            out.append(("padding", pos, s["offset"]))
        if s["stored"]:
            kind = {"pickle stream": "pickle"}.get(s["kind"], s["kind"])
            out.append((kind, s["offset"], s["offset"] + s["stored"]))
        pos = s["offset"] + s["stored"]
    if ioff > pos:
        out.append(("padding", pos, ioff))
    out.append(("index", ioff, toff))
    out.append(("trailer", toff, total))
    assert sum(e - s for _, s, e in out) == total
    return out


# ---------------------------------------------------------------- comparison

def same(a, b) -> bool:
    """Deep identity of values: types, dtypes, shapes, memory order and bytes."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):  # np.memmap views included
        return (a.dtype == b.dtype and a.shape == b.shape
                and a.flags.f_contiguous == b.flags.f_contiguous
                and a.flags.c_contiguous == b.flags.c_contiguous
                and a.tobytes(order="A") == b.tobytes(order="A"))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


# ---------------------------------------------------------------- the child

def mutate(rng: random.Random, data: bytes, op: str, pos: int) -> tuple[bytes, str]:
    if op == "flip":
        bit = rng.randrange(8)
        return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:], f"bit {bit}"
    if op == "truncate":
        return data[:pos], ""
    n = rng.choice((1, 1, 2, 4, 8, 64))
    junk = rng.choice((bytes(n), b"\xff" * n, bytes(rng.randrange(256) for _ in range(n))))
    if op == "insert":
        return data[:pos] + junk + data[pos:], junk[:8].hex()
    return data[:pos] + junk + data[pos + len(junk):], junk[:8].hex()  # overwrite (may extend)


def run_campaign(kind: str, cases: int, seed: int, workdir: str) -> dict:
    import faulthandler

    data = make_file(kind)
    value = make_value(kind)
    assert same(firkin.loads(data), value), "the valid file does not round-trip"
    regs = regions(data)
    by_kind = collections.defaultdict(list)
    for rk, s, e in regs:
        by_kind[rk].append((s, e))
    kinds = sorted(by_kind)
    rng = random.Random(f"{seed}-{kind}")
    path = os.path.join(workdir, f"corrupt-{kind}.fk")
    stats = collections.Counter()
    failures = []
    for i in range(cases):
        rk = kinds[i % len(kinds)]
        s, e = rng.choice(by_kind[rk])
        pos = rng.randrange(s, e)
        op = "flip" if rk == "padding" and i % 2 == 0 else rng.choice(OPS)
        bad, detail = mutate(rng, data, op, pos)
        case = f"case {i}: {op} in {rk} at {pos} {detail} ({len(bad)} bytes)"
        print(case, flush=True)
        faulthandler.dump_traceback_later(30, exit=True)
        routes = ["loads"]
        if i % 3 == 0:
            routes += ["load", "load_mmap_verify"]
            with open(path, "wb") as f:
                f.write(bad)
        for route in routes:
            try:
                if route == "loads":
                    got = firkin.loads(bad)
                elif route == "load":
                    got = firkin.load(path)
                else:
                    got = firkin.load(path, mmap_mode="r", verify=True)
            except firkin.FirkinError as exc:
                outcome = type(exc).__name__
            except BaseException as exc:  # noqa: BLE001 - any other type is a finding
                outcome = "WRONG " + type(exc).__name__
                failures.append(f"{case} [{route}]: {type(exc).__name__}: {str(exc)[:300]}")
            else:
                if same(got, value):
                    outcome = "identical"
                else:
                    outcome = "WRONG silently different"
                    failures.append(f"{case} [{route}]: loaded data differs from the original")
                del got
            if rk == "padding" and op == "flip" and outcome != "identical":
                failures.append(f"{case} [{route}]: a flip in padding gave {outcome}, not identical data")
            stats[f"{rk}/{outcome}"] += 1
        faulthandler.cancel_dump_traceback_later()
    return {"kind": kind, "cases": cases, "size": len(data),
            "regions": {k: len(v) for k, v in by_kind.items()},
            "stats": dict(stats), "failures": failures}


def _child_main(argv):
    kind, cases, seed, workdir, out = argv
    res = run_campaign(kind, int(cases), int(seed), workdir)
    with open(out, "w") as f:
        json.dump(res, f)


# ---------------------------------------------------------------- the tests

def _kind_param(kind):
    if kind in _NEEDS and _NEEDS[kind] not in _CODECS:
        return pytest.param(kind, marks=pytest.mark.skip(reason=f"this build lacks {kind}"))
    return kind


@pytest.mark.parametrize("kind", [_kind_param(k) for k in KINDS])
def test_corruption_never_crashes_or_lies(kind, tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, os.path.abspath(__file__), kind, str(CASES), str(SEED), str(tmp_path), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(240, CASES // 2))
    last = proc.stdout.strip().splitlines()[-1:] or ["(before the first case)"]
    assert proc.returncode == 0, (
        f"the corruption child died with status {proc.returncode} at {last[0]}\n"
        f"stderr:\n{proc.stderr[-4000:]}")
    res = json.loads(out.read_text())
    assert not res["failures"], "\n".join(res["failures"][:30])
    # every region of the file was hit, and both outcomes happened
    hit = {k.split("/")[0] for k in res["stats"]}
    assert hit == set(res["regions"]), (hit, res["regions"])
    assert {"header", "pickle", "metadata", "index", "trailer"} <= hit
    if kind not in ("zlib", "zstd", "lz4", "bz2", "xz"):  # compressed buffers may be tiny; others have some
        assert "buffer" in hit
    outcomes = collections.Counter()
    for k, n in res["stats"].items():
        outcomes[k.split("/", 1)[1]] += n
    assert outcomes["ChecksumError"] > 0 and outcomes["FormatError"] > 0, outcomes
    assert sum(outcomes.values()) >= CASES


def test_regions_cover_padding():
    """The files used above do have padding between sections (so the
    'padding must load identical data' rule is exercised)."""
    for kind in ("raw", "small_oob", "big"):
        assert any(k == "padding" for k, _, _ in regions(make_file(kind))), kind


def test_every_kind_of_outcome_is_firkin_error_subclass():
    assert issubclass(firkin.ChecksumError, firkin.FormatError)
    assert issubclass(firkin.FormatError, firkin.FirkinError)
    assert issubclass(firkin.FormatError, ValueError)


# ---------------------------------------------------------------- fuzz regressions

REG_DIR = os.path.join(FUZZ_DIR, "regressions")


def _regressions(target):
    d = os.path.join(REG_DIR, target)
    if not os.path.isdir(d):
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d) if not n.startswith("."))


def _replay(target, path):
    """Replay one saved fuzz input in a child (it once crashed the harness)."""
    code = ("import sys; sys.path.insert(0, %r); import fuzzlib; "
            "fuzzlib.fuzz_%s(open(%r, 'rb').read()); print('ok')" % (FUZZ_DIR, target, path))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", _regressions("reader") or [pytest.param(None, marks=pytest.mark.skip(
    reason="no reader regression inputs saved"))], ids=lambda p: os.path.basename(p) if p else "none")
def test_fuzz_regression_reader(path):
    """Saved crash inputs of the reader harness: the exact harness work runs
    clean, and the container loads with a FirkinError (or loads fine)."""
    proc = _replay("reader", path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    container = fuzzlib.decode_reader_input(open(path, "rb").read())
    code = ("import sys, firkin; data = open(%r, 'rb').read()\n"
            "try:\n    firkin.loads(data)\nexcept firkin.FirkinError:\n    pass\nprint('ok')")
    with tempfile.NamedTemporaryFile(suffix=".fk", delete=False) as f:
        f.write(container)
    try:
        proc = subprocess.run([sys.executable, "-c", code % f.name], capture_output=True, text=True,
                              timeout=120)
    finally:
        os.unlink(f.name)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("path", _regressions("scan") or [pytest.param(None, marks=pytest.mark.skip(
    reason="no scan regression inputs saved"))], ids=lambda p: os.path.basename(p) if p else "none")
def test_fuzz_regression_scan(path):
    proc = _replay("scan", path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


if __name__ == "__main__":
    _child_main(sys.argv[1:])


@pytest.mark.parametrize("compress", [0, 3, "zstd"])
@pytest.mark.parametrize("threads", [1, 2])
def test_file_cut_while_workers_read_it(tmp_path, threads, compress):
    """Array chunks, raw or compressed, are read by the pool's threads,
    which verify and decode them as they go: a file cut short under a load
    in progress is a FormatError that says so, wherever the cut lands, not
    garbage or a crash."""
    from firkin import _source

    if compress == "zstd" and "zstd" not in firkin.codecs():  # the CI build without it
        pytest.skip(f"{compress} is not in this build")
    # 24 MiB: 24 chunks, enough for the pool; noise keeps the compressed
    # chunks from being tiny
    a = np.arange(3 << 20, dtype=np.float64) + np.random.default_rng(0).random(3 << 20)
    path = tmp_path / "cut.firkin"
    firkin.dump({"a": a}, path, compress=compress)
    np.testing.assert_array_equal(firkin.load(path, threads=threads)["a"], a)
    size = path.stat().st_size
    for cut in (size // 2, size // 2 + 12345, 4096):
        with open(path, "r+b") as f:
            reader = _source.open_reader(f.fileno(), str(path))
            f.truncate(cut)
            with pytest.raises(firkin.FormatError, match="truncated"):
                reader.read_buffers(verify=True, threads=threads)
        firkin.dump({"a": a}, path, compress=compress)
