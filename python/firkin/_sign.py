"""Signing firkin files with the user's key (HMAC-SHA256).

A file you dumped yourself carries an HMAC-SHA256, under your key, of its
header's fixed part, its pickle stream and its metadata (docs/FORMAT.md,
"Signature"). load fully trusts a file whose signature verifies under the
current key; everything else goes through the allowlist. Array data is not
signed: it is data, not code, and its chunk checksums cover its integrity.

The key: FIRKIN_KEY (any string of at least MIN_KEY_LEN bytes) when set,
else what `set_key()` gave this process, else the file
$XDG_CONFIG_HOME/firkin/key (default ~/.config/firkin/key), created on first
use (directory 0700, file 0600, written whole then linked into place). The
key file is used only when it and its directory are private to the current
user (see `_open_key_dir` and `_read_key_file`); an empty, whitespace-only
or short key, from any source, is an error and never a key.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import io
import os
import secrets
import stat
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


#: a key has at least this many bytes besides leading and trailing whitespace
MIN_KEY_LEN = 16
#: a key file longer than this is not a key file
_MAX_KEY_FILE = 65536


class InsecureKeyError(PermissionError):
    """The key file, or the directory it lies in, is not private to the
    current user, so another user could have chosen the key: it is not used."""


def _check_key(key: bytes, source: str) -> bytes:
    """`key` if it is a usable key; ValueError naming `source` otherwise."""
    body = key.strip()
    if len(body) < MIN_KEY_LEN:
        what = "empty" if not key else "only whitespace" if not body else f"only {len(body)} bytes long"
        raise ValueError(f"{source}: the signing key is {what}; a key needs at least {MIN_KEY_LEN} "
                         "bytes besides surrounding whitespace (an empty or short key would let "
                         "anyone forge your signature)")
    return key


def _env_key_source() -> str:
    if _process_key is not None:
        return "FIRKIN_KEY (set in the environment; it overrides the key given to firkin.set_key())"
    return "FIRKIN_KEY"


def key_source() -> str:
    """Which key dumps sign with and loads check against, in words (for messages)."""
    if os.environ.get("FIRKIN_KEY") is not None:
        return _env_key_source()
    if _process_key is not None:
        return "the key given to firkin.set_key()"
    return f"the key file {key_path()}"


def set_key(key) -> None:
    """Use `key` (str or bytes, at least MIN_KEY_LEN bytes besides whitespace)
    as this process's signing key; None goes back to FIRKIN_KEY / the key file.
    FIRKIN_KEY, when set, overrides it: a warning says so."""
    global _process_key
    if key is not None and not isinstance(key, (str, bytes)):
        raise TypeError(f"key must be str, bytes or None, not {type(key).__name__}")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if key is not None:
        _check_key(key, "firkin.set_key()")
        if os.environ.get("FIRKIN_KEY") is not None:
            warnings.warn("firkin.set_key(): FIRKIN_KEY is set in the environment and overrides "
                          "this key: files are signed and checked with FIRKIN_KEY while it is set",
                          UserWarning, stacklevel=2)
    with _lock:
        _process_key = key


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _mode(st) -> str:
    return oct(stat.S_IMODE(st.st_mode))


def _open_key_dir(dirpath: str) -> int:
    """A descriptor of the key's directory, checked: a real directory (not a
    symlink), owned by the current user (or root), writable by nobody else.
    Created 0700 when missing."""
    flags = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
    try:
        fd = os.open(dirpath, flags)
    except FileNotFoundError:
        parent = os.path.dirname(dirpath)
        if parent:
            os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(dirpath, 0o700)
        except FileExistsError:
            pass  # another process made it: checked below like any other
        fd = os.open(dirpath, flags)
    except OSError as exc:
        if os.path.islink(dirpath):
            raise InsecureKeyError(
                f"the key directory {dirpath} is a symbolic link; firkin uses a key only from a "
                "real directory of yours (replace the link by a directory, mode 0700)") from exc
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid not in (os.geteuid(), 0):
            raise InsecureKeyError(
                f"the key directory {dirpath} belongs to uid {st.st_uid}, not to you (uid "
                f"{os.geteuid()}): whoever owns it chooses your key. Remove it, or set "
                "XDG_CONFIG_HOME to a directory of your own")
        if st.st_mode & 0o022:
            raise InsecureKeyError(
                f"the key directory {dirpath} is writable by {_who(st)} (mode {_mode(st)}), "
                f"who could replace your key; run: chmod go-w {dirpath}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _who(st) -> str:
    group, other = st.st_mode & 0o070, st.st_mode & 0o007
    return "its group and others" if group and other else "its group" if group else "others"


def _read_key_file(dir_fd: int, path: str) -> bytes | None:
    """The key in the file `path` (opened in `dir_fd`), checked: a regular
    file, not a link, owned by the current user, readable and writable by
    nobody else, holding a usable key. None when there is no such file."""
    try:
        fd = os.open(os.path.basename(path), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InsecureKeyError(f"the key file {path} is a symbolic link; firkin uses a key only "
                                   "from a regular file of yours, mode 0600") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InsecureKeyError(f"the key file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise InsecureKeyError(
                f"the key file {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): "
                "someone else may know that key. Remove it; firkin then creates a new one")
        if st.st_mode & 0o077:
            raise InsecureKeyError(
                f"the key file {path} can be read or written by {_who(st)} (mode {_mode(st)}), who "
                f"could sign files as you; run: chmod 600 {path} (and make a new key if it could "
                "have been read)")
        data = os.read(fd, _MAX_KEY_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"the key file {path} is longer than {_MAX_KEY_FILE} bytes: not a key file")
    return _check_key(data.strip(), f"the key file {path}")


def _create_key_file(dir_fd: int, path: str) -> None:
    """Write a new random key to a temporary file, whole and synced, then
    hard-link it to `path`: a racing first use sees no key file or a
    complete one, never a partial one. The loser of a race keeps the
    winner's key."""
    token = secrets.token_hex(32).encode() + b"\n"
    tmp = f".key.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        try:
            view = memoryview(token)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, os.path.basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except FileExistsError:
            pass  # another process created it first: use theirs
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
    finally:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass


def _read_or_create(path: str) -> bytes:
    dir_fd = _open_key_dir(os.path.dirname(path))
    try:
        key = _read_key_file(dir_fd, path)
        if key is None:
            _create_key_file(dir_fd, path)
            key = _read_key_file(dir_fd, path)
            if key is None:
                raise FileNotFoundError(errno.ENOENT, "the key file vanished after it was made", path)
        return key
    finally:
        os.close(dir_fd)


def current_key() -> bytes | None:
    """The key dumps sign with and loads check against; None if there is none
    (no FIRKIN_KEY and the key file cannot be created). ValueError for an
    empty or short key; InsecureKeyError (a PermissionError) for a key file
    that is not private to the current user."""
    global _warned
    env = os.environ.get("FIRKIN_KEY")
    if env is not None:
        return _check_key(env.encode("utf-8", "surrogateescape"), _env_key_source())
    with _lock:
        if _process_key is not None:
            return _process_key
        path = key_path()
        cached = _file_cache.get(path)
    if cached is not None:
        return cached
    try:
        key = _read_or_create(path)
    except InsecureKeyError:
        raise
    except OSError as exc:
        if not _warned:
            _warned = True
            warnings.warn(f"firkin: no signing key ({path}: {exc.strerror or exc}); files are "
                          "written unsigned. Set FIRKIN_KEY or call firkin.set_key().", UserWarning,
                          stacklevel=3)
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
