"""Reliability harnesses: kill -9 at random moments of a big dump, full disks
and file size limits, leaks over many cycles, and threads.

Slow tests are marked `slow` (registered below) but stay in the default run:
CI runs everything. `python -m pytest tests/test_reliability.py -m "not slow"`
skips them locally. Knobs (environment):

  FIRKIN_KILLS=30        kills in the kill test (>= 30 for CI)
  FIRKIN_KILL_MB=200     size of the object dumped in the kill test
  FIRKIN_LEAK_CYCLES=10000  dump/load cycles in the RSS test

Under .ci/variant --sanitize (FIRKIN_TEST_SANITIZED=1) the kill test is
smaller (10 kills of 40 MB) and the RSS test is skipped.

docs/TESTING.md has the commands.
"""
from __future__ import annotations

import collections
import errno
import io
import os
import random
import resource
import select
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import firkin

from _support import _refcount_stable

HERE = os.path.dirname(os.path.abspath(__file__))
# under .ci/variant --sanitize: smaller runs (the point there is memory errors,
# and ASan's quarantine makes RSS meaningless)
SANITIZED = bool(os.environ.get("FIRKIN_TEST_SANITIZED"))
TEMP = firkin.TEMP_SUFFIX
CODECS = firkin.codecs()
FAST_CODEC = "lz4" if "lz4" in CODECS else ("zstd" if "zstd" in CODECS else "zlib")

def _no_core_dumps():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def temps(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(TEMP))


