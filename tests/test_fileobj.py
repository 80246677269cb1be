"""dump/load through paths of every kind and through file objects."""
from __future__ import annotations

import io
import math
import os
import struct
import threading

import numpy as np
import pytest

import firkin
import firkin._source

from _support import PipeSink


def make_obj(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "big": rng.standard_normal(20_000),            # out-of-band at the default threshold
        "small": np.arange(seed, seed + 10),            # in the pickle stream
        "text": f"object {seed}",
        "list": [seed, 2.5, None, (1, 2)],
    }


def assert_same(x, y):
    assert set(x) == set(y)
    np.testing.assert_array_equal(x["big"], y["big"])
    np.testing.assert_array_equal(x["small"], y["small"])
    assert x["big"].dtype == y["big"].dtype
    assert x["text"] == y["text"] and x["list"] == y["list"]


class NonSeekableReader(io.RawIOBase):
    """A read-only stream that cannot seek (like a socket or a pipe)."""

    def __init__(self, data: bytes):
        self._src = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, b):
        return self._src.readinto(b)

    def seek(self, *a):
        raise io.UnsupportedOperation("seek")

    def tell(self):
        raise io.UnsupportedOperation("tell")


class NonSeekableWriter(io.RawIOBase):
    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def seekable(self):
        return False

    def write(self, b):
        self.data += bytes(b)
        return len(b)


class SeekableNoFileno(io.RawIOBase):
    """Seekable binary file object without a file descriptor."""

    def __init__(self, data=b""):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def writable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, b):
        return self._b.readinto(b)

    def write(self, b):
        return self._b.write(b)

    def seek(self, pos, whence=0):
        return self._b.seek(pos, whence)

    def tell(self):
        return self._b.tell()

    def getvalue(self):
        return self._b.getvalue()


# ----------------------------------------------------------------- paths

def test_str_path(tmp_path):
    obj = make_obj()
    fn = str(tmp_path / "a.fk")
    res = firkin.dump(obj, fn)
    assert res == [fn] and type(res[0]) is str
    assert res[0] is fn
    assert_same(firkin.load(fn), obj)


def test_pathlib_path(tmp_path):
    obj = make_obj()
    fn = tmp_path / "b.fk"
    res = firkin.dump(obj, fn)
    assert res == [str(fn)] and type(res[0]) is str
    assert_same(firkin.load(fn), obj)
    assert_same(firkin.load(str(fn)), obj)


def test_custom_pathlike(tmp_path):
    class P:
        def __init__(self, p):
            self.p = p

        def __fspath__(self):
            return self.p

    obj = make_obj()
    fn = str(tmp_path / "c.fk")
    assert firkin.dump(obj, P(fn)) == [fn]
    assert_same(firkin.load(P(fn)), obj)


def test_bytes_path(tmp_path):
    obj = make_obj()
    fn = os.fsencode(tmp_path / "d.fk")
    res = firkin.dump(obj, fn)
    assert res == [os.fsdecode(fn)] and type(res[0]) is str
    assert os.path.exists(fn)
    assert_same(firkin.load(fn), obj)
    assert_same(firkin.load(fn, mmap_mode="r"), obj)
    assert firkin.load_metadata(os.fsdecode(fn))["buffers"] == 1


def test_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    obj = make_obj()
    assert firkin.dump(obj, "rel.fk") == ["rel.fk"]
    assert (tmp_path / "rel.fk").exists()
    assert_same(firkin.load("rel.fk"), obj)


def test_unicode_path(tmp_path):
    obj = make_obj()
    fn = tmp_path / "ümlaut ✓ spaces.fk"
    assert firkin.dump(obj, fn) == [str(fn)]
    assert_same(firkin.load(fn), obj)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        firkin.load(tmp_path / "nope.fk")
    with pytest.raises(FileNotFoundError):
        firkin.load_metadata(tmp_path / "nope.fk")


# ----------------------------------------------------------- file objects

