"""Progress bars: byte-based, from the C loops, only for big transfers unless asked."""
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
import types

import numpy as np
import pytest

import firkin
from firkin import _load, _progress


@pytest.fixture(autouse=True)
def _default_progress(monkeypatch):
    monkeypatch.delenv("FIRKIN_PROGRESS", raising=False)
    previous = firkin.set_defaults(progress=None)
    yield
    firkin.set_defaults(**previous)


@pytest.fixture
def watched(monkeypatch):
    """As if stderr were a terminal (pytest captures it into a file)."""
    monkeypatch.setattr(_progress, "watched", lambda: True)


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


@pytest.mark.parametrize("progress", [None, False])
def test_unwatched_load_does_not_size_a_bar(tmp_path, value, monkeypatch, capsys, progress):
    """With nobody watching, a load does not walk its buffers to count the
    bytes a bar would show (a forest's 1,200 arrays: 0.4 ms of 15)."""
    path = tmp_path / "p.firkin"
    firkin.dump(value, path)

    def counted(*args):
        raise AssertionError("the load counted its bytes for no bar")

    monkeypatch.setattr(_load, "_buffer_bytes", counted)
    got = firkin.load(path, progress=progress)
    assert got["b"] == value["b"] and np.array_equal(got["a"], value["a"])
    assert capsys.readouterr().err == ""
    with pytest.raises(AssertionError, match="counted its bytes"):
        firkin.load(path, progress=True)  # a bar to size: the count is made


def test_auto_bar_above_threshold(tmp_path, value, capsys, monkeypatch, watched):
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
        total = total() if callable(total) else total
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


def test_without_tqdm(tmp_path, value, monkeypatch, capsys, watched):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails
    path = tmp_path / "p.firkin"
    with pytest.raises(ImportError, match="tqdm"):
        firkin.dump(value, path, progress=True)
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    firkin.dump(value, path)  # auto mode without tqdm: silently no bar
    np.testing.assert_array_equal(firkin.load(path)["a"], value["a"])
    assert capsys.readouterr().err == ""


def test_auto_bar_only_where_someone_watches(tmp_path, value, capsys, monkeypatch):
    # stderr is pytest's capture file, not a terminal: no bar into logs
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    assert not _progress.watched()
    path = tmp_path / "p.firkin"
    firkin.dump(value, path)
    firkin.load(path)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("how", ["env", "set_defaults"])
def test_forcing_the_bar_on_and_off(tmp_path, value, capsys, monkeypatch, how):
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    path = tmp_path / "p.firkin"

    def force(on):
        if how == "env":
            monkeypatch.setenv("FIRKIN_PROGRESS", "1" if on else "0")
        else:
            firkin.set_defaults(progress=on)

    force(True)  # into a log, and below the threshold too
    firkin.dump([1, 2], path)
    assert "firkin.dump" in capsys.readouterr().err
    firkin.dump(value, path, progress=False)  # the argument wins
    assert capsys.readouterr().err == ""
    force(False)
    monkeypatch.setattr(_progress, "watched", lambda: True)
    firkin.dump(value, path)
    firkin.load(path)
    assert capsys.readouterr().err == ""
    firkin.load(path, progress=True)
    assert "firkin.load" in capsys.readouterr().err


def test_environment_auto(tmp_path, value, capsys, monkeypatch, watched):
    monkeypatch.setattr(_progress, "AUTO_THRESHOLD", 1 << 20)
    monkeypatch.setenv("FIRKIN_PROGRESS", "auto")
    firkin.dump(value, tmp_path / "p.firkin")
    assert "firkin.dump" in capsys.readouterr().err


def test_jupyter_kernel_counts_as_watched(monkeypatch):
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # closed by gc
    shell = types.SimpleNamespace(kernel=None)
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert not _progress.watched()  # a terminal IPython: no kernel, and stderr is no tty
    shell.kernel = object()
    assert _progress.watched()
    monkeypatch.delitem(sys.modules, "ipykernel")
    assert not _progress.watched()


TTY_CHILD = textwrap.dedent("""
    import sys, numpy as np, firkin
    from firkin import _load, _progress
    _progress.AUTO_THRESHOLD = 1 << 20
    print("tty" if sys.stderr.isatty() else "notty", flush=True)
    firkin.dump(np.arange(1_000_000.0), sys.argv[1])
""")


@pytest.mark.parametrize("terminal", [True, False])
def test_bar_on_a_real_terminal_only(tmp_path, terminal):
    """A child whose stderr is a pseudo-terminal shows the bar by default;
    the same child writing stderr to a pipe (a log) does not."""
    env = {k: v for k, v in os.environ.items() if k != "FIRKIN_PROGRESS"}
    if terminal:
        main, sub = pty.openpty()
        # a new pseudo-terminal is 0 columns wide: tqdm would draw an empty bar
        fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        proc = subprocess.Popen([sys.executable, "-c", TTY_CHILD, str(tmp_path / "t.firkin")],
                                stdout=subprocess.PIPE, stderr=sub, env=env)
        os.close(sub)
        err = b""
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            err += chunk
        os.close(main)
        out = proc.communicate(timeout=120)[0]
    else:
        proc = subprocess.run([sys.executable, "-c", TTY_CHILD, str(tmp_path / "t.firkin")],
                              capture_output=True, env=env, timeout=120)
        out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err[-3000:]
    assert out.strip() == (b"tty" if terminal else b"notty")
    assert (b"firkin.dump" in err) == terminal, err[-3000:]
