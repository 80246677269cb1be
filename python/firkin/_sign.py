"""Signing firkin files with the user's key (HMAC-SHA256).

A file you dumped yourself carries an HMAC-SHA256, under your key, of its
header's fixed part, its pickle stream and its metadata (docs/FORMAT.md,
"Signature"). load fully trusts a file whose signature verifies under the
current key; everything else goes through the allowlist. Array data is not
signed: it is data, not code, and its chunk checksums cover its integrity.

The key: FIRKIN_KEY (any string) when set, else what `set_key()` gave this
process, else the file $XDG_CONFIG_HOME/firkin/key (default
~/.config/firkin/key), created on first use with mode 0600.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import struct
import threading
import warnings

from . import _core
from ._core import FormatError

_PREFIX = b"firkin-signature-v1\0"
_MAGIC = b"FSIG"
_ALG_HMAC_SHA256 = 1
PAYLOAD_LEN = 64
#: the fixed part of every header firkin 1.0 writes: magic, version 1.0,
#: header length 64, no required features (docs/FORMAT.md)
HEADER_FIXED = b"\x89FRK\r\n\x1a\n" + struct.pack("<HHIQ", 1, 0, 64, 0)

_lock = threading.Lock()
_process_key: bytes | None = None
_file_cache: dict[str, bytes] = {}
_warned = False


def key_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "firkin", "key")


def set_key(key) -> None:
    """Use `key` (str or bytes) as this process's signing key; None goes back to
    FIRKIN_KEY / the key file."""
    global _process_key
    if key is not None and not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be str, bytes or None, not {type(key).__name__}")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if key is not None and not key:
        raise ValueError("the key must not be empty")
    with _lock:
        _process_key = key


def _read_or_create(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
        if data:
            return data
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    token = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        with open(path, "rb") as f:
            return f.read().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(token + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def current_key() -> bytes | None:
    """The key dumps sign with and loads check against; None if there is none
    (no FIRKIN_KEY and the key file cannot be created)."""
    global _warned
    env = os.environ.get("FIRKIN_KEY")
    if env:
        return env.encode("utf-8")
    with _lock:
        if _process_key is not None:
            return _process_key
        path = key_path()
        cached = _file_cache.get(path)
    if cached is not None:
        return cached
    try:
        key = _read_or_create(path)
    except OSError as exc:
        if not _warned:
            _warned = True
            warnings.warn(f"firkin: no signing key ({path}: {exc.strerror}); files are written "
                          "unsigned. Set FIRKIN_KEY or call firkin.set_key().", UserWarning, stacklevel=3)
        return None
    with _lock:
        _file_cache[path] = key
    return key


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"firkin key id\0" + key).digest()[:8]


class Signer:
    """The signature of one dump.

    With OpenSSL (build_info()["signer"] == "native") the C writer hashes
    the stream itself, in order, on a thread of its own that needs no GIL:
    give the Writer `writer_kwargs()`, then `finish(metadata, writer)`.
    Otherwise the writer feeds `update` every raw pickle stream chunk and
    the hashing happens right there, on the pickling thread. (A Python
    thread gains nothing: it needs the GIL between chunks, which the pickler
    holds, and the forest benchmark dumped slower with one than without.)"""

    native = False  # set below, once: does this build's native signer work here?

    def __init__(self, key: bytes):
        self._key = key
        self._h = None if self.native else hmac.new(key, _PREFIX + HEADER_FIXED, hashlib.sha256)
        self._n = 0

    def writer_kwargs(self) -> dict:
        """What the Writer needs to sign: a native signer's key and prefix, or this object's update."""
        if self.native:
            return {"sign_key": self._key, "sign_prefix": _PREFIX + HEADER_FIXED}
        return {"signer": self.update}

    def update(self, chunk) -> None:
        self._n += len(chunk)
        self._h.update(chunk)

    def finish(self, metadata: bytes, writer=None) -> bytes:
        """The signature section's payload, once the stream is complete."""
        if self.native:
            digest = writer.sign_digest(_tail(writer.signed_bytes, metadata))
        else:
            self._h.update(_tail(self._n, metadata))
            digest = self._h.digest()
        return _payload(self._key, digest)


def _native_signer_works() -> bool:
    """A build with OpenSSL signs natively, unless this process's OpenSSL
    cannot give HMAC-SHA256 (a restrictive provider configuration): then
    the Python signer (hashlib, which has its own SHA-256) takes over."""
    if _core.build_info()["signer"] != "native":
        return False
    try:
        _core.Writer(io.BytesIO(), sign_key=b"probe", sign_prefix=_PREFIX)
    except RuntimeError:
        return False
    return True


Signer.native = _native_signer_works()


def _tail(stream_len: int, metadata: bytes) -> bytes:
    """What the HMAC covers after the stream (docs/FORMAT.md, "Signature")."""
    return struct.pack("<Q", stream_len) + metadata + struct.pack("<Q", len(metadata))


def _payload(key: bytes, digest: bytes) -> bytes:
    return (_MAGIC + struct.pack("<HH", 1, _ALG_HMAC_SHA256) + key_id(key) + digest
            + bytes(PAYLOAD_LEN - 48))


def _digest(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes) -> bytes:
    h = hmac.new(key, _PREFIX + header_fixed, hashlib.sha256)
    h.update(stream)
    h.update(_tail(len(stream), metadata))
    return h.digest()


def signature_payload(key: bytes, stream: bytes, metadata: bytes) -> bytes:
    """The signature section of a firkin 1.0 file holding `stream` and
    `metadata`, in one go (for tests and tools that build files by hand)."""
    return _payload(key, _digest(key, HEADER_FIXED, stream, metadata))


#: signature states reported by `status`
VALID, UNSIGNED, OTHER_KEY, INVALID, NO_KEY = "valid", "unsigned", "other key", "invalid", "no key"


def status(reader, stream: bytes) -> str:
    """valid / unsigned / other key / invalid (tampered) / no key (nothing to check with)."""
    payload = reader.signature()
    if payload is None:
        return UNSIGNED
    if len(payload) != PAYLOAD_LEN or payload[:4] != _MAGIC:
        raise FormatError(f"{reader.name}: the signature section is malformed")
    version, alg = struct.unpack_from("<HH", payload, 4)
    if version != 1 or alg != _ALG_HMAC_SHA256:
        return INVALID
    key = current_key()
    if key is None:
        return NO_KEY
    if payload[8:16] != key_id(key):
        return OTHER_KEY
    meta = reader.metadata() or b""
    header = reader.header_bytes()[:24]
    good = _digest(key, header, stream, meta)
    return VALID if hmac.compare_digest(good, payload[16:48]) else INVALID