def test_open_binary_file(tmp_path):
    obj = make_obj()
    fn = tmp_path / "f.fk"
    with open(fn, "wb") as f:
        assert firkin.dump(obj, f) is None
        end = f.tell()
    assert end == fn.stat().st_size
    with open(fn, "rb") as f:
        assert_same(firkin.load(f), obj)
        assert f.tell() == end
    # the file written through a file object is a normal firkin file
    assert_same(firkin.load(fn), obj)
    assert_same(firkin.load(fn, mmap_mode="r"), obj)


def test_unbuffered_binary_file(tmp_path):
    obj = make_obj()
    fn = tmp_path / "raw.fk"
    with open(fn, "wb", buffering=0) as f:
        assert firkin.dump(obj, f) is None
    with open(fn, "rb", buffering=0) as f:
        assert_same(firkin.load(f), obj)


def test_read_write_file_object(tmp_path):
    obj = make_obj()
    fn = tmp_path / "rw.fk"
    with open(fn, "w+b") as f:
        firkin.dump(obj, f)
        f.seek(0)
        assert_same(firkin.load(f), obj)  # unflushed buffered data is seen


def test_bytesio():
    obj = make_obj()
    bio = io.BytesIO()
    assert firkin.dump(obj, bio) is None
    assert bio.tell() == len(bio.getvalue())
    bio.seek(0)
    assert_same(firkin.load(bio), obj)
    assert bio.tell() == len(bio.getvalue())
    assert bio.getvalue() == firkin.dumps(obj) or len(bio.getvalue()) == len(firkin.dumps(obj))


def test_file_object_without_fileno():
    obj = make_obj()
    f = SeekableNoFileno()
    assert firkin.dump(obj, f) is None
    f.seek(0)
    assert_same(firkin.load(f), obj)
    assert_same(firkin.loads(f.getvalue()), obj)


def test_dumps_loads_match_dump(tmp_path):
    obj = make_obj(3)
    fn = tmp_path / "m.fk"
    with open(fn, "wb") as f:  # a file object: small arrays packed, as dumps writes them
        firkin.dump(obj, f)
    b = firkin.dumps(obj)
    assert isinstance(b, bytes)
    assert len(b) == fn.stat().st_size
    assert_same(firkin.loads(fn.read_bytes()), obj)
    assert_same(firkin.loads(b), obj)
    firkin.dump(obj, fn)  # a path: the same layout (format 1.3 packed section)
    assert_same(firkin.loads(fn.read_bytes()), obj)


# --------------------------------------------- several objects in one file

@pytest.mark.parametrize("kind", ["file", "bytesio", "nofileno"])
def test_several_objects_in_one_file_object(tmp_path, kind):
    objs = [make_obj(i) for i in range(4)] + [{"empty": []}, 42]
    if kind == "file":
        f = open(tmp_path / "multi.fk", "w+b")
    elif kind == "bytesio":
        f = io.BytesIO()
    else:
        f = SeekableNoFileno()
    ends = []
    with f:
        for o in objs:
            assert firkin.dump(o, f) is None
            ends.append(f.tell())
        assert ends == sorted(ends) and len(set(ends)) == len(ends)
        f.seek(0)
        for o, end in zip(objs, ends):
            got = firkin.load(f)
            assert f.tell() == end  # positioned right after this container
            if isinstance(o, dict) and "big" in o:
                assert_same(got, o)
            else:
                assert got == o
        # at the end of the data now
        assert f.read() == b""


@pytest.mark.parametrize("mode", ["ab", "a+b"])
def test_dumps_appended_to_a_file_load_in_turn(tmp_path, mode):
    """A file opened for appending writes only at its end, so the header
    cannot be patched: it gets the streamed layout, which delimits itself."""
    fn = tmp_path / "appended.fk"
    fn.write_bytes(b"")
    objs = [make_obj(1), [np.arange(3)], 42]
    for o in objs:
        with open(fn, mode) as f:
            assert firkin.dump(o, f) is None
    assert_same(firkin.load(fn), objs[0])  # the first, from its path
    with open(fn, "rb") as f:
        for o in objs:
            got = firkin.load(f)
            if isinstance(o, dict):
                assert_same(got, o)
            else:
                np.testing.assert_equal(got, o)
        assert f.read() == b""


