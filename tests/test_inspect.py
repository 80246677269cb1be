"""firkin.verify, firkin.info and file signatures."""
import os

import numpy as np
import pytest

import firkin
from firkin import _core, _meta, _sign

from _container import rewrite_index_crcs


@pytest.fixture
def model_file(tmp_path):
    value = {"weights": np.arange(200_000, dtype=np.float32).reshape(400, 500),
             "names": ["alpha", "beta"], "bias": np.float64(0.5)}
    path = tmp_path / "model.firkin"
    firkin.dump(value, path, metadata={"run": 7})
    return path, value


def test_verify_good_file(model_file):
    path, _ = model_file
    report = firkin.verify(path)
    assert report.ok and bool(report)
    assert report.checksums_ok and report.signature == "valid" and not report.problems
    assert report.buffers == 1 and report.bytes_checked > 800_000
    assert "OK" in str(report) and report.to_dict()["ok"] is True


def test_verify_compressed_file(tmp_path):
    path = tmp_path / "c.firkin"
    firkin.dump({"a": np.zeros(500_000), "b": np.arange(300_000) % 5}, path, compress=3)
    assert firkin.verify(path).ok


@pytest.mark.parametrize("where", ["buffer", "pickle stream", "metadata", "signature"])
def test_verify_reports_a_flipped_byte_in_any_section(model_file, where):
    path, _ = model_file
    with open(path, "rb") as f:
        sec = [s for s in _core.Reader(f.fileno()).sections() if s["kind"] == where][0]
    data = bytearray(path.read_bytes())
    data[sec["offset"] + sec["stored"] // 2] ^= 0x10
    path.write_bytes(bytes(data))
    report = firkin.verify(path)
    assert not report.ok and not report.checksums_ok
    assert report.problems and "checksum mismatch" in report.problems[0]
    assert "FAILED" in str(report)


def test_verify_never_raises_on_garbage(tmp_path):
    path = tmp_path / "junk.firkin"
    path.write_bytes(b"\x89FRK" + os.urandom(300))
    report = firkin.verify(path)
    assert not report.ok and report.problems


def test_one_changed_stream_byte_makes_the_file_unsigned(model_file):
    """Checksums fixed up by an attacker: only the signature notices."""
    path, value = model_file
    with open(path, "rb") as f:
        stream_sec = _core.Reader(f.fileno()).sections()[0]
    data = bytearray(path.read_bytes())
    raw = bytes(data[stream_sec["offset"]:stream_sec["offset"] + stream_sec["stored"]])
    pos = stream_sec["offset"] + raw.index(b"alpha")
    data[pos] = ord("A")  # 'alpha' -> 'Alpha'
    rewrite_index_crcs(data, pos)
    path.write_bytes(bytes(data))
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "invalid" and not report.ok
    assert firkin.load(path)["names"] == ["Alpha", "beta"]  # plain data: still allowed
    assert firkin.info(path).signature == "invalid"


def test_signature_states_follow_the_key(model_file, monkeypatch):
    path, _ = model_file
    assert firkin.verify(path).signature == "valid"
    monkeypatch.setenv("FIRKIN_KEY", "a team key, long enough")
    assert firkin.verify(path).signature == "other key"
    firkin.dump([1, 2], path)
    assert firkin.verify(path).signature == "valid"  # signed with the team key now
    monkeypatch.delenv("FIRKIN_KEY")
    firkin.set_key("a process key, long enough")
    try:
        assert firkin.verify(path).signature == "other key"
    finally:
        firkin.set_key(None)


def test_key_file_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("FIRKIN_KEY", raising=False)
    monkeypatch.setattr(_sign, "_file_cache", {})
    firkin.dump([1], tmp_path / "a.firkin")
    key = tmp_path / "cfg" / "firkin" / "key"
    assert key.exists() and (key.stat().st_mode & 0o777) == 0o600
    assert len(key.read_bytes().strip()) == 64
    assert firkin.verify(tmp_path / "a.firkin").signature == "valid"


def test_unsigned_when_no_key_can_be_made(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(blocker))
    monkeypatch.delenv("FIRKIN_KEY", raising=False)
    monkeypatch.setattr(_sign, "_file_cache", {})
    monkeypatch.setattr(_sign, "_warned", False)
    with pytest.warns(UserWarning, match="unsigned"):
        firkin.dump([1], tmp_path / "a.firkin")
    assert firkin.load(tmp_path / "a.firkin") == [1]
    with open(tmp_path / "a.firkin", "rb") as f:
        assert "signature" not in [s["kind"] for s in _core.Reader(f.fileno()).sections()]


def test_set_key_validation():
    with pytest.raises(TypeError):
        firkin.set_key(123)
    with pytest.raises(ValueError):
        firkin.set_key("")


def test_info_facts(model_file):
    path, value = model_file
    info = firkin.info(path)
    d = info.to_dict()
    assert d["type"] == "builtins.dict" and d["format"] == "1.4"
    assert d["created"].endswith("Z") and d["signature"] == "valid"
    assert d["size_on_disk"] == os.path.getsize(path)
    assert d["size_in_memory"] >= value["weights"].nbytes
    assert d["compression"] is None and d["untrusted_types"] == []
    offset = d["arrays"][0]["offset"]
    assert d["arrays"] == [{"index": 0, "kind": "out-of-band", "dtype": "float32",
                            "shape": [400, 500], "bytes": 800_000, "stored": 800_000,
                            "codec": "raw", "ratio": 1.0, "offset": offset, "mmap": True}]
    with open(path, "rb") as f:
        f.seek(offset)
        assert f.read(64) == value["weights"].tobytes()[:64]
    assert d["user"] == {"run": 7}
    assert {p["package"] for p in d["packages"]} == {"numpy"}
    text = repr(info)
    for needle in ("builtins.dict", "(400, 500)", "float32", "signature:", "valid", "run=7"):
        assert needle in text
    page = info._repr_html_()
    assert page.startswith("<div class='firkin-info'>") and "<table>" in page and "(400, 500)" in page


def test_info_highlights_version_mismatch(model_file, monkeypatch):
    path, _ = model_file
    real = _meta.package_version
    monkeypatch.setattr(_meta, "package_version",
                        lambda pkg: "0.0.1" if pkg == "numpy" else real(pkg))
    info = firkin.info(path)
    (numpy_row,) = info.packages
    assert numpy_row["mismatch"] and numpy_row["installed"] == "0.0.1"
    assert "installed differs" in repr(info)
    assert "background:#fdd" in info._repr_html_()


def test_info_compressed_and_untrusted(tmp_path):
    import collections

    path = tmp_path / "c.firkin"
    firkin.dump({"a": np.zeros(300_000), "d": collections.OrderedDict(x=1)}, path, compress="zlib",
                whole_file=False)
    info = firkin.info(path)
    assert info.compression == {"method": "zlib", "level": 3} and info.ratio > 10
    assert info.arrays[0]["codec"] == "zlib" and info.arrays[0]["ratio"] > 10


def test_signature_of_a_multi_chunk_stream_and_failed_dump_threads(tmp_path):
    """Streams over a chunk are hashed on a thread; the result is the same
    HMAC, and a dump that fails midway leaves no thread behind."""
    import threading

    big = {f"k{i}": "v" * (i % 40) for i in range(120_000)}  # a ~3 MB pickle stream
    path = tmp_path / "big.firkin"
    firkin.dump(big, path)
    with open(path, "rb") as f:
        assert _core.Reader(f.fileno()).sections()[0]["chunks"] >= 3
    assert firkin.verify(path).signature == "valid"

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="boom"):
        firkin.dump([big, Boom()], tmp_path / "fail.firkin")
    assert "firkin-sign" not in {t.name for t in threading.enumerate()} - before
