"""joblib.Memory(backend="firkin"): results cached as firkin files."""
import os
import subprocess
import sys
import textwrap
import uuid

import fsspec
import joblib
import numpy as np
import pytest

import firkin


class Custom:  # not on the allowlist: loads on the signature of the user who cached it
    def __init__(self, v):
        self.v = v


def _counting_pca():
    from sklearn.decomposition import PCA

    class CountingPCA(PCA):
        """A PCA that counts its fits (module level, so that pickle finds it)."""

        fits = 0

        def fit_transform(self, X, y=None):
            type(self).fits += 1
            return super().fit_transform(X, y)

    CountingPCA.__qualname__ = "CountingPCA"
    return CountingPCA


CountingPCA = _counting_pca()


def test_cache_hits_load_from_firkin_files(tmp_path):
    calls = []
    memory = firkin.Memory(tmp_path, verbose=0)

    @memory.cache
    def f(n):
        calls.append(n)
        return {"a": np.arange(n, dtype=np.float64), "c": Custom(n)}

    first = f(100_000)
    again = f(100_000)
    assert calls == [100_000]
    np.testing.assert_array_equal(again["a"], first["a"])
    assert isinstance(again["c"], Custom) and again["c"].v == 100_000
    outputs = [os.path.join(r, n) for r, _, names in os.walk(tmp_path) for n in names
               if n == "output.pkl"]
    assert len(outputs) == 1
    with open(outputs[0], "rb") as fh:
        assert fh.read(4) == b"\x89FRK"  # a firkin file, signed with this user's key
    assert firkin.verify(outputs[0]).signature == "valid"
    # joblib's own housekeeping still works on the store
    assert len(memory.store_backend.get_items()) == 1
    memory.clear(warn=False)
    assert memory.store_backend.get_items() == []


def test_joblib_memory_by_backend_name(tmp_path):
    assert firkin.register_joblib_backend() == "firkin"
    memory = joblib.Memory(tmp_path, backend="firkin", mmap_mode="r", verbose=0)
    g = memory.cache(lambda n: np.ones(n))
    g(100_000)
    got = g(100_000)
    assert isinstance(got, np.memmap) and got.sum() == 100_000


def test_results_from_another_key_are_recomputed(tmp_path, monkeypatch, caplog):
    calls = []
    memory = firkin.Memory(tmp_path, verbose=0)

    @memory.cache
    def f(n):
        calls.append(n)
        return Custom(n)

    f(1)
    monkeypatch.setenv("FIRKIN_KEY", "someone else's key, long enough")
    assert f(1).v == 1  # refused as untrusted (joblib logs it), so computed again
    assert calls == [1, 1]
    assert "UntrustedTypesError" in caplog.text and "another key" in caplog.text


def test_pipeline_memory(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 2, 200)
    memory = firkin.Memory(tmp_path, verbose=0)
    CountingPCA.fits = 0
    p1 = Pipeline([("pca", CountingPCA(3)), ("lr", LogisticRegression())], memory=memory)
    p1.fit(X, y)
    p2 = Pipeline([("pca", CountingPCA(3)), ("lr", LogisticRegression())], memory=memory)
    p2.fit(X, y)
    np.testing.assert_allclose(p1.predict_proba(X), p2.predict_proba(X))
    assert CountingPCA.fits == 1  # the second pipeline loaded the first one's fitted PCA


def test_memory_on_a_url():
    location = f"memory://firkin-memory/{uuid.uuid4().hex}"
    memory = firkin.Memory(location, verbose=0)
    calls = []

    @memory.cache
    def f(n):
        calls.append(n)
        return np.arange(n)

    f(10)
    np.testing.assert_array_equal(f(10), np.arange(10))
    assert calls == [10]
    found = fsspec.filesystem("memory").find(location)
    assert sum(p.endswith("/output.pkl") for p in found) == 1
    assert len(memory.store_backend.get_items()) == 1
    memory.clear(warn=False)
    assert not fsspec.filesystem("memory").find(location)


def test_two_processes_computing_the_same_item(tmp_path):
    """Writers that publish the same item again and again never let a reader
    see a torn file."""
    code = textwrap.dedent(f"""
        import sys, numpy as np, firkin
        memory = firkin.Memory({str(tmp_path)!r}, verbose=0)
        def big(n):
            return np.full(n, 7.0)
        f = memory.cache(big)
        for _ in range(15):
            f.call(400_000)            # computes and publishes, hit or not
            got = f(400_000)           # a hit, whoever wrote it last
            assert got.shape == (400_000,) and got[0] == got[-1] == 7.0
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        assert b"Exception while loading" not in err, err.decode()


def _location(kind, tmp_path):
    return str(tmp_path) if kind == "local" else f"memory://firkin-memory/{uuid.uuid4().hex}"


def _listing(kind, folder):
    if kind == "local":
        return sorted(os.listdir(folder))
    return sorted(p.rsplit("/", 1)[1] for p in fsspec.filesystem("memory").ls(folder, detail=False))


@pytest.mark.parametrize("kind", ["local", "url"])
def test_function_code_is_never_seen_half_written(tmp_path, kind):
    """What the two-process test above met on joblib 1.4 (Python 3.12 lane):
    joblib before 1.6 rewrote func_code.py in place, so a process reading it
    meanwhile saw a truncated file, took it for a changed function and wiped
    the function's cache, the result another process was loading among them
    ("Exception while loading results"). The backend writes the code under a
    name of its own and renames it into place, on every joblib version: a
    reader sees the old code or the new, never part of one."""
    backend = firkin.Memory(_location(kind, tmp_path), verbose=0).store_backend
    call = ("mod--f",)  # a new list each call: joblib 1.2's get_cached_func_code extends its argument
    backend.store_cached_func_code(list(call), "def f(): return 1\n")
    seen = []
    real_open = backend._open_item

    def spying_open(f, mode):  # what a reader finds once the writer has opened its file
        handle = real_open(f, mode)
        if "w" in mode:
            seen.append(backend.get_cached_func_code(list(call)))
        return handle

    backend._open_item = spying_open
    backend.store_cached_func_code(list(call), "def f(): return 2\n")
    assert seen == ["def f(): return 1\n"]
    assert backend.get_cached_func_code(list(call)) == "def f(): return 2\n"
    folder = backend._join(*call)
    assert _listing(kind, folder) == ["func_code.py"]  # no temporary file left


@pytest.mark.parametrize("kind", ["local", "url"])
def test_a_failed_function_code_write_keeps_the_old_code(tmp_path, kind):
    backend = firkin.Memory(_location(kind, tmp_path), verbose=0).store_backend
    call = ("mod--f",)  # a new list each call: joblib 1.2's get_cached_func_code extends its argument
    backend.store_cached_func_code(list(call), "def f(): return 1\n")
    real_open = backend._open_item

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[:3])
            raise OSError(28, "No space left on device")

    backend._open_item = lambda f, mode: Full(real_open(f, mode)) if "w" in mode else real_open(f, mode)
    with pytest.raises(OSError, match="No space left"):
        backend.store_cached_func_code(list(call), "def f(): return 2\n")
    assert backend.get_cached_func_code(list(call)) == "def f(): return 1\n"
    assert _listing(kind, backend._join(*call)) == ["func_code.py"]