def test_several_objects_then_other_data(tmp_path):
    fn = tmp_path / "mixed.bin"
    with open(fn, "wb") as f:
        f.write(b"HEAD")
        firkin.dump(make_obj(1), f)
        f.write(b"MIDDLE")
        firkin.dump(make_obj(2), f)
        f.write(b"TAIL")
    with open(fn, "rb") as f:
        assert f.read(4) == b"HEAD"
        assert_same(firkin.load(f), make_obj(1))
        assert f.read(6) == b"MIDDLE"
        assert_same(firkin.load(f), make_obj(2))
        assert f.read() == b"TAIL"


def test_nonzero_start_offset(tmp_path):
    obj = make_obj(5)
    prefix = b"some other header data " * 7 + b"x"  # odd length, not aligned
    fn = tmp_path / "offset.bin"
    with open(fn, "wb") as f:
        f.write(prefix)
        firkin.dump(obj, f)
    with open(fn, "rb") as f:
        f.seek(len(prefix))
        assert_same(firkin.load(f), obj)
        assert f.tell() == fn.stat().st_size
    bio = io.BytesIO(fn.read_bytes())
    bio.seek(len(prefix))
    assert_same(firkin.load(bio), obj)
    with open(fn, "rb") as f:
        f.seek(len(prefix))
        assert firkin.load_metadata(f)["buffers"] == 1
        assert f.tell() == len(prefix)


def test_start_offset_past_end(tmp_path):
    fn = tmp_path / "short.bin"
    fn.write_bytes(firkin.dumps([1]))
    with open(fn, "rb") as f:
        f.seek(10_000)
        with pytest.raises(firkin.FormatError):
            firkin.load(f)


# ------------------------------------------------------- non-seekable I/O

def test_load_from_non_seekable_wrapper():
    obj = make_obj(7)
    stream = NonSeekableReader(firkin.dumps(obj))
    assert not stream.seekable()
    assert_same(firkin.load(stream), obj)


def test_load_from_pipe():
    obj = make_obj(8)
    data = firkin.dumps(obj)
    r, w = os.pipe()

    def feed():
        with os.fdopen(w, "wb") as wf:
            wf.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        with os.fdopen(r, "rb") as rf:
            assert not rf.seekable()
            assert_same(firkin.load(rf), obj)
    finally:
        t.join(timeout=30)


def test_dump_to_non_seekable_stream():
    obj = make_obj(9)
    out = NonSeekableWriter()
    assert firkin.dump(obj, out) is None
    data = bytes(out.data)
    assert_same(firkin.loads(data), obj)
    assert_same(firkin.load(NonSeekableReader(data)), obj)
    assert_same(firkin.load(io.BytesIO(data)), obj)


def test_dump_to_pipe():
    obj = make_obj(10)
    r, w = os.pipe()
    chunks = []

    def drain():
        with os.fdopen(r, "rb") as rf:
            chunks.append(rf.read())

    t = threading.Thread(target=drain)
    t.start()
    with os.fdopen(w, "wb") as wf:
        assert firkin.dump(obj, wf) is None
    t.join(timeout=30)
    assert_same(firkin.loads(chunks[0]), obj)


# ----------------------------------------------------------- mmap_mode

