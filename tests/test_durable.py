"""dump(durable=...): fsync of the file and its directory, or neither, with
the atomic temp file + rename either way; firkin.set_defaults and
FIRKIN_DURABLE as the process-wide default. The kill test for both modes is
in test_reliability.py."""
import os
import shutil
import textwrap

import numpy as np
import pytest

import firkin
from firkin import _defaults

from _support import traced_calls


@pytest.fixture(autouse=True)
def _clean_defaults(monkeypatch):
    monkeypatch.delenv("FIRKIN_DURABLE", raising=False)
    monkeypatch.delenv("FIRKIN_PROGRESS", raising=False)
    previous = firkin.set_defaults(durable=None, progress=None)
    yield
    firkin.set_defaults(**previous)


CHILD = textwrap.dedent("""
    import sys, numpy as np, firkin
    target, arg = sys.argv[1], sys.argv[2]
    kw = {} if arg == "default" else {"durable": arg == "1"}
    firkin._sign.current_key()  # a first use creates the signing key file (and syncs it)
    import os; os.getppid()  # marks where the dump starts in strace's log
    firkin.dump({"a": np.arange(300_000), "b": [1, 2]}, target, **kw)
    print("dumped", flush=True)
""")


def _fsyncs(tmp_path, arg, env=None):
    """The fsync-family system calls a dump makes in a child, counted by strace."""
    target = tmp_path / "m.firkin"
    lines = traced_calls(tmp_path, "fsync,fdatasync,sync_file_range,syncfs,sync",
                         ["-c", CHILD, str(target), arg], "dumped", env)
    np.testing.assert_array_equal(firkin.load(target)["a"], np.arange(300_000))
    return [line for line in lines if "sync" in line]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to see system calls")
def test_durable_dump_fsyncs_file_and_directory_and_durable_false_none(tmp_path):
    assert len(_fsyncs(tmp_path, "1")) == 2  # the temp file, then the directory
    assert len(_fsyncs(tmp_path, "default")) == 2
    assert _fsyncs(tmp_path, "0") == []
    assert _fsyncs(tmp_path, "default", {"FIRKIN_DURABLE": "0"}) == []
    assert len(_fsyncs(tmp_path, "1", {"FIRKIN_DURABLE": "0"})) == 2  # the argument wins


class _Counter:
    def __init__(self):
        self.fds = []

    def __call__(self, fd):
        self.fds.append(fd)


def test_directory_fsync_follows_durable(tmp_path, monkeypatch):
    # the directory's fsync is Python's os.fsync; the file's is in the C writer
    counter = _Counter()
    monkeypatch.setattr(os, "fsync", counter)
    path = tmp_path / "m.firkin"
    firkin.dump([1, 2, 3], path)
    assert len(counter.fds) == 1
    firkin.dump([1, 2, 3], path, durable=False)
    assert len(counter.fds) == 1
    firkin.set_defaults(durable=False)
    firkin.dump([1, 2, 3], path)
    assert len(counter.fds) == 1
    firkin.dump([1, 2, 3], path, durable=True)
    assert len(counter.fds) == 2
    firkin.set_defaults(durable=None)
    monkeypatch.setenv("FIRKIN_DURABLE", "off")
    firkin.dump([1, 2, 3], path)
    assert len(counter.fds) == 2
    assert firkin.load(path) == [1, 2, 3]


def test_durable_false_is_still_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.firkin"
    firkin.dump({"v": 1}, path, durable=False)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        firkin.dump({"v": 2, "x": Boom()}, path, durable=False)
    assert firkin.load(path) == {"v": 1}  # the failed dump did not touch the target
    assert os.listdir(tmp_path) == ["m.firkin"]


