"""The two implementations of the dump signature: native (OpenSSL's HMAC on
a thread of the C writer, build_info()["signer"] == "native") and Python
(firkin._sign hashing on the pickling thread, for builds without OpenSSL).

Both must produce the signature docs/FORMAT.md defines; load and verify
check it with a third, independent computation (_sign._digest over the
stream read back)."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import firkin
from firkin import _api, _core, _sign

NATIVE = _core.build_info()["signer"] == "native"
CHUNK = _core.build_info()["chunk_size"]
IMPLS = [pytest.param("native", marks=pytest.mark.skipif(not NATIVE, reason="built without OpenSSL")),
         "python"]


@pytest.fixture
def impl(request, monkeypatch):
    monkeypatch.setattr(_sign.Signer, "native", request.param == "native")
    return request.param


def _stream_of(n):
    """A value whose pickle stream is about n bytes (bytes stay in-band)."""
    return {"blob": bytes(range(256)) * (n // 256), "tail": list(range(100)), "arr": np.arange(50_000.0)}


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("size", [100, CHUNK - 300, CHUNK + 1, 5 * CHUNK + 12345])
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_signature_verifies(tmp_path, impl, size, compress, threads):
    value = _stream_of(size)
    path = tmp_path / "s.firkin"
    firkin.dump(value, path, compress=compress, threads=threads)
    report = firkin.verify(path)
    assert report.checksums_ok and report.signature == "valid", report
    got = firkin.load(path)
    assert got["blob"] == value["blob"] and got["tail"] == value["tail"]
    np.testing.assert_array_equal(got["arr"], value["arr"])


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
@pytest.mark.parametrize("compress", [0, ("zlib", 1)])
def test_signature_of_dumps_and_file_objects(tmp_path, impl, compress):
    value = _stream_of(3 * CHUNK + 5)
    (tmp_path / "b.firkin").write_bytes(firkin.dumps(value, compress=compress))
    with open(tmp_path / "f.firkin", "wb") as f:
        firkin.dump(value, f, compress=compress)
    for name in ("b.firkin", "f.firkin"):
        assert firkin.verify(tmp_path / name).signature == "valid", name
        assert firkin.load(tmp_path / name)["blob"] == value["blob"]


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_signed_under_the_key_of_the_moment(tmp_path, impl, monkeypatch):
    path = tmp_path / "k.firkin"
    monkeypatch.setenv("FIRKIN_KEY", "one key, long enough")
    firkin.dump(_stream_of(3 * CHUNK), path)
    assert firkin.verify(path).signature == "valid"
    monkeypatch.setenv("FIRKIN_KEY", "another key, long enough")
    assert firkin.verify(path).signature == "other key"


class Boom:
    def __reduce__(self):
        raise RuntimeError("boom while pickling")


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_a_failed_dump_stops_the_signer_cleanly(tmp_path, impl):
    """The pickler fails after the hasher got several chunks: the dump raises
    the pickler's error, the target keeps its old contents, and the writer
    frees the chunks only after the hasher let go of them (ASan checks that
    under .ci/variant --sanitize)."""
    path = tmp_path / "t.firkin"
    firkin.dump({"old": 1}, path)
    before = path.read_bytes()
    for i in range(15):
        bad = [bytes([i]) * (CHUNK // 2 + 7 * i) for _ in range(6)] + [Boom()]
        with pytest.raises(RuntimeError, match="boom while pickling"):
            firkin.dump(bad, path)
        assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.firkin"]
    firkin.dump(_stream_of(4 * CHUNK), path)
    assert firkin.verify(path).signature == "valid"


@pytest.mark.parametrize("impl", IMPLS, indirect=True)
def test_concurrent_dumps_each_signed(tmp_path, impl):
    errors = []

    def work(k):
        try:
            for j in range(3):
                p = tmp_path / f"c{k}-{j}.firkin"
                firkin.dump({"k": k, "blob": bytes([k]) * (2 * CHUNK + 999 * j)}, p)
                assert firkin.verify(p).signature == "valid"
                assert firkin.load(p)["k"] == k
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.mark.skipif(not NATIVE, reason="built without OpenSSL")
def test_native_writer_contract(tmp_path):
    key, prefix = b"k", _sign._PREFIX + _sign.HEADER_FIXED
    value = {"x": 1, "blob": b"z" * (3 * CHUNK)}
    with open(tmp_path / "w.bin", "wb") as f:
        with pytest.raises(ValueError, match="not both"):
            _core.Writer(f.fileno(), signer=lambda b: None, sign_key=key, sign_prefix=prefix)
        w = _core.Writer(f.fileno(), sign_key=key, sign_prefix=prefix)
        with pytest.raises(RuntimeError, match="after a successful dump"):
            w.sign_digest(b"")
        w.dump(value, 5)
        stream_len = w.signed_bytes
        digest = w.sign_digest(_sign._tail(stream_len, b"{}"))
        with pytest.raises(RuntimeError, match="signing the pickle stream failed"):
            w.sign_digest(b"")  # final once
    # the same stream, collected by a Python signer callback, under Python's HMAC
    chunks = []
    with open(tmp_path / "p.bin", "wb") as f:
        _core.Writer(f.fileno(), signer=lambda mv: chunks.append(bytes(mv))).dump(value, 5)
    stream = b"".join(chunks)
    assert len(chunks) >= 3 and len(stream) == stream_len
    assert digest == _sign._digest(key, _sign.HEADER_FIXED, stream, b"{}")


def test_python_signer_without_native(tmp_path, monkeypatch):
    """What a build without OpenSSL does, on this build: the writer feeds
    Signer.update, which hashes on the spot."""
    monkeypatch.setattr(_sign.Signer, "native", False)
    seen = []
    real = _sign.Signer.update

    def spy(self, chunk):
        seen.append(len(chunk))
        real(self, chunk)

    monkeypatch.setattr(_sign.Signer, "update", spy)
    path = tmp_path / "py.firkin"
    _api.dump(_stream_of(3 * CHUNK), path)
    assert len(seen) >= 3 and firkin.verify(path).signature == "valid"


NULL_PROVIDER_CONF = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
null = null_sect
[null_sect]
activate = 1
"""


def test_openssl_without_hmac_falls_back_to_the_python_signer(tmp_path):
    """An OpenSSL configured with no usable provider cannot give HMAC-SHA256:
    dumps are still signed (by hashlib's own SHA-256), never refused."""
    conf = tmp_path / "null.cnf"
    conf.write_text(NULL_PROVIDER_CONF)
    code = textwrap.dedent("""
        import sys, firkin
        from firkin import _sign
        firkin.dump({"blob": b"x" * 3_000_000}, sys.argv[1])
        print(_sign.Signer.native, firkin.verify(sys.argv[1]).signature)
    """)
    env = dict(os.environ, OPENSSL_CONF=str(conf))
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "n.firkin")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "valid"], proc.stdout
    # and the file verifies here too, under the normal OpenSSL configuration
    assert firkin.verify(tmp_path / "n.firkin").signature == "valid"