def test_mmap_mode_with_file_object_warns_and_loads_in_memory(tmp_path):
    obj = make_obj(11)
    fn = tmp_path / "w.fk"
    firkin.dump(obj, fn)
    for mode in ("r", "r+", "c", "w+"):
        with open(fn, "rb") as f:
            with pytest.warns(UserWarning, match="mmap_mode"):
                got = firkin.load(f, mmap_mode=mode)
        assert_same(got, obj)
        assert not isinstance(got["big"], np.memmap)
        assert got["big"].flags.writeable
    bio = io.BytesIO(fn.read_bytes())
    with pytest.warns(UserWarning):
        got = firkin.load(bio, mmap_mode="r")
    assert_same(got, obj)
    assert not isinstance(got["big"], np.memmap)
    # the loaded arrays do not share memory with the BytesIO
    got["big"][:] = 0
    bio.seek(0)
    assert_same(firkin.load(bio), obj)


def test_no_warning_without_mmap_mode(tmp_path, recwarn):
    bio = io.BytesIO(firkin.dumps(make_obj()))
    firkin.load(bio)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


# --------------------------------------------------------- wrong inputs

def test_load_from_text_mode_file_is_clear_error(tmp_path):
    fn = tmp_path / "t.fk"
    firkin.dump(make_obj(), fn)
    with open(fn, "r", encoding="latin-1") as f:
        with pytest.raises((TypeError, ValueError)) as info:
            firkin.load(f)
    msg = str(info.value).lower()
    assert "binary" in msg or "text" in msg, msg


def test_dump_to_text_mode_file_is_clear_error(tmp_path):
    fn = tmp_path / "t2.fk"
    with open(fn, "w") as f:
        with pytest.raises(TypeError):
            firkin.dump(make_obj(), f)


class BrokenReader(io.RawIOBase):
    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, pos, whence=0):
        return 1000 if whence == 2 else pos

    def tell(self):
        return 0

    def readinto(self, b):
        raise OSError("disk on fire")


class BrokenWriter:
    def write(self, b):
        raise OSError("disk full")


def test_load_propagates_read_error():
    with pytest.raises(OSError, match="disk on fire"):
        firkin.load(BrokenReader())


def test_dump_propagates_write_error():
    with pytest.raises(OSError, match="disk full"):
        firkin.dump(make_obj(), BrokenWriter())


@pytest.mark.parametrize("bad", [123, None, 4.5, ["a.fk"], object()])
def test_load_wrong_type(bad):
    with pytest.raises(TypeError):
        firkin.load(bad)


@pytest.mark.parametrize("bad", [123, None, 4.5, ["a.fk"], {"a": 1}, object()])
def test_dump_second_argument_wrong_type(bad):
    with pytest.raises(TypeError):
        firkin.dump(make_obj(), bad)


def test_dump_swapped_arguments(tmp_path):
    fn = str(tmp_path / "swapped.fk")
    with pytest.raises(TypeError, match="swap"):
        firkin.dump(fn, make_obj())
    assert not os.path.exists(fn)


# ----------------------------------------------------------- loads inputs

@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)),
                                  lambda b: np.frombuffer(b, dtype=np.uint8)],
                         ids=["bytes", "bytearray", "memoryview", "memoryview-bytearray", "ndarray"])
def test_loads_bytes_like(wrap):
    obj = make_obj(12)
    data = firkin.dumps(obj)
    got = firkin.loads(wrap(data))
    assert_same(got, obj)
    got["big"][:] = 1  # writable, independent of the input
    assert_same(firkin.loads(wrap(data)), obj)


def test_loads_slice_of_larger_buffer():
    obj = make_obj(13)
    data = firkin.dumps(obj)
    big = bytearray(b"\0" * 100) + bytearray(data) + bytearray(b"\1" * 50)
    assert_same(firkin.loads(memoryview(big)[100:100 + len(data)]), obj)


@pytest.mark.parametrize("bad", ["text", 123, None, [1, 2], 2.5])
def test_loads_wrong_type(bad):
    """loads takes bytes-like objects only: not a str, not a file descriptor number."""
    with pytest.raises(TypeError):
        firkin.loads(bad)


def test_dumps_with_metadata_round_trip():
    data = firkin.dumps([1, 2], metadata={"model": "x", "n": [1, 2]})
    assert firkin.loads(data) == [1, 2]
    assert firkin.load_metadata(io.BytesIO(data))["user"] == {"model": "x", "n": [1, 2]}


