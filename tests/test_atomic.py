"""Atomic writes: a dump that fails, is interrupted or is killed never damages the
previous file, and cleans up (or lets the next dump clean up) its temp file."""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import firkin

TEMP = firkin.TEMP_SUFFIX


def temps(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(TEMP))


def old_object():
    return {"version": "old", "arr": np.arange(50_000, dtype=np.float64)}


def assert_old(path):
    got = firkin.load(path)
    assert got["version"] == "old"
    np.testing.assert_array_equal(got["arr"], np.arange(50_000, dtype=np.float64))


class Boom(Exception):
    pass


class RaisesOnReduce:
    def __init__(self, exc):
        self.exc = exc

    def __reduce__(self):
        raise self.exc


def failing_value(exc):
    """A large array and a lot of pickle data come before the failure."""
    return [np.ones(3_000_000), b"x" * (3 << 20), list(range(1000)), RaisesOnReduce(exc)]


@pytest.fixture
def old_file(tmp_path):
    path = tmp_path / "target.fk"
    firkin.dump(old_object(), path)
    return path


# ------------------------------------------------------ failures in-process

@pytest.mark.parametrize("exc", [Boom("midway"), KeyboardInterrupt(), MemoryError("fake"),
                                 RecursionError("deep")],
                         ids=["exception", "keyboardinterrupt", "memoryerror", "recursionerror"])
def test_failing_pickle_leaves_old_file(old_file, exc):
    before = old_file.read_bytes()
    st = old_file.stat()
    with pytest.raises(type(exc)):
        firkin.dump(failing_value(exc), old_file)
    assert old_file.read_bytes() == before
    assert old_file.stat().st_ino == st.st_ino  # not even replaced
    assert temps(old_file.parent) == []
    assert os.listdir(old_file.parent) == ["target.fk"]
    assert_old(old_file)


def test_failing_pickle_new_target_leaves_nothing(tmp_path):
    path = tmp_path / "new.fk"
    with pytest.raises(Boom):
        firkin.dump(failing_value(Boom("x")), path)
    assert os.listdir(tmp_path) == []


def test_unpicklable_object_leaves_old_file(old_file):
    import threading
    before = old_file.read_bytes()
    with pytest.raises(TypeError):
        firkin.dump([np.ones(200_000), threading.Lock()], old_file)
    assert old_file.read_bytes() == before
    assert temps(old_file.parent) == []


def test_failing_dump_via_file_object_does_not_touch_paths(tmp_path):
    with open(tmp_path / "f.bin", "wb") as f:
        with pytest.raises(Boom):
            firkin.dump(failing_value(Boom("x")), f)
    assert temps(tmp_path) == []


def test_successful_dump_replaces_atomically(old_file):
    ino = old_file.stat().st_ino
    firkin.dump({"version": "new"}, old_file)
    assert firkin.load(old_file) == {"version": "new"}
    assert old_file.stat().st_ino != ino  # a new file renamed over the old one
    assert temps(old_file.parent) == []


def test_reader_of_old_file_unaffected_by_new_dump(old_file):
    mapped = firkin.load(old_file, mmap_mode="r")
    with open(old_file, "rb") as f:
        firkin.dump({"version": "new", "arr": np.zeros(50_000)}, old_file)
        # an open handle still reads the complete old container
        assert firkin.load(f)["version"] == "old"
    np.testing.assert_array_equal(mapped["arr"], np.arange(50_000, dtype=np.float64))


# ------------------------------------------------------ killed mid-dump

CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import firkin

    target, marker = sys.argv[1], sys.argv[2]

    class Block:
        def __reduce__(self):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
            raise SystemExit("not killed")

    firkin.dump([np.ones(2_000_000), b"y" * (3 << 20), Block()], target)