def test_durable_false_swaps_a_file_of_yours_and_renames_otherwise(tmp_path, monkeypatch):
    from firkin import _atomic, _core

    path = tmp_path / "m.firkin"
    swaps, renames = [], []
    real_exchange, real_rename = _core.exchange, os.rename
    monkeypatch.setattr(_core, "exchange", lambda *a: swaps.append(a) or real_exchange(*a))
    monkeypatch.setattr(os, "rename", lambda *a, **k: renames.append(a) or real_rename(*a, **k))
    firkin.dump({"v": 1}, path, durable=False)  # nothing to replace: renamed
    assert (len(swaps), len(renames)) == (0, 1)
    os.link(path, tmp_path / "old")
    firkin.dump({"v": 2}, path, durable=False)  # a file of yours: swapped, then removed
    assert len(swaps) == 1 and len(renames) == 1
    assert firkin.load(path) == {"v": 2}
    assert firkin.load(tmp_path / "old") == {"v": 1}  # as a rename leaves another link
    assert sorted(os.listdir(tmp_path)) == ["m.firkin", "old"]
    assert os.stat(path).st_ino != os.stat(tmp_path / "old").st_ino
    firkin.dump({"v": 3}, path)  # durable: renamed, as ever
    assert (len(swaps), len(renames)) == (1, 2)
    assert firkin.load(path) == {"v": 3}
    # a kernel or file system without the swap: a rename, nothing lost
    monkeypatch.setattr(_core, "exchange", lambda *a: False)
    firkin.dump({"v": 4}, path, durable=False)
    assert firkin.load(path) == {"v": 4} and len(renames) == 3
    assert sorted(os.listdir(tmp_path)) == ["m.firkin", "old"]
    # the old file went away between the look and the swap: the rename creates it
    monkeypatch.setattr(_core, "exchange", real_exchange)
    real_stat = os.stat

    def vanish(name, *a, **k):
        st = real_stat(name, *a, **k)
        if name == "m.firkin":
            os.unlink(path)
        return st

    monkeypatch.setattr(os, "stat", vanish)
    firkin.dump({"v": 5}, path, durable=False)
    monkeypatch.setattr(os, "stat", real_stat)
    assert firkin.load(path) == {"v": 5}
    assert sorted(os.listdir(tmp_path)) == ["m.firkin", "old"]
    assert _atomic._yours(os.stat(path)) and not _atomic._yours(os.stat(tmp_path))


def test_exchange_swaps_two_names(tmp_path):
    from firkin import _core

    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert _core.exchange(fd, "a", "b") is True
        with pytest.raises(FileNotFoundError):
            _core.exchange(fd, "a", "missing")
    finally:
        os.close(fd)
    assert (tmp_path / "a").read_bytes() == b"B" and (tmp_path / "b").read_bytes() == b"A"


def test_set_defaults_returns_previous_and_restores():
    assert firkin.set_defaults(durable=False) == {"durable": None, "progress": None}
    assert firkin.set_defaults(progress=True) == {"durable": False, "progress": None}
    assert _defaults.durable() is False and _defaults.progress() is True
    prev = firkin.set_defaults(durable=None, progress=None)
    assert prev == {"durable": False, "progress": True}
    assert _defaults.durable() is True and _defaults.progress() is None
    firkin.set_defaults(**prev)
    assert _defaults.durable() is False and _defaults.progress() is True


@pytest.mark.parametrize("kw", [{"durable": 1}, {"durable": "no"}, {"progress": "yes"}])
def test_set_defaults_rejects_non_bools(kw):
    with pytest.raises(TypeError, match=next(iter(kw))):
        firkin.set_defaults(**kw)


def test_dump_rejects_bad_durable(tmp_path):
    with pytest.raises(TypeError, match="durable"):
        firkin.dump([1], tmp_path / "x.firkin", durable="no")
    assert not (tmp_path / "x.firkin").exists()


@pytest.mark.parametrize("env, raw", [("FIRKIN_DURABLE", "maybe"), ("FIRKIN_DURABLE", "auto"),
                                      ("FIRKIN_PROGRESS", "sometimes")])
def test_bad_environment_value_names_the_variable(tmp_path, monkeypatch, env, raw):
    monkeypatch.setenv(env, raw)
    with pytest.raises(ValueError, match=env):
        firkin.dump([1], tmp_path / "x.firkin")