def test_gzip_file_objects_round_trip():
    """GzipFile: an int mode, and 'seekable' in write mode without seeking back."""
    import gzip

    value = {"a": np.arange(100_000), "s": "x"}
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as g:
        assert firkin.dump(value, g) is None
    raw.seek(0)
    with gzip.GzipFile(fileobj=raw, mode="rb") as g:
        out = firkin.load(g)
    np.testing.assert_array_equal(out["a"], value["a"])
    assert out["s"] == "x"


# ------------------------------------------- file objects of every kind

def _fsspec_memory_file(name):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    return fs, f"/dropin/{name}"


def _write_kind(kind, writer_kind, obj, path):
    """Dump `obj` with `writer_kind` ('firkin', 'joblib', 'pickle') through a
    file object of `kind`; returns a function that opens it for reading."""
    import bz2
    import gzip
    import lzma
    import pickle

    import joblib

    write = {"firkin": firkin.dump, "joblib": joblib.dump,
             "pickle": lambda o, f: pickle.dump(o, f, protocol=5)}[writer_kind]
    wrappers = {"gzip": gzip.GzipFile, "bz2": bz2.BZ2File, "lzma": lzma.LZMAFile}
    if kind in wrappers:
        with wrappers[kind](path, "wb") as f:
            write(obj, f)
        return lambda: wrappers[kind](path, "rb")
    if kind == "bytesio":
        buf = io.BytesIO()
        write(obj, buf)
        return lambda: io.BytesIO(buf.getvalue())
    if kind == "user":
        f = SeekableNoFileno()
        write(obj, f)
        return lambda: SeekableNoFileno(f.getvalue())
    if kind == "fsspec":
        fs, name = _fsspec_memory_file(path.name)
        with fs.open(name, "wb") as f:
            write(obj, f)
        return lambda: fs.open(name, "rb")
    raise AssertionError(kind)


@pytest.mark.parametrize("writer_kind", ["firkin", "joblib", "pickle"])
@pytest.mark.parametrize("kind", ["gzip", "bz2", "lzma", "bytesio", "user", "fsspec"])
def test_file_objects_are_read_through_their_own_read(tmp_path, kind, writer_kind):
    """Decompressing wrappers, BytesIO, fsspec and user file objects: what a
    dump wrote through them loads back through the same kind of object
    (never through the descriptor underneath), for firkin, joblib and
    pickle files, under the default policy."""
    obj = make_obj(21)
    opener = _write_kind(kind, writer_kind, obj, tmp_path / f"through.{kind}")
    with opener() as f:
        assert_same(firkin.load(f), obj)
    if kind in ("gzip", "bz2", "lzma"):
        # the raw compressed file loads too, as joblib loads it
        assert_same(firkin.load(tmp_path / f"through.{kind}"), obj)
        with open(tmp_path / f"through.{kind}", "rb") as f:
            assert_same(firkin.load(f), obj)


def test_plain_file_test():
    """Only plain files are read through their descriptor."""
    import gzip

    r, w = os.pipe()
    try:
        with os.fdopen(r, "rb") as pipe:
            assert firkin._source.plain_fd(pipe) is None  # a pipe: not a regular file
    finally:
        os.close(w)
    with open(__file__, "rb") as f:
        assert firkin._source.plain_fd(f) == f.fileno()
        assert firkin._source.plain_fd(gzip.GzipFile(fileobj=f)) is None
    assert firkin._source.plain_fd(io.BytesIO()) is None