""")


def start_blocked_dump(target, tmp_path):
    """Start a process whose dump of `target` blocks midway; return it and its
    temp file name once the temp file exists and holds data."""
    marker = tmp_path / f"marker-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists() or not marker.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child did not reach the blocking object")
        time.sleep(0.05)
    mine = [n for n in temps(target.parent) if f".{proc.pid}." in n]
    assert len(mine) == 1, temps(target.parent)
    assert mine[0].startswith("." + target.name + ".")
    return proc, target.parent / mine[0]


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()


def test_sigkill_mid_dump_leaves_old_file_and_next_dump_cleans(old_file, tmp_path):
    before = old_file.read_bytes()
    proc, tmp = start_blocked_dump(old_file, tmp_path)
    try:
        assert tmp.is_file()
        assert old_file.read_bytes() == before
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    # the old target is intact, the stale temp file is left behind
    assert old_file.read_bytes() == before
    assert_old(old_file)
    assert tmp.exists()
    # it is not mistaken for the target
    with pytest.raises(firkin.FormatError):
        firkin.load(tmp)
    # the next dump of the same target removes it
    firkin.dump({"version": "new"}, old_file)
    assert not tmp.exists()
    assert temps(old_file.parent) == []
    assert firkin.load(old_file) == {"version": "new"}


def test_live_process_temp_file_is_kept(old_file, tmp_path):
    proc, tmp = start_blocked_dump(old_file, tmp_path)
    try:
        firkin.dump({"version": "mine"}, old_file)
        assert tmp.exists(), "removed the temp file of a dump still in progress"
        assert firkin.load(old_file) == {"version": "mine"}
        assert temps(old_file.parent) == [tmp.name]
    finally:
        kill(proc)
    firkin.dump({"version": "after"}, old_file)
    assert temps(old_file.parent) == []


HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fds = [os.open(p, os.O_RDONLY) for p in sys.argv[1:]]
    for fd in fds:
        fcntl.flock(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(600)
""")


