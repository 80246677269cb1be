"""Pickle streams written opcode by opcode for the tests, and the malicious
corpus: each payload, loaded with plain pickle, creates a sentinel file
(so every one is a real exploit); through firkin's policy nothing runs.
containers() puts a stream in every kind of file firkin reads.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import shlex
import struct
import zlib

from _container import firkin_container, streamed_layout


def _s0(s):  # protocol 0 STRING
    return b"S" + repr(s).encode() + b"\n"


def _u(s):  # SHORT_BINUNICODE / BINUNICODE
    b = s.encode()
    return (b"\x8c" + bytes([len(b)]) + b) if len(b) < 256 else (b"X" + struct.pack("<I", len(b)) + b)


def _g(module, name):  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _sg(module, name):  # STACK_GLOBAL through the memo
    return _u(module) + b"\x94" + _u(name) + b"\x94" + b"\x93"


def _frame(body):  # FRAME around the rest of the stream
    return b"\x95" + struct.pack("<Q", len(body)) + body


def _bytes(b):  # SHORT_BINBYTES / BINBYTES
    return (b"C" + bytes([len(b)]) + b) if len(b) < 256 else (b"B" + struct.pack("<I", len(b)) + b)


P4 = b"\x80\x04"


def _payloads(sentinel):
    """name -> (payload bytes, culprit names untrusted_types must list, finisher)"""
    path = str(sentinel)
    cmd = "touch " + shlex.quote(path)
    code = f"open({path!r}, 'w').close()"
    done = None  # nothing to finish: the load itself creates the file

    def wait(popen):
        popen.wait()

    def close(f):
        f.close()

    inner = _g("os", "system") + b"(" + _s0(cmd) + b"tR."
    p = {
        "os.system GLOBAL+REDUCE": (_g("os", "system") + b"(" + _s0(cmd) + b"tR.", ["os.system"], done),
        "os.system INST": (b"(" + _s0(cmd) + b"i" + b"os\nsystem\n.", ["os.system"], done),
        "os.system OBJ": (b"(" + _g("os", "system") + _s0(cmd) + b"o.", ["os.system"], done),
        "posix.system": (_g("posix", "system") + b"(" + _s0(cmd) + b"tR.", ["posix.system"], done),
        "__builtin__.eval protocol 0": (_g("__builtin__", "eval") + b"(" + _s0(code) + b"tR.",
                                        ["builtins.eval"], done),
        "builtins.exec": (P4 + _sg("builtins", "exec") + _u(code) + b"\x85R.", ["builtins.exec"], done),
        "builtins.eval": (P4 + _g("builtins", "eval") + _u(code) + b"\x85R.", ["builtins.eval"], done),
        "builtins.open": (P4 + _g("builtins", "open") + _u(path) + _u("w") + b"\x86R.",
                          ["builtins.open"], close),
        "__import__ + getattr chain": (
            P4 + _g("builtins", "getattr") + _g("builtins", "__import__") + _u("os") + b"\x85R"
            + _u("system") + b"\x86R" + _u(cmd) + b"\x85R.",
            ["builtins.__import__", "builtins.getattr"], done),
        "STACK_GLOBAL through memo and FRAME": (
            P4 + _frame(_u("os") + b"q\x07" + b"0" + _u("sys") + b"h\x07" + b"2" + b"0" + b"q\x08"
                        + b"0" + _u("system") + b"r\x09\x00\x00\x00" + b"0"
                        + b"h\x07j\x09\x00\x00\x00\x93" + _u(cmd) + b"\x85R."),
            ["os.system"], done),
        "sklearn + __builtins__.get": (
            P4 + _sg("sklearn", "__builtins__.get") + _u("eval") + b"\x85R" + _u(code) + b"\x85R.",
            ["sklearn.__builtins__.get"], done),
        "numpy + ndarray.tofile": (
            P4 + _sg("numpy", "ndarray.tofile") + _sg("numpy._core.multiarray", "_reconstruct")
            + _g("numpy", "ndarray") + b"K\x00\x85" + _bytes(b"b") + b"\x87R" + _u(path) + b"\x86R.",
            ["numpy.ndarray.tofile"], done),
        "pathlib + Path.touch": (
            P4 + _sg("pathlib", "Path.touch") + _sg("pathlib", "Path") + _u(path) + b"\x85R\x85R.",
            ["pathlib.Path", "pathlib.Path.touch"], done),
        "pkgutil.resolve_name": (
            P4 + _g("pkgutil", "resolve_name") + _u("os:system") + b"\x85R" + _u(cmd) + b"\x85R.",
            ["pkgutil.resolve_name"], done),
        "importlib.import_module + operator.attrgetter": (
            P4 + _g("operator", "attrgetter") + _u("system") + b"\x85R"
            + _g("importlib", "import_module") + _u("os") + b"\x85R\x85R" + _u(cmd) + b"\x85R.",
            ["importlib.import_module", "operator.attrgetter"], done),
        "subprocess.Popen": (
            P4 + _g("subprocess", "Popen") + b"(" + _u("touch") + _u(path) + b"l\x85R.",
            ["subprocess.Popen"], wait),
        "os.popen": (P4 + _g("os", "popen") + _u(cmd) + b"\x85R.", ["os.popen"], close),
        "cProfile.run": (P4 + _g("cProfile", "run") + _u(code) + b"\x85R.", ["cProfile.run"], done),
        "nested pickle.loads": (P4 + _g("pickle", "loads") + _bytes(inner) + b"\x85R.",
                                ["pickle.loads"], done),
        "_pickle.loads": (P4 + _g("_pickle", "loads") + _bytes(inner) + b"\x85R.",
                          ["_pickle.loads"], done),
        "runpy via code string": (P4 + _g("runpy", "_run_code") + _u(code) + b"}\x86R.",
                                  ["runpy._run_code"], done),
        "BUILD shadowing __setstate__ on an estimator": (
            # a LogisticRegression whose first BUILD puts os.system in its
            # __dict__ as __setstate__; the second BUILD then calls it
            P4 + _g("copyreg", "_reconstructor")
            + _sg("sklearn.linear_model._logistic", "LogisticRegression")
            + _g("builtins", "object") + b"N\x87R"
            + b"}" + _u("__setstate__") + _g("os", "system") + b"sb"
            + _u(cmd) + b"b.", ["os.system"], done),
    }
    return p


def _binunicode(s):  # BINUNICODE only (a fixed width, whatever the length)
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def joblib_array_prefix(values=8) -> bytes:
    """The start of a joblib stream as joblib >= 0.10 writes it: one float64
    array as a NumpyArrayWrapper (NEWOBJ + state dict + BUILD) followed by
    the array's raw bytes, then POP and PROTO 2. Nothing is memoized, so a payload
    stream appended after it (PROTO ... STOP) keeps its memo keys and its
    result is what the file loads as."""
    _bu = _binunicode
    dtype = (_g("numpy", "dtype") + _bu("f8") + b"\x89\x88\x87R"
             + b"(K\x03" + _bu("<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    state = (b"}(" + _bu("subclass") + _g("numpy", "ndarray") + _bu("shape") + b"K" + bytes([values])
             + b"\x85" + _bu("order") + _bu("C") + _bu("dtype") + dtype + _bu("allow_mmap") + b"\x88"
             + b"u")
    wrapper = b"\x80\x04" + _g("joblib.numpy_pickle", "NumpyArrayWrapper") + b")\x81" + state + b"b"
    # PROTO 2 last: a payload without PROTO (protocol 0) keeps the Python 2 name mapping
    return wrapper + struct.pack(f"<{values}d", *range(values)) + b"0\x80\x02"


def _containers(data: bytes):
    """data (a pickle stream) in every kind of file firkin reads: a plain
    pickle, joblib files (compressed, and after a real array's bytes), firkin
    containers unsigned and signed with another key (formats 1.0 and 1.1)."""
    in_joblib = joblib_array_prefix() + data  # a payload after a real array's bytes
    return {
        "pickle": data,
        "joblib-zlib": zlib.compress(data, 3),  # joblib's compress=3 file: a zlib stream
        "joblib-gzip": gzip.compress(data),
        "joblib-arrays": in_joblib,
        "joblib-arrays-zlib": zlib.compress(in_joblib, 3),
        "firkin-other-key": firkin_container(data, key=b"mallory's key"),
        "firkin-1.1-other-key": firkin_container(data, key=b"mallory's key", version=2),
        "firkin-unsigned": firkin_container(data),
        "firkin-streamed": streamed_layout(firkin_container(data)),
        "firkin-streamed-other-key": streamed_layout(firkin_container(data, key=b"mallory's key",
                                                                      version=2)),
        # firkin files compressed as a whole (dump(..., compress='gzip') and the like)
        "firkin-gzip-streamed-other-key": gzip.compress(streamed_layout(firkin_container(
            data, key=b"mallory's key", version=2))),
        "firkin-zlib-unsigned": zlib.compress(firkin_container(data), 3),
        "firkin-bz2-streamed": bz2.compress(streamed_layout(firkin_container(data))),
        "firkin-xz-other-key": lzma.compress(firkin_container(data, key=b"mallory's key")),
        "firkin-lzma-streamed": lzma.compress(streamed_layout(firkin_container(data)),
                                              format=lzma.FORMAT_ALONE),
    }