def test_compressed_firkin_file_bomb_is_bounded(tmp_path):
    """A gzipped firkin file inflates under max_memory like a joblib file;
    what follows the container inside the compressed data is refused at
    once, whatever max_memory allows."""
    import gzip

    fn = tmp_path / "bomb.gz"
    with gzip.GzipFile(fn, "wb") as f:
        f.write(firkin.dumps([1]))
        f.write(bytes(200 << 20))
    for limit in (1 << 20, math.inf):
        with pytest.raises(firkin.FormatError, match="goes on after the firkin container"):
            firkin.load(fn, max_memory=limit)
    # inside the container: a streamed container's frames of zeros inflate
    # as they arrive, charged to max_memory
    out = PipeSink()  # cannot seek: firkin writes the streamed layout
    firkin.dump([1], out)
    header = bytes(out.data[:64])
    assert struct.unpack_from("<Q", header, 16)[0] & firkin._core.REQ_STREAMED
    frame = 1 << 20
    with gzip.GzipFile(fn, "wb") as f:
        f.write(header)
        for _ in range(200):
            f.write(struct.pack("<I", frame) + bytes(frame))
    with pytest.raises(firkin.UntrustedTypesError, match="max_memory"):
        firkin.load(fn, max_memory=1 << 20)


# ------------------------------------------------ joblib's argument semantics

def test_arguments_checked_before_the_file_system(tmp_path):
    missing = tmp_path / "missing.pkl"
    with pytest.raises(ValueError, match="mmap_mode"):
        firkin.load(missing, mmap_mode="rw")
    with pytest.raises(ValueError, match="Native byte ordering can only be enforced"):
        firkin.load(missing, mmap_mode="r+", ensure_native_byte_order=True)
    with pytest.raises(ValueError, match="threads"):
        firkin.load(missing, threads=0)
    with pytest.raises(ValueError, match='Non valid compress level given: "10"'):
        firkin.dump([1], tmp_path / "sub" / "x.pkl", compress=10)
    with pytest.raises(ValueError, match='Non valid compression method given: "wrong"'):
        firkin.dump([1], tmp_path / "sub" / "x.pkl", compress=("wrong", 3))
    with pytest.raises(ValueError, match="Compress argument tuple should contain exactly 2"):
        firkin.dump([1], tmp_path / "sub" / "x.pkl", compress=("zlib", 3, "x"))
    with pytest.raises(ValueError, match='Non valid compress level given: "{}"'):
        firkin.dump([1], tmp_path / "sub" / "x.pkl", compress={})
    assert not os.listdir(tmp_path)


def test_swapped_dump_arguments_raise_joblibs_value_error():
    for exc in (ValueError, TypeError):
        with pytest.raises(exc, match="swap"):
            firkin.dump("foo", {})


def test_file_object_at_its_end_after_a_dump_loads_from_its_start(tmp_path):
    obj = make_obj(22)
    for make in (io.BytesIO, lambda: open(tmp_path / "end.fk", "w+b")):
        with make() as f:
            firkin.dump(obj, f)
            assert f.read(1) == b""
            assert_same(firkin.load(f), obj)


def test_mmap_mode_on_file_objects_warns_as_joblib(tmp_path):
    import gzip

    obj = make_obj(23)
    buf = io.BytesIO()
    firkin.dump(obj, buf)
    buf.seek(0)
    with pytest.warns(UserWarning, match="In memory persistence is not compatible with mmap_mode"):
        assert_same(firkin.load(buf, mmap_mode="r+"), obj)
    with gzip.GzipFile(tmp_path / "o.gz", "wb") as f:
        firkin.dump(obj, f)
    with gzip.GzipFile(tmp_path / "o.gz", "rb") as f:
        with pytest.warns(UserWarning, match="is not a raw file, mmap_mode"):
            assert_same(firkin.load(f, mmap_mode="r"), obj)
    zeros = {"z": np.zeros(100_000), "small": np.arange(3)}  # compresses: nothing to map
    firkin.dump(zeros, tmp_path / "c.firkin", compress=3)
    with pytest.warns(UserWarning, match='mmap_mode "r" is not compatible with compressed file'):
        out = firkin.load(tmp_path / "c.firkin", mmap_mode="r")
    assert not isinstance(out["z"], np.memmap) and not out["z"].any()