def hold_locks(*paths):
    """A live process holding the lock of each path, as a dump in progress
    holds its temp file's: returned once the locks are held."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_stale_temp_rules(tmp_path):
    """Only unlocked temp files of this target are removed: the lock a live
    dump holds decides, not the pid in the name (which means nothing for a
    dump in another PID namespace or on another host)."""
    target = tmp_path / "t.fk"
    firkin.dump([1], target)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead": f".t.fk.{dead.pid}.0badc0de{TEMP}",
        # a live dump elsewhere: its pid is dead (or someone else's) here, but it holds its lock
        "live_elsewhere": f".t.fk.{dead.pid}.1badc0de{TEMP}",
        "live_here": f".t.fk.{os.getpid()}.2badc0de{TEMP}",
        "other_target": f".other.fk.{dead.pid}.0badc0de{TEMP}",
        "prefix_target": f".t.fk2.{dead.pid}.0badc0de{TEMP}",
        "not_a_pid": f".t.fk.abc.0badc0de{TEMP}",
        "unrelated": "t.fk.backup",
    }
    for n in names.values():
        (tmp_path / n).write_bytes(b"partial")
    holder = hold_locks(tmp_path / names["live_elsewhere"], tmp_path / names["live_here"])
    try:
        firkin.dump([2], target)
        left = set(os.listdir(tmp_path))
        assert names["dead"] not in left
        for key in ("live_elsewhere", "live_here", "other_target", "prefix_target", "not_a_pid",
                    "unrelated"):
            assert names[key] in left, key
        assert firkin.load(target) == [2]
    finally:
        holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()
    firkin.dump([3], target)  # nobody holds them now: removed
    left = set(os.listdir(tmp_path))
    assert names["live_elsewhere"] not in left and names["live_here"] not in left


def test_big_directory_is_listed_for_stale_temps_once_per_interval(tmp_path, monkeypatch):
    """Listing a directory costs in proportion to its size: a loop of dumps
    into one of more than _BIG_DIR entries lists it once per _LIST_EVERY_S
    seconds, not once per dump; a small directory is listed by every dump."""
    from types import SimpleNamespace

    from firkin import _atomic

    clock = [1000.0]
    monkeypatch.setattr(_atomic, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    listings = []
    real_listdir = os.listdir

    def counting_listdir(where):
        listings.append(where)
        return real_listdir(where)

    monkeypatch.setattr(_atomic.os, "listdir", counting_listdir)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(_atomic._BIG_DIR):
        (big / f"f{i}").touch()
    target = big / "t.fk"
    stale = [big / f".t.fk.1.{i:08x}{TEMP}" for i in range(3)]

    stale[0].write_bytes(b"partial")
    firkin.dump([1], target)  # the first dump lists it and cleans
    assert len(listings) == 1 and not stale[0].exists()
    stale[1].write_bytes(b"partial")
    for i in range(20):
        firkin.dump([i], target)
    assert len(listings) == 1, "a big directory was listed again within the interval"
    assert stale[1].exists()
    clock[0] += _atomic._LIST_EVERY_S
    firkin.dump([2], target)  # the interval is over: listed and cleaned again
    assert len(listings) == 2 and not stale[1].exists()
    assert firkin.load(target) == [2]

    # once it is small again, every dump lists it
    for i in range(_atomic._BIG_DIR):
        (big / f"f{i}").unlink()
    clock[0] += _atomic._LIST_EVERY_S
    firkin.dump([3], target)
    stale[2].write_bytes(b"partial")
    firkin.dump([4], target)
    assert len(listings) == 4 and not stale[2].exists()
    assert temps(big) == []


def test_temp_file_of_another_pid_namespace_is_kept(old_file, tmp_path):
    """A real dump in its own PID namespace (as in a container sharing the
    directory): its pid means nothing here, yet its temp file survives our
    dumps while it runs."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a new PID namespace needs root and unshare(1) (CI runs as root)")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"this container does not allow new PID namespaces: {probe.stderr.strip()}")
    marker = tmp_path / "marker"
    proc = subprocess.Popen(["unshare", "--pid", "--fork", sys.executable, "-c", CHILD,
                             str(old_file), str(marker)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "child did not reach the blocking object"
            time.sleep(0.05)
        inner_pid = int(marker.read_text())
        assert inner_pid != proc.pid  # it lives in another PID namespace
        (tmp,) = temps(old_file.parent)
        assert f".{inner_pid}." in tmp
        firkin.dump({"version": "mine"}, old_file)
        assert temps(old_file.parent) == [tmp], "removed the temp file of a live dump"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare and the dump it forked
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()


# ------------------------------------------------------- file attributes

@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755, 0o444])
def test_permissions_of_existing_target_kept(tmp_path, mode):
    path = tmp_path / "perm.fk"
    firkin.dump([1], path)
    os.chmod(path, mode)
    firkin.dump([2], path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert firkin.load(path) == [2]


def test_temp_file_is_private_while_written(old_file, tmp_path):
    """The temp file is 0600 until it is written whole, whatever the old
    file's mode or the umask: nobody else can open it and read along."""
    os.chmod(old_file, 0o644)
    old = os.umask(0)
    try:
        proc, tmp = start_blocked_dump(old_file, tmp_path)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o600
    finally:
        kill(proc)


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o6777, 0o1644])
def test_setuid_setgid_and_sticky_bits_are_not_copied(tmp_path, mode):
    path = tmp_path / "suid.fk"
    firkin.dump([1], path)
    os.chmod(path, mode)
    firkin.dump([2], path)
    assert stat.S_IMODE(path.stat().st_mode) == mode & 0o777
    assert firkin.load(path) == [2]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root; "
                    "tests/test_shared_machine.py covers it with a real second user")
def test_mode_of_a_target_someone_else_owns_is_not_copied(tmp_path):
    path = tmp_path / "theirs.fk"
    path.write_bytes(b"planted")
    os.chmod(path, 0o666)
    os.chown(path, 54321, 54321)
    old = os.umask(0o027)
    try:
        firkin.dump([1], path)
    finally:
        os.umask(old)
    st = path.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)


