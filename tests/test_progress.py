"""Progress bars: byte-based, from the C loops, only for big transfers unless asked."""
import sys

import numpy as np
import pytest

import firkin
from firkin import _progress


@pytest.fixture
def value():
    return {"a": np.arange(3_000_000, dtype=np.float64), "b": list(range(1000))}  # 24 MB


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, done, total=0):
        self.calls.append((done, total))


def test_forced_bar_for_dump_and_load(tmp_path, value, capsys):
    path = tmp_path / "p.firkin"
    firkin.dump(value, path, progress=True)
    err = capsys.readouterr().err
    assert "firkin.dump" in err and "M/" in err  # bytes, scaled: "22.9M/22.9M"
    firkin.load(path, progress=True)
    err = capsys.readouterr().err
    assert "firkin.load" in err


@pytest.mark.parametrize("progress", [None, False])
def test_no_bar_for_small_objects(tmp_path, value, capsys, progress):
    path = tmp_path / "p.firkin"
    firkin.dump(value, path, progress=progress)
    firkin.load(path, progress=progress)
    assert capsys.readouterr().err == ""


def test_auto_bar_above_threshold(tmp_path, value, capsys, monkeypatch):
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    path = tmp_path / "p.firkin"
    firkin.dump(value, path)
    assert "firkin.dump" in capsys.readouterr().err
    firkin.load(path)
    assert "firkin.load" in capsys.readouterr().err


def test_c_loops_report_bytes_in_order(tmp_path, value, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(_progress, "Progress", lambda mode, desc, total=None: _wrap(rec, total))
    path = tmp_path / "p.firkin"
    firkin.dump(value, path, compress=3)
    done = [d for d, _ in rec.calls]
    assert done == sorted(done) and len(done) >= 3  # every 8 MiB and once at the end
    assert rec.calls[-1][0] == rec.calls[-1][1] >= value["a"].nbytes
    rec.calls.clear()
    firkin.load(path)
    assert rec.calls[-1][0] == value["a"].nbytes


class _wrap:
    """A Progress stand-in that records what the C loops report."""

    def __init__(self, rec, total):
        self.rec, self.total, self.mode = rec, total, None
        if total:
            rec.calls.clear()

    def __call__(self, done, total=0):
        self.rec(done, total or self.total or 0)

    def close(self):
        pass


def test_bad_progress_value(tmp_path):
    with pytest.raises(TypeError, match="progress"):
        firkin.dump([1], tmp_path / "x.firkin", progress="yes")


def test_without_tqdm(tmp_path, value, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    path = tmp_path / "p.firkin"
    with pytest.raises(ImportError, match="tqdm"):
        firkin.dump(value, path, progress=True)
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    firkin.dump(value, path)  # auto mode without tqdm: silently no bar
    np.testing.assert_array_equal(firkin.load(path)["a"], value["a"])
    assert capsys.readouterr().err == ""
