"""numpy dtypes whose pickled flags hide the object field they hold, made
through every way the allowlist lets a stream construct a dtype and set its
state (tests/crafted_dtypes.py builds them from opcodes).

numpy believes a dtype state's flags: arrays of such a dtype take object
pointers from the file's bytes, and the first element read dereferences one
(a crash, or worse). The static scan refuses them (this file's first half);
the loader checks every dtype that reaches numpy again at run time, so that
a scanner gap is not a bypass (second half, with the scan switched off)."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

import firkin
from firkin import _core

import crafted_dtypes as cd
from test_corpus_containers import _containers

REASONS = ("hide the objects", "cannot check", "cannot follow")


def _scan_reasons(data):
    return [u[2] for u in _core.scan_pickle(data)["unsafe_ops"] if len(u) > 2]


def _honest(data):
    # the same stream with the flags numpy computes for an object field (27)
    return data.replace(b"K\x10K\x08K\x00t", b"K\x10K\x08K\x1bt").replace(
        b"K\x10K\x08K\x01t", b"K\x10K\x08K\x1bt").replace(b"K\x10K\x08L0L\nt", b"K\x10K\x08L27L\nt")


@pytest.mark.parametrize("how", sorted(cd.STATES) + ["tuple(list) state"])
@pytest.mark.parametrize("maker", sorted(cd.MAKERS))
def test_every_way_to_make_a_dtype_is_followed(maker, how):
    data = cd.dtype_stream(maker, how)
    lying = pickle.loads(data)  # the stream is real: numpy takes the flags on trust
    assert lying.fields["a"][0] == np.dtype("O") and (lying.flags & 0x0b) != 0x0b
    reasons = _scan_reasons(data)
    assert len(reasons) == 1 and reasons[0].startswith("a numpy dtype"), reasons
    if how != "tuple(list) state":
        assert "hide the objects" in reasons[0], reasons  # followed, not just refused
        honest = _honest(data)
        assert pickle.loads(honest).flags & 0x0b == 0x0b
        assert _scan_reasons(honest) == [], (maker, how)


@pytest.mark.parametrize("use", cd.USES)
@pytest.mark.parametrize("maker", ["copyreg.__newobj_ex__", "pandas _new_Index", "REDUCE numpy.dtype"])
def test_refused_in_every_container(tmp_path, maker, use):
    data = cd.use_stream(use, cd.lying_dtype(maker, "LONG version"))
    for kind, blob in _containers(data).items():
        path = tmp_path / f"evil.{kind}"
        path.write_bytes(blob)
        with pytest.raises(firkin.UntrustedTypesError, match="before unpickling") as info:
            firkin.load(path)
        assert "hide the objects" in str(info.value), (kind, str(info.value))
        assert any("hide the objects" in n for n in firkin.untrusted_types(path)), kind


def test_numpy_needs_all_three_object_flags():
    # hasobject alone (flags 1) is not enough: without NPY_LIST_PICKLE numpy
    # takes the raw bytes as the array's object pointers and frees them
    code = ("import pickle, crafted_dtypes as cd\n"
            "x = pickle.loads(cd.use_stream('_reconstruct + BUILD', "
            "cd.lying_dtype('REDUCE numpy.dtype', 'refcount flag only')))\n"
            "assert x.dtype.hasobject\n"
            "del x\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(_here()), capture_output=True)
    assert res.returncode < 0, res.stderr  # the hazard: killed by a signal when the array is freed
    data = cd.use_stream("_reconstruct + BUILD", cd.lying_dtype("REDUCE numpy.dtype", "refcount flag only"))
    assert any("hide the objects" in r for r in _scan_reasons(data))


def _here():
    import pathlib

    return pathlib.Path(__file__).parent