def test_new_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = tmp_path / "umask.fk"
        firkin.dump([1], path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_dump_through_symlink_replaces_target(tmp_path):
    real_dir = tmp_path / "real"
    link_dir = tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    real = real_dir / "model.fk"
    firkin.dump({"version": "old"}, real)
    os.chmod(real, 0o640)
    link = link_dir / "current.fk"
    link.symlink_to(real)
    assert firkin.dump({"version": "new"}, link) == [str(link)]
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert firkin.load(real) == {"version": "new"}
    assert firkin.load(link) == {"version": "new"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(os.listdir(link_dir)) == ["current.fk"]
    assert sorted(os.listdir(real_dir)) == ["model.fk"]


def test_dump_through_dangling_symlink_is_refused(tmp_path):
    """A dangling link is not followed to create a file where it points
    (someone else may have planted it to choose that place)."""
    real = tmp_path / "notyet.fk"
    link = tmp_path / "link.fk"
    link.symlink_to(real)
    with pytest.raises(FileNotFoundError, match="symbolic link whose target .* does not exist"):
        firkin.dump([7], link)
    assert link.is_symlink() and not real.exists()
    assert sorted(os.listdir(tmp_path)) == ["link.fk"]


def test_dump_through_chain_of_symlinks(tmp_path):
    real = tmp_path / "final.fk"
    firkin.dump([0], real)
    (tmp_path / "a.fk").symlink_to(real)
    (tmp_path / "b.fk").symlink_to(tmp_path / "a.fk")
    firkin.dump([1], tmp_path / "b.fk")
    assert (tmp_path / "a.fk").is_symlink() and (tmp_path / "b.fk").is_symlink()
    assert firkin.load(real) == [1]


# --------------------------------------------------------------- errors

def test_missing_parent_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        firkin.dump([1], tmp_path / "no" / "such" / "dir" / "x.fk")
    assert os.listdir(tmp_path) == []


def test_target_is_directory(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    with pytest.raises(IsADirectoryError):
        firkin.dump([1], d)
    with pytest.raises(IsADirectoryError):
        firkin.dump([1], str(d) + os.sep)
    assert d.is_dir() and os.listdir(d) == []
    assert temps(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises((NotADirectoryError, FileNotFoundError)):
        firkin.dump([1], f / "x.fk")
    assert f.read_bytes() == b"x"


_PR_CAPBSET_DROP = 24
_CAPS = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _drop_dac_caps():  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _CAPS:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_directory_is_permission_error(tmp_path):
    """Root bypasses directory permissions, so as root the check runs in a child
    process whose capability bounding set lacks the DAC override capabilities
    (still uid 0, but ordinary permission checks apply)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    firkin.dump({"version": "old"}, ro / "existing.fk")
    os.chmod(ro, 0o555)
    try:
        script = textwrap.dedent(f"""
            import os, firkin
            ro = {str(ro)!r}
            for name in ("new.fk", "existing.fk"):
                try:
                    firkin.dump([1, 2, 3], os.path.join(ro, name))
                except PermissionError as exc:
                    print("PermissionError", name)
                else:
                    print("no error", name)
            print(sorted(os.listdir(ro)))
            print(firkin.load(os.path.join(ro, "existing.fk")))
        """)
        kwargs = {"preexec_fn": _drop_dac_caps} if os.geteuid() == 0 else {}
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=120, **kwargs)
        assert res.returncode == 0, res.stderr[-2000:]
        lines = res.stdout.splitlines()
        assert lines[:2] == ["PermissionError new.fk", "PermissionError existing.fk"], res.stdout
        assert lines[2] == "['existing.fk']"
        assert lines[3] == "{'version': 'old'}"
    finally:
        os.chmod(ro, 0o755)


def test_dump_returns_filename_and_no_temp_left(tmp_path):
    path = str(tmp_path / "ok.fk")
    for i in range(3):
        assert firkin.dump(list(range(i)), path) == [path]
    assert os.listdir(tmp_path) == ["ok.fk"]
