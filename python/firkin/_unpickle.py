"""From a checked pickle stream to objects: the trust decision (the
allowlist, else a signature under your key) made before anything is built,
and the unpickler with firkin's hooks (numpy's _frombuffer behind the dtype
check; arrays over the file's mapping kept as np.memmap)."""
from __future__ import annotations

import functools
import pickle

import numpy as np

from . import _amplify, _byteorder, _byvalue, _core, _guards, _meta, _sign, _trust
from ._core import FormatError

# numpy's reconstructor for protocol-5 arrays, as pickled by this numpy
_NP_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
_NP_FROMBUFFER_NAMES = {
    (mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")
}


def _frombuffer_native(buf, dtype, shape, order, axis_order=None):
    """numpy's _frombuffer, converting an array of the other byte order to
    this machine's (joblib's ensure_native_byte_order)."""
    if axis_order is None:
        return _byteorder.to_native(_NP_FROMBUFFER(buf, dtype, shape, order))
    return _byteorder.to_native(_NP_FROMBUFFER(buf, dtype, shape, order, axis_order))


class _Hooks:
    """Put before an unpickler class (the policy's too, whose find_class would
    hand out its own guard first): numpy's _frombuffer becomes FROMBUFFER,
    behind the runtime dtype check (firkin._guards)."""

    FROMBUFFER = None

    def find_class(self, module, name):
        if (module, name) in _NP_FROMBUFFER_NAMES:
            return self.FROMBUFFER
        return super().find_class(module, name)


def mapped_arrays(mm):
    """numpy's _frombuffer for a load over the np.memmap `mm` of the whole
    container, behind the dtype check: an array whose bytes lie in mm is an
    np.memmap made straight on that mapping, as np.memmap makes itself (one
    C call per array: small arrays are many), with the mapping's mode and
    filename, flush() and its offset in the file (firkin._core.MappedArrays)."""
    return _guards.checked_maker(_core.MappedArrays(mm), "numpy._core.numeric._frombuffer", 1,
                                 "dtype", True)


class _MmapHooks(_Hooks):
    """Arrays over the file's mapping stay np.memmap: FROMBUFFER is the
    load's own mapped_arrays, set on the unpickler."""


class _NativeHooks(_Hooks):
    """Arrays come back in native byte order."""

    FROMBUFFER = _guards.checked_maker(_frombuffer_native, "numpy._core.numeric._frombuffer", 1,
                                       "dtype", True, native_fast=_NP_FROMBUFFER)


class _TrustedNativeHooks(_Hooks):
    """Arrays come back in native byte order, with nothing checked or
    recorded (trusted=True, or a file trusted by its signature): a native
    dtype, plain or structured, goes straight to numpy, tested in C, and only
    foreign dtypes through the Python converter."""

    FROMBUFFER = _core.DtypeGuard(_NP_FROMBUFFER, _frombuffer_native, 1, native=True,
                                  structured=True)


_SIGNATURE_NOTES = {
    _sign.UNSIGNED: "The file is not signed.",
    _sign.OTHER_KEY: "The file is signed, but with another key than yours (FIRKIN_KEY, else "
                     "firkin.set_key(), else your key file selects the key; yours now is {key}).",
    _sign.INVALID: "The file is signed with your key, but its contents changed after signing.",
    _sign.NO_KEY: "You have no signing key to check its signature with.",
}


def _refusal(reader, refused, status, detail=None):
    exc = _trust._error(reader.name, refused, "firkin.load")
    note = _SIGNATURE_NOTES[status].format(key=_sign.key_source()) + (f" ({detail})" if detail else "")
    if any(n.startswith("cloudpickle.") for n in refused):
        # code saved by value: only trusted=True can load it, whatever else it names
        exc.args = (_byvalue.refusal_message(reader.name, _by_value_entries(reader), note),) \
            + exc.args[1:]
    else:
        exc.args = (f"{exc.args[0]}\n{note}",) + exc.args[1:]
    return exc


class _SignedBuffers:
    """A file trusted by a signature that covers its array bytes: before
    anything is built, the hash of every buffer chunk read or mapped
    (computed as `hash_kwargs` say) must match the signature, or the load is
    refused as if the file were unsigned."""

    def __init__(self, reader, refused, signature):
        self.reader, self.refused, self.signature = reader, refused, signature
        self.hash_kwargs = signature.hash_kwargs

    def check(self, records: bytes) -> None:
        problem = self.signature.buffer_problem(records, self.reader.buffer_count)
        if problem and self.reader.flags & _core.FLAG_BUFFERS_MUTABLE:
            problem += ("; the file was opened with mmap_mode='r+', so its arrays may have been "
                        "changed in place on purpose")
        if problem:
            raise _refusal(self.reader, self.refused, _sign.INVALID, problem)


def check_trust(reader, stream, trusted):
    """Decide before anything is constructed. Returns (policy, signed):
    policy is True (load anything: trusted=True or the file is signed with
    your key) or the `trusted` names to enforce on top of the allowlist;
    signed is a _SignedBuffers when the policy rests on a signature that
    covers the buffers, which the caller checks before unpickling, else
    None. Files the allowlist accepts cost no signature work."""
    if trusted is True:
        return True, None
    info = _trust._scan(stream, reader.name)
    refused = _trust.untrusted(info["globals"], info["unsafe_ops"], trusted)
    if not refused:
        return trusted, None
    signature = _sign.check(reader, stream)
    if signature.status == _sign.VALID:
        # your own file: no friction (a format 1.0 signature vouches for the stream only)
        return True, _SignedBuffers(reader, refused, signature) if signature.covers_buffers else None
    raise _refusal(reader, refused, signature.status, signature.detail)


def _by_value_entries(reader) -> list:
    """What the writer recorded as saved by value (metadata "by_value")."""
    try:
        raw = reader.metadata()
        entries = _meta.parse(raw, reader.name).get("by_value") if raw else None
    except FormatError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


class _WholeStream:
    """A file for the C unpickler that hands over the whole stream at its
    first read: the unpickler keeps what it did not ask for as its input
    buffer and reads every frame from it in place, as pickle.loads does,
    where io.BytesIO would copy each frame."""

    __slots__ = ("_data",)

    def __init__(self, data):
        self._data = data if type(data) is bytes else bytes(data)  # read() must give bytes

    def read(self, n=-1):
        data, self._data = self._data, b""
        return data

    def readline(self):
        return self.read()

    def readinto(self, b):  # pragma: no cover - the unpickler reads buffers it has whole
        data = self.read()
        b[:len(data)] = data
        return len(data)


def unpickle(reader, stream, buffers, mapped, policy, budget=None, native=False):
    """mapped: the load's mapped_arrays when its buffers are slices of a
    mapping, else None. native: arrays of the other byte order come back in
    this machine's (never for mapped arrays: firkin._byteorder.resolve)."""
    hooks = (_MmapHooks if mapped is not None else None if not native else
             _TrustedNativeHooks if policy is True else _NativeHooks)
    try:
        if policy is True and hooks is None:
            return pickle.loads(stream, buffers=buffers)  # reads the bytes in place
        cls = pickle.Unpickler if policy is True else _trust.make_unpickler(pickle.Unpickler, policy)
        if hooks is not None:
            cls = _hooked_class(hooks, cls)
        unpickler = cls(_WholeStream(stream), buffers=buffers)
        if mapped is not None:
            unpickler.FROMBUFFER = mapped
        unpickler.fk_name = reader.name  # refusals name the file
        with _amplify.active(budget if policy is not True else None):
            return unpickler.load()
    except pickle.UnpicklingError as exc:
        raise FormatError(f"{reader.name}: the pickle stream is invalid: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _hooked_class(hooks, unpickler_cls):
    return type(f"_{hooks.__name__.strip('_')}{unpickler_cls.__name__.lstrip('_')}",
                (hooks, unpickler_cls), {})