def run_child(code: str, *args, timeout=300, env=None, **kwargs):
    """Run `code` in a fresh interpreter (crash guard: a segfault is a failed
    test, not a dead test run)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, preexec_fn=_no_core_dumps,
                          **kwargs)


def _fail_child(proc, what="child"):
    return (f"{what} exited with status {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
            f"stderr:\n{proc.stderr[-5000:]}")


# =====================================================================
# 1. kill -9 at random moments of a ~200 MB dump
# =====================================================================

# Shared by the parent (to know what the two objects look like) and the
# dumping child: a big object built quickly and deterministically from a seed.
KILL_COMMON = textwrap.dedent("""
    import numpy as np

    N_ARRAYS = 40

    def build(seed, mb):
        per = max(1, mb * 2**20 // N_ARRAYS // 8)
        base = np.arange(per, dtype=np.float64)
        arrays = {f"a{i:02d}": base * (seed + 1) + i for i in range(N_ARRAYS)}
        big = {f"key{j}": (j, str(j * (seed + 7))) for j in range(100_000)}
        return {"marker": f"object-{seed}", "arrays": arrays, "big": big}

    def digest(obj, crc):
        arrays = obj["arrays"]
        big = obj["big"]
        sample = [big[f"key{j}"] for j in (0, 1, 4567, 99_999)]
        return (obj["marker"], len(arrays), tuple((k, a.dtype.str, a.shape, crc(a))
                                                  for k, a in sorted(arrays.items())),
                len(big), tuple(sample))
""")

KILL_CHILD = KILL_COMMON + textwrap.dedent("""
    import sys, firkin
    target, seed, mb, compress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    obj = build(seed, mb)
    comp = 0 if compress == "0" else (compress, 1)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("no go")
    firkin.dump(obj, target, compress=comp)
    print("done", flush=True)
""")


def _kill_namespace():
    ns = {}
    exec(KILL_COMMON, ns)
    return ns


class _Dumper:
    """A child process that builds object `seed`, then (on go()) dumps it over
    `target`. Building overlaps with the parent checking the previous result."""

    def __init__(self, target, seed, mb, compress, durable="1"):
        # durable= reaches the child's dump through its process-wide default
        env = dict(os.environ, FIRKIN_DURABLE=durable)
        self.proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(target), str(seed), str(mb),
                                      compress], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, preexec_fn=_no_core_dumps, env=env)

    def go(self):
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise AssertionError(f"dump child failed to start: {line!r} {self.proc.stderr.read()[-3000:]!r}")
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        self.t_go = time.monotonic()
        return self

    def wait_done(self, timeout=300):
        """Wait for the dump; how long it took up to its "done" line (not the
        child's exit, which frees a big object and can take as long)."""
        line = self.proc.stdout.readline()
        took = time.monotonic() - self.t_go
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0 and line.strip() == b"done", err[-3000:]
        return took

    def kill_after(self, delay):
        """SIGKILL `delay` seconds after go(). Returns None if the dump was
        still running then, else how long it took (it printed "done" first)."""
        deadline = self.t_go + delay
        fd = self.proc.stdout.fileno()
        finished = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if ready:  # "done" (or EOF): the child is past the dump
                finished = time.monotonic() - self.t_go
                break
        self.proc.send_signal(signal.SIGKILL)
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == -signal.SIGKILL or out.strip().endswith(b"done"), \
            f"dump child failed (status {self.proc.returncode}): {err[-3000:]!r}"
        if out.strip().endswith(b"done"):
            return finished if finished is not None else delay
        return None


@pytest.mark.slow
@pytest.mark.parametrize("durable", ["1", "0"])
def test_sigkill_at_random_moments_never_tears_the_target(tmp_path, durable):
    """Both durable modes: skipping the fsyncs must not weaken what a killed
    process leaves behind (the previous file or the new one, never a torn one)."""
    kills_wanted = int(os.environ.get("FIRKIN_KILLS", "10" if SANITIZED else "30"))
    mb = int(os.environ.get("FIRKIN_KILL_MB", "40" if SANITIZED else "200"))
    ns = _kill_namespace()
    crc = firkin._core.crc32c
    # three objects: after a kill the target holds the previous or the new one,
    # and the next dump (already building) writes the third, unlike both
    digests = {seed: ns["digest"](ns["build"](seed, mb), crc) for seed in (1, 2, 3)}
    target = tmp_path / "model.fk"

    def current():
        got = firkin.load(target)  # a torn file raises here: that fails the test
        d = ns["digest"](got, crc)
        del got
        for seed, want in digests.items():
            if d == want:
                return seed
        raise AssertionError(f"{target} holds neither the previous nor the new object: {d[0]}")

    # calibrate: how long a complete dump takes, uncompressed and compressed.
    # Dumps that finish before their kill refine it (the first runs are often
    # slower: cold caches, a busy machine), so kills keep landing inside dumps.
    seen = {"0": [], FAST_CODEC: []}
    for seed, comp in ((1, "0"), (2, FAST_CODEC), (1, "0"), (2, FAST_CODEC), (1, "0")):
        seen[comp].append(_Dumper(target, seed, mb, comp, durable).go().wait_done())
        assert current() == seed
        assert temps(tmp_path) == []
    held = 1

    def duration(comp):
        return statistics.median(seen[comp][-5:])

    rng = random.Random(1234)
    phases = collections.Counter()
    kills = attempts = 0
    nxt = _Dumper(target, 2, mb, FAST_CODEC, durable)
    while kills < kills_wanted:
        attempts += 1
        assert attempts < kills_wanted * 3, f"only {kills} kills hit a running dump: {phases}"
        d, comp, new = nxt, nxt.proc.args[-1], int(nxt.proc.args[-3])
        assert new != held
        d.go()
        # random moments over the whole dump, a quarter of them near its end (the rename)
        dur = duration(comp)
        delay = rng.uniform(0.85 * dur, 1.05 * dur) if attempts % 4 == 0 else rng.uniform(0.0, dur)
        took = d.kill_after(delay)
        killed_running = took is None
        if not killed_running:
            seen[comp].append(took)
        mine = [n for n in temps(tmp_path) if f".{d.proc.pid}." in n]
        # the next child builds its object while this one's result is checked
        nxt = _Dumper(target, 6 - held - new, mb, "0" if attempts % 2 else FAST_CODEC,
                      durable)  # half compressed
        now = current()
        if not killed_running:
            phases["finished before the kill"] += 1
            assert now == new
        else:
            kills += 1
            if now == new and mine and durable == "0":
                # durable=False swaps the old file into the temporary name and
                # then removes it (firkin._atomic.replace): killed in between,
                # the previous object is left there, whole, for the next dump's
                # stale-temp cleanup (checked below)
                phases["after the swap, before the old file was removed"] += 1
                assert len(mine) == 1
                left = firkin.load(tmp_path / mine[0])
                assert ns["digest"](left, crc) == digests[held]
                del left
            elif now == new:
                phases["after rename"] += 1
                assert not mine
            elif mine:
                phases["before rename, temp file written"] += 1
            else:
                phases["before the temp file existed"] += 1
        held = now
        assert len(temps(tmp_path)) <= 3, temps(tmp_path)  # stale temps are cleaned up as dumps start

    # the next successful dump removes every stale temp file
    last = int(nxt.proc.args[-3])
    nxt.go().wait_done()
    assert current() == last
    assert temps(tmp_path) == [], temps(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.fk"]
    print(f"\nkill test (durable={durable}): {kills} kills in {attempts} dumps of {mb} MB "
          f"(a dump takes {duration('0'):.2f}s raw, {duration(FAST_CODEC):.2f}s {FAST_CODEC}); "
          f"phases: {dict(phases)}; torn files: 0")
    assert phases["before rename, temp file written"] > 0


# =====================================================================
# 2. full disks, file size limits, read-only file systems
# =====================================================================

FSIZE_CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    import numpy as np
    import firkin
    target, limit, comp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    value = {"version": "new", "arr": np.random.default_rng(0).random(1_000_000),
             "more": [np.arange(50_000)] * 3}
    try:
        firkin.dump(value, target, compress=0 if comp == "0" else (comp, 1))
    except OSError as exc:
        print("OSError", type(exc).__name__, exc.errno, isinstance(exc, firkin.FirkinError),
              exc.filename == target, exc)
    except BaseException as exc:
        print("other", type(exc).__name__, exc)
    else:
        print("no error")
    print(sorted(os.listdir(os.path.dirname(target))))
""")


def _old(path):
    firkin.dump({"version": "old", "arr": np.arange(1000)}, path)
    return path.read_bytes()


@pytest.mark.parametrize("limit", [0, 100, 70_000, 3_000_000])
@pytest.mark.parametrize("comp", ["0", FAST_CODEC])
def test_file_size_limit_raises_oserror_and_keeps_target(tmp_path, limit, comp):
    target = tmp_path / "t.fk"
    before = _old(target)
    proc = run_child(FSIZE_CHILD, target, limit, comp)
    assert proc.returncode == 0, _fail_child(proc)
    first, listing = proc.stdout.splitlines()[:2]
    # the error names the user's file, not the temporary one (gone by then)
    assert first.startswith(f"OSError OSError {errno.EFBIG} False True"), proc.stdout
    assert listing == "['t.fk']", proc.stdout   # no temp file left
    assert target.read_bytes() == before
    assert firkin.load(target)["version"] == "old"


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_enospc_raises_oserror_and_keeps_target(small_tmpfs):
    target = small_tmpfs / "t.fk"
    before = _old(target)
    for value in ({"version": "new", "arr": np.random.default_rng(0).random(1_000_000)},  # 8 MB
                  {"version": "new", "many": [np.random.default_rng(i).random(20_000) for i in range(40)]}):
        for comp in (0, (FAST_CODEC, 1)):
            with pytest.raises(OSError) as info:
                firkin.dump(value, target, compress=comp)
            assert info.value.errno == errno.ENOSPC, info.value
            assert info.value.filename == str(target), info.value
            assert not isinstance(info.value, firkin.FirkinError)
            assert sorted(os.listdir(small_tmpfs)) == ["t.fk"]  # no temp file left
            assert target.read_bytes() == before
    # the disk is usable again afterwards: a small dump still works
    firkin.dump({"version": "small"}, target)
    assert firkin.load(target) == {"version": "small"}
    assert sorted(os.listdir(small_tmpfs)) == ["t.fk"]


def test_disk_full_via_file_object(small_tmpfs):
    with open(small_tmpfs / "f.bin", "wb", buffering=0) as f:  # nothing left to flush at close
        with pytest.raises(OSError) as info:
            firkin.dump(np.random.default_rng(0).random(1_000_000), f)
    assert info.value.errno == errno.ENOSPC


def test_read_only_filesystem(small_tmpfs):
    target = small_tmpfs / "t.fk"
    before = _old(target)
    res = subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot remount read-only: {res.stderr.strip()}")
    try:
        with pytest.raises(OSError) as info:
            firkin.dump({"version": "new"}, target)
        assert info.value.errno == errno.EROFS
        assert target.read_bytes() == before
        assert firkin.load(target)["version"] == "old"
        assert firkin.load(target, mmap_mode="r")["version"] == "old"
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_tmpfs)], capture_output=True)
    assert sorted(os.listdir(small_tmpfs)) == ["t.fk"]


def test_missing_parent_error_names_the_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(FileNotFoundError) as info:
        firkin.dump([1], missing / "x.fk")
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        firkin.load(missing / "x.fk")
    assert "x.fk" in str(info.value)


# =====================================================================
# 5. leaks: refcounts, RSS over 10,000 cycles
# =====================================================================

@pytest.mark.parametrize("whole_file", [False, None], ids=["chunks", "whole-file"])
@pytest.mark.parametrize("comp", [("zlib", 1), (FAST_CODEC, 1), ("bz2", 1)], ids=lambda c: c[0])
def test_refcount_compressed_paths(tmp_path, comp, whole_file):
    """Compressed dump/load (worker threads, Python codecs; whole-file
    compression for joblib's named methods) keep no references."""
    # several 1 MiB chunks (the worker pool runs); bz2 runs in Python and is slow: keep it small
    arr = np.arange(20_000 if comp[0] == "bz2" else 300_000, dtype=np.float64)
    small = np.arange(10)
    payload = {"s": "x" * 50, "l": [1, 2]}
    obj = {"arr": arr, "small": small, "payload": payload}
    meta = {"user": "value"}
    p = tmp_path / "c.fk"

    def cycle():
        firkin.dump(obj, p, compress=comp, metadata=meta, whole_file=whole_file)
        out = firkin.load(p)
        data = firkin.dumps(obj, compress=comp, whole_file=whole_file)
        out2 = firkin.loads(data)
        with pytest.warns(UserWarning):
            out3 = firkin.load(p, mmap_mode="r")
        del out, out2, out3, data

    before, after = _refcount_stable(cycle, [obj, arr, small, payload, meta], n=10)
    assert after == before


def test_refcount_file_objects_and_metadata(tmp_path):
    arr = np.arange(100_000)
    obj = [arr, {"k": "v"}]
    meta = {"who": "me"}
    p = tmp_path / "f.fk"
    bio = io.BytesIO()
    fh = open(p, "w+b")

    def cycle():
        bio.seek(0)
        bio.truncate()
        firkin.dump(obj, bio, metadata=meta)
        bio.seek(0)
        out = firkin.load(bio)
        fh.seek(0)
        fh.truncate()
        firkin.dump(obj, fh, metadata=meta)
        fh.flush()
        fh.seek(0)
        out2 = firkin.load(fh)
        firkin.load_metadata(p)
        del out, out2

    try:
        before, after = _refcount_stable(cycle, [obj, arr, meta, bio, fh], n=30)
    finally:
        fh.close()
    assert after == before


def test_refcount_input_bytes_of_loads_valid_and_corrupt():
    """loads() of good and of damaged data hands back every reference to the
    input (the Reader's buffer export is released on every path)."""
    good = firkin.dumps({"a": np.arange(100_000), "b": [1, 2, 3]})
    bad_crc = bytearray(good)
    bad_crc[200] ^= 1                     # pickle stream or buffer: ChecksumError
    bad_crc = bytes(bad_crc)
    truncated = good[:-7]
    garbage = b"\x89FRK\r\n\x1a\n" + bytes(200)
    ba = bytearray(good)
    mv = memoryview(good)
    inputs = [good, bad_crc, truncated, garbage, ba, mv]

    def cycle():
        for data in inputs:
            try:
                out = firkin.loads(data)
            except firkin.FirkinError:
                pass
            else:
                del out

    before, after = _refcount_stable(cycle, inputs, n=30)
    assert after == before
    ba.append(0)  # no export left on the bytearray: it can be resized
    ba.pop()
    mv.release()


def test_refcount_failing_load_paths(tmp_path):
    """A load that fails (checksum error, bad mmap_mode, foreign garbage) leaks nothing."""
    p = tmp_path / "x.fk"
    firkin.dump({"a": np.arange(100_000)}, p)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x10    # inside the array's buffer
    bad = tmp_path / "bad.fk"
    bad.write_bytes(bytes(raw))
    name = str(bad)

    def cycle():
        for mode, verify in ((None, None), ("r", True), (None, True)):
            try:
                firkin.load(name, mmap_mode=mode, verify=verify)
            except firkin.ChecksumError:
                pass
            else:
                raise AssertionError("corruption not detected")
        with pytest.raises(ValueError):
            firkin.load(name, mmap_mode="bogus")

    before, after = _refcount_stable(cycle, [name], n=30)
    assert after == before


LEAK_CHILD = textwrap.dedent("""
    import gc, io, os, sys, tempfile, time
    import numpy as np
    import firkin

    cycles, workdir, codec = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    rng = np.random.default_rng(0)
    value = {"ints": list(range(200)), "text": "t" * 300, "nested": {"a": (1, 2.0, None), "b": b"x" * 100},
             "small": np.arange(500, dtype=np.int32), "mid": rng.random((40, 50)),
             "oob": np.arange(12_000, dtype=np.float64)}          # 96 KB: out-of-band
    path = os.path.join(workdir, "leak.fk")
    comps = [0, (codec, 1)]
    bad = bytearray(firkin.dumps(value))
    bad[100] ^= 1
    bad = bytes(bad)

    def one(i):
        comp = comps[i % 2]
        k = i % 10
        if k < 7:                                   # in memory
            out = firkin.loads(firkin.dumps(value, compress=comp))
        elif k < 9:                                 # through a file (atomic dump)
            firkin.dump(value, path, compress=comp)
            out = firkin.load(path, mmap_mode="r" if (i // 10) % 2 and comp == 0 else None)
        else:                                       # file objects, and a failing load
            bio = io.BytesIO()
            firkin.dump(value, bio, compress=comp)
            bio.seek(0)
            out = firkin.load(bio)
            try:
                firkin.loads(bad)
            except firkin.ChecksumError:
                pass
        assert out["oob"][-1] == 11_999.0
        del out

    for i in range(500):      # warm-up: caches, arenas, interned strings, the pool
        one(i)
    gc.collect()
    start, t0 = rss(), time.perf_counter()
    samples = []
    for i in range(cycles):
        one(i)
        if i % 1000 == 999:
            gc.collect()
            samples.append(rss() - start)
    gc.collect()
    print(cycles, rss() - start, time.perf_counter() - t0, samples)
""")


@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_rss_stable_over_10000_cycles(tmp_path):
    cycles = int(os.environ.get("FIRKIN_LEAK_CYCLES", "10000"))
    workdir = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else str(tmp_path)
    workdir = os.path.join(workdir, f"firkin-leak-{os.getpid()}")
    os.makedirs(workdir, exist_ok=True)
    try:
        proc = run_child(LEAK_CHILD, cycles, workdir, FAST_CODEC, timeout=600)
    finally:
        for n in os.listdir(workdir):
            os.unlink(os.path.join(workdir, n))
        os.rmdir(workdir)
    assert proc.returncode == 0, _fail_child(proc)
    n, growth, secs, samples = proc.stdout.split(maxsplit=3)
    growth = int(growth)
    print(f"\nRSS over {n} cycles: {growth / 2**20:+.2f} MiB in {float(secs):.1f}s; "
          f"per 1000 cycles: {[round(s / 2**20, 2) for s in eval(samples)]}")
    assert growth < 2 * 2**20, f"RSS grew by {growth / 2**20:.2f} MiB over {n} cycles: {samples}"


# =====================================================================
# 6. threads
# =====================================================================

def _value(i):
    return {"id": i, "arr": np.arange(100_000, dtype=np.float64) * i,
            "ints": np.arange(i, i + 500, dtype=np.int64), "text": f"value {i}" * 10,
            "list": [np.full(20_000, i, np.int32), {"k": i}]}


def _check_value(got, i):
    assert got["id"] == i
    np.testing.assert_array_equal(got["arr"], np.arange(100_000, dtype=np.float64) * i)
    np.testing.assert_array_equal(got["ints"], np.arange(i, i + 500, dtype=np.int64))
    assert got["text"] == f"value {i}" * 10
    np.testing.assert_array_equal(got["list"][0], np.full(20_000, i, np.int32))
    assert got["list"][1] == {"k": i}


def _run_threads(n, target):
    errors = []
    barrier = threading.Barrier(n)

    def wrap(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append((i, exc))

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    assert not any(t.is_alive() for t in ts), "threads hung"
    assert not errors, errors[:3]


def test_threads_dump_and_load_different_files(tmp_path):
    def work(i):
        comp = [0, ("zlib", 1), (FAST_CODEC, 1), 0][i % 4]
        p = tmp_path / f"t{i}.fk"
        for rep in range(5):
            firkin.dump(_value(i * 10 + rep), p, compress=comp, threads=2)
            _check_value(firkin.load(p), i * 10 + rep)
            if comp == 0:
                _check_value(firkin.load(p, mmap_mode="r"), i * 10 + rep)
            _check_value(firkin.loads(firkin.dumps(_value(i), compress=comp)), i)

    _run_threads(8, work)
    assert temps(tmp_path) == []


@pytest.mark.parametrize("comp", [0, ("zlib", 1), (FAST_CODEC, 1)], ids=["raw", "zlib", FAST_CODEC])
def test_threads_load_same_file(tmp_path, comp):
    p = tmp_path / "shared.fk"
    value = _value(7)
    value["big"] = np.arange(600_000, dtype=np.float64)   # 5 chunks: the worker pool runs
    firkin.dump(value, p, compress=comp, whole_file=False)  # firkin's chunks: raw ones map
    data = p.read_bytes()

    def work(i):
        for rep in range(2):
            mode = [None, "r", "c", None][(i + rep) % 4]
            with warnings_ignored():
                got = firkin.load(p, mmap_mode=mode, verify=True if rep % 2 else None)
            _check_value(got, 7)
            assert got["big"][-1] == 599_999.0
            got2 = firkin.loads(data, threads=1 + i % 3)
            _check_value(got2, 7)
            with open(p, "rb") as f:
                _check_value(firkin.load(f), 7)

    _run_threads(8, work)


class warnings_ignored:
    def __enter__(self):
        import warnings
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


MUTATE_CHILD = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    import firkin

    workdir, rounds = sys.argv[1], int(sys.argv[2])
    comps = [0, ("zlib", 1), ("%(fast)s", 1)]
    outcomes = {}

    def note(k):
        outcomes[k] = outcomes.get(k, 0) + 1

    for r in range(rounds):
        shared = np.zeros(2_000_000)                      # written to during the dump
        d = {f"a{i}": np.full(50_000, i, np.float64) for i in range(40)}
        d["shared"] = shared
        lst = [np.arange(10_000) for _ in range(40)]
        value = {"d": d, "lst": lst, "shared": shared}
        stop = threading.Event()

        def mutate():
            k = 0
            while not stop.is_set():
                k += 1
                shared[k %% shared.size] = k               # numpy writes, no GIL needed
                shared[:1000] += 1.0
                d[f"new{k %% 50}"] = np.ones(k %% 1000)     # dict grows/shrinks
                d.pop(f"a{k %% 40}", None)
                d[f"a{k %% 40}"] = np.full(60_000, k, np.float64)
                lst.append(np.zeros(3))
                if len(lst) > 60:
                    del lst[:20]
                lst[k %% len(lst)] = {"x": np.arange(k %% 500)}

        t = threading.Thread(target=mutate)
        t.start()
        path = os.path.join(workdir, f"m{r}.fk")
        comp = comps[r %% 3]
        try:
            if r %% 2:
                firkin.dump(value, path, compress=comp, threads=2)
            else:
                data = firkin.dumps(value, compress=comp, threads=2)
                with open(path, "wb") as f:
                    f.write(data)
            note("dumped")
        except Exception as exc:
            note("dump raised " + type(exc).__name__)
        finally:
            stop.set()
            t.join()
        if os.path.exists(path):
            try:
                firkin.load(path)
                note("loads")
            except firkin.FirkinError as exc:
                note("load raised " + type(exc).__name__)
            os.unlink(path)
    print(sorted(outcomes.items()))
""") % {"fast": FAST_CODEC}


def test_mutation_during_dump_never_crashes(tmp_path):
    """Another thread mutates the dict, the list and an array while they are
    dumped: an exception, a good file or a file that fails its checksum are
    all fine; a crash is not (the child would die)."""
    proc = run_child(MUTATE_CHILD, tmp_path, 24, timeout=300)
    assert proc.returncode == 0, _fail_child(proc, "the mutation child")
    print("\nmutation during dump:", proc.stdout.strip())
    outcomes = dict(eval(proc.stdout.strip().splitlines()[-1]))
    assert sum(v for k, v in outcomes.items() if k == "dumped" or k.startswith("dump raised")) == 24
    assert temps(tmp_path) == []
