"""Signing firkin files with the user's key (HMAC-SHA256 over every byte).

A file you dumped yourself carries an HMAC-SHA256, under your key, of its
header's fixed part, its metadata and a table with a tag for every chunk of
its pickle stream and of its array data (docs/FORMAT.md, "Signature",
version 4). The chunks are hashed where they are checksummed, on the C
chunk workers, with Poly1305 under a key derived from yours and a random
per-file salt (a stream chunk's raw bytes; an array chunk's bytes as
stored, compressed or not, with how they decode); each tag is an HMAC of
that hash. load trusts a file the
allowlist refuses when its signature verifies under the current key, its
stream matches the stream entries, and, before anything is built, every
array chunk it reads or maps matches its tag. Format 1.3 files (version 3:
array chunks hashed raw) and format 1.1 and 1.2 files
(version 2: the HMAC runs over the whole stream) load the same way; format
1.0 files carry the older signature of the stream and metadata only: they
still load, and verify/info say that their array bytes are not covered.

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
import os
import secrets
import stat
import struct
import threading
import warnings

from . import _core
from ._atomic import _O_CLOEXEC, _O_DIRECTORY, _O_NOFOLLOW  # the one place they are looked up
from ._core import FormatError

_PREFIX = b"firkin-signature-v1\0"  # format 1.0 signatures (section kind 4), still checked
_PREFIX2 = b"firkin-signature-v2\0"  # format 1.1 and 1.2 signatures (section kind 5), still checked
_PREFIX3 = b"firkin-signature-v3\0"  # format 1.3 signatures (section kind 7), still checked
_PREFIX4 = b"firkin-signature-v4\0"  # format 1.4 signatures (section kind 8), written
_LABEL_KEY_ID = b"firkin-key-id-v2\0"     # versions 2, 3 and 4
_LABEL_HASH_KEY = b"firkin-buffer-hash-v2\0"  # versions 2, 3 and 4
_LABEL_CHUNK = b"firkin-chunk-v2\0"
_LABEL_CHUNK3 = b"firkin-chunk-v3\0"
_LABEL_CHUNK4 = b"firkin-chunk-v4\0"
_CHUNK_LABELS = {2: _LABEL_CHUNK, 3: _LABEL_CHUNK3, 4: _LABEL_CHUNK4}
_MAGIC = b"FSIG"
_ALG_HMAC_SHA256 = 1           # version 1: stream and metadata
_ALG_HMAC_SHA256_POLY1305 = 2  # version 2: also every buffer chunk
_ALG_V3 = 3                    # version 3: HMAC-SHA256 of a table of every chunk's Poly1305
_ALG_V4 = 4                    # version 4: as 3, buffer chunks hashed as stored
_TABLE_PREFIXES = {3: _PREFIX3, 4: _PREFIX4}  # versions whose HMAC covers the table, not the stream
PAYLOAD_LEN = 64               # a version 1 signature section
HEAD2_LEN = 96                 # a version 2, 3 or 4 signature section before its chunk entries
ENTRY_LEN = 32                 # one chunk entry (and one record from _core)
SALT_LEN = 16
_STREAM_ID = struct.pack("<I", _core.HASH_STREAM)  # the "buffer" of a pickle stream chunk's entry


def signed_header(reader) -> bytes:
    """The header bytes 0-23 a signature covers: as in the file, with
    required bit 2 (packed buffers, format 1.3) clear. The writer learns
    whether it packs only after the stream is signed; the bit only says that
    the packed section is there, which the signature covers itself
    (docs/FORMAT.md, "Signature")."""
    return _core.header_fixed(reader.required_flags & ~_core.REQ_PACKED, *reader.format_version)


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


def set_key(key: str | bytes | None) -> None:
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


#: key -> an HMAC-SHA256 keyed with it and never fed: each MAC copies it, which
#: skips OpenSSL's per-call key setup (about 40 % of a short MAC's cost; a
#: dump makes five, a load's signature check one per chunk). A few keys at most.
_keyed: dict[bytes, hmac.HMAC] = {}
_KEYED_MAX = 8


def _mac(key: bytes, *parts: bytes) -> bytes:
    keyed = _keyed.get(key)
    if keyed is None:
        keyed = hmac.new(key, digestmod=hashlib.sha256)
        if len(_keyed) < _KEYED_MAX:
            _keyed[key] = keyed
    h = keyed.copy()
    h.update(b"".join(parts))
    return h.digest()


def key_id(key: bytes) -> bytes:
    """The key id of format 1.0 signatures: an unsalted hash of the key
    (checked, never written: it lets anyone test guesses of a weak key)."""
    return hashlib.sha256(b"firkin key id\0" + key).digest()[:8]


def key_id2(key: bytes, salt: bytes) -> bytes:
    """The key id of a version 2 signature: keyed and salted per file, so it
    tells "your key" from "another key" and nothing else about the key."""
    return _mac(key, _LABEL_KEY_ID, salt)[:16]


def hash_key(key: bytes, salt: bytes) -> bytes:
    """The Poly1305 key the chunk workers hash buffer chunks with: r derived
    from the key and the file's salt, s zero. Its hashes never leave the
    process: the file holds only HMAC tags of them."""
    return _mac(key, _LABEL_HASH_KEY, salt)[:16] + bytes(16)


def _tag(key: bytes, salt: bytes, record: bytes, version: int) -> bytes:
    """The tag of a chunk entry: HMAC of its record (head and Poly1305 value)."""
    return _mac(key, _CHUNK_LABELS[version], salt, record)[:16]


def _entries(key: bytes, salt: bytes, records: bytes, version: int = 4) -> bytes:
    """Chunk entries of a version 2, 3 or 4 signature from _core's hash records
    (buffer u32, chunk u32, raw length u64, Poly1305 16 bytes): the first
    16 bytes of each, then its tag."""
    out = bytearray()
    for i in range(0, len(records), ENTRY_LEN):
        rec = records[i:i + ENTRY_LEN]
        out += rec[:16] + _tag(key, salt, rec, version)
    return bytes(out)


def _stream_records(records: bytes) -> int:
    """How many of the leading hash records are the pickle stream's."""
    n = 0
    while records[n * ENTRY_LEN:n * ENTRY_LEN + 4] == _STREAM_ID:
        n += 1
    return n


class Signer:
    """The signature of one dump (version 4, docs/FORMAT.md "Signature").

    The chunk workers hash every chunk of the pickle stream (its raw bytes)
    and of the buffers (their stored bytes and how they decode, so that a
    compressed chunk costs its compressed size) with Poly1305 under
    `hash_key` while they checksum it (give the
    Writer `writer_kwargs()`); `finish` turns those hashes into the signed
    chunk table and computes the HMAC-SHA256 over the header's fixed part,
    the metadata and that table: a short input, whatever the stream's size,
    so no thread hashes the whole stream. A build without OpenSSL computes
    the same values with its portable Poly1305 and hashlib's HMAC."""

    def __init__(self, key: bytes, required: int = 0):
        self._key = key
        self._salt = secrets.token_bytes(SALT_LEN)
        self._header = _core.header_fixed(required)  # magic, version, 64, required flags

    def writer_kwargs(self) -> dict:
        """What the Writer needs to sign: the chunk hash key."""
        return {"hash_key": hash_key(self._key, self._salt)}

    def finish(self, metadata: bytes, writer) -> bytes:
        """The signature section's payload, once the stream and the buffers are written."""
        records = writer.chunk_hashes
        table = (struct.pack("<QQQ", writer.buffer_count, len(records) // ENTRY_LEN,
                             _stream_records(records))
                 + _entries(self._key, self._salt, records))
        return (_MAGIC + struct.pack("<HH", 4, _ALG_V4) + self._salt + key_id2(self._key, self._salt)
                + _digest_table(4, self._key, self._header, self._salt, metadata, table) + table)


def _digest_table(version: int, key: bytes, header_fixed: bytes, salt: bytes, metadata: bytes,
                  table: bytes) -> bytes:
    """The HMAC of a version 3 or 4 signature: no stream bytes, only the
    table that names and tags its chunks (and the buffers')."""
    return _mac(key, _TABLE_PREFIXES[version], header_fixed, salt, struct.pack("<Q", len(metadata)),
                metadata, table)


def _tail(stream_len: int, metadata: bytes) -> bytes:
    """What the HMAC covers after the stream (docs/FORMAT.md, "Signature")."""
    return struct.pack("<Q", stream_len) + metadata + struct.pack("<Q", len(metadata))


def _digest(key: bytes, header_fixed: bytes, stream: bytes, metadata: bytes) -> bytes:
    """The HMAC of a version 1 signature (format 1.0 files)."""
    h = hmac.new(key, _PREFIX + header_fixed, hashlib.sha256)
    h.update(stream)
    h.update(_tail(len(stream), metadata))
    return h.digest()


def signature_payload(key: bytes, stream: bytes, metadata: bytes, header_fixed: bytes) -> bytes:
    """The version 1 signature section of a format 1.0 file holding `stream`
    and `metadata` and no buffers, whose header starts with `header_fixed`
    (tests build such files by hand: this firkin writes version 4)."""
    return (_MAGIC + struct.pack("<HH", 1, _ALG_HMAC_SHA256) + key_id(key)
            + _digest(key, header_fixed, stream, metadata) + bytes(PAYLOAD_LEN - 48))


#: signature states reported by `status`
VALID, UNSIGNED, OTHER_KEY, INVALID, NO_KEY = "valid", "unsigned", "other key", "invalid", "no key"

#: what a signature of each version covers, as verify and info state it
COVERS = {
    1: "the pickle stream and metadata only: array bytes are not covered (format 1.0 signature)",
    2: "every byte: the pickle stream, the metadata and every chunk of array data",
    3: "every byte: the pickle stream, the metadata and every chunk of array data",
    4: "every byte: the pickle stream, the metadata and every chunk of array data",
}


class Signature:
    """A file's signature as checked under the current key.

    status: VALID / UNSIGNED / OTHER_KEY / INVALID / NO_KEY. version: 0
    (unsigned), 1 (format 1.0: stream and metadata), 2, 3 or 4 (every byte;
    `check` has checked the stream). A VALID version 2, 3 or 4 signature
    vouches for the array data only once `buffer_problem` found every
    chunk's hash matching its tag. detail: what an INVALID one found
    changed, when it can say."""

    def __init__(self, status: str, version: int = 0, key=None, salt=b"", table=b"", detail=None):
        self.status, self.version, self.detail = status, version, detail
        self._key, self._salt, self._table = key, salt, table
        # versions 3 and 4: the stream's entries come first; buffer_problem looks past them
        self._first = 24 + ENTRY_LEN * (struct.unpack_from("<Q", table, 16)[0]
                                        if version in _TABLE_PREFIXES and table else 0)

    @property
    def covers(self):
        return COVERS.get(self.version)

    @property
    def covers_buffers(self) -> bool:
        return self.version in (2, 3, 4)

    @property
    def hash_key(self) -> bytes:
        """The key to hash buffer chunks with (reader.read_buffers / verify_mapped)."""
        return hash_key(self._key, self._salt)

    @property
    def hash_kwargs(self) -> dict:
        """What reader.read_buffers and verify_mapped need to hash buffer
        chunks as this signature's version does: version 4 hashes them as
        stored (with how they decode), 2 and 3 their raw bytes."""
        return {"hash_key": self.hash_key, "hash_stored": self.version == 4}

    def buffer_problem(self, records: bytes, buffer_count: int):
        """None when `records` (the hash records of every buffer chunk of the
        file) match the signed chunk table; else what differs, naming the
        first buffer and chunk that does."""
        nbuf, n = struct.unpack_from("<QQ", self._table)
        if nbuf != buffer_count:
            return f"the file has {buffer_count} buffers, its signature covers {nbuf}"
        signed = {}
        for i in range(self._first, len(self._table), ENTRY_LEN):
            signed[self._table[i:i + 16]] = self._table[i + 16:i + ENTRY_LEN]
        seen = {}
        for i in range(0, len(records), ENTRY_LEN):
            seen[records[i:i + 16]] = records[i:i + ENTRY_LEN]
        for head, tag in signed.items():
            rec = seen.pop(head, None)
            if rec is None or not hmac.compare_digest(_tag(self._key, self._salt, rec, self.version),
                                                      tag):
                b, c, raw = struct.unpack_from("<IIQ", head)
                return (f"buffer {b}, chunk {c} ({raw:,} bytes) does not match the signature: the "
                        "array data was changed after signing")
        if seen:
            b, c, raw = struct.unpack_from("<IIQ", next(iter(seen)))
            return f"buffer {b}, chunk {c} ({raw:,} bytes) is not covered by the signature"
        return None

    def stream_problem(self, stream) -> str | None:
        """Versions 3 and 4: None when `stream` (the raw pickle stream), cut at the
        signed chunk lengths, matches every stream entry's tag; else what
        differs. The cut comes from the signature, not from the file's index."""
        nstream = struct.unpack_from("<Q", self._table, 16)[0]
        key, pos = self.hash_key, 0
        with memoryview(stream) as view:
            for c in range(nstream):
                off = 24 + c * ENTRY_LEN
                head = self._table[off:off + 16]
                _, num, raw = struct.unpack_from("<IIQ", head)
                if head[:4] != _STREAM_ID or num != c:
                    return f"entry {c} of the signature's chunk table is not the pickle stream's chunk {c}"
                part = view[pos:pos + raw]
                if len(part) != raw or not hmac.compare_digest(
                        _tag(self._key, self._salt, head + _core.poly1305(key, part), self.version),
                        self._table[off + 16:off + ENTRY_LEN]):
                    return (f"the pickle stream's chunk {c} ({raw:,} bytes at stream offset {pos:,}) "
                            "does not match the signature: the stream was changed after signing")
                pos += raw
            if pos != len(view):
                return (f"the pickle stream has {len(view):,} bytes, its signature covers {pos:,}: "
                        "the stream was changed after signing")
        return None


def _malformed(reader):
    return FormatError(f"{reader.name}: the signature section is malformed")


def check(reader, stream: bytes) -> Signature:
    """The signature of the file `reader` reads, whose pickle stream is
    `stream`, checked under the current key (stream, metadata and, for a
    version 2, 3 or 4 signature, its chunk table; not the buffers themselves)."""
    payload = reader.signature()
    if payload is None:
        return Signature(UNSIGNED)
    if len(payload) < 8 or payload[:4] != _MAGIC:
        raise _malformed(reader)
    version, alg = struct.unpack_from("<HH", payload, 4)
    if version == 1:
        if len(payload) != PAYLOAD_LEN:
            raise _malformed(reader)
        if alg != _ALG_HMAC_SHA256:
            return Signature(INVALID, 1)
        key = current_key()
        if key is None:
            return Signature(NO_KEY, 1)
        if payload[8:16] != key_id(key):
            return Signature(OTHER_KEY, 1)
        good = _digest(key, signed_header(reader), stream, reader.metadata() or b"")
        return Signature(VALID if hmac.compare_digest(good, payload[16:48]) else INVALID, 1)
    if (version, alg) not in ((2, _ALG_HMAC_SHA256_POLY1305), (3, _ALG_V3), (4, _ALG_V4)):
        return Signature(INVALID, version if version in (2, 3, 4) else 0)
    if len(payload) < HEAD2_LEN:
        raise _malformed(reader)
    n, nstream = struct.unpack_from("<QQ", payload, 80)
    if len(payload) != HEAD2_LEN + n * ENTRY_LEN or (version in _TABLE_PREFIXES and nstream > n):
        raise _malformed(reader)
    key = current_key()
    if key is None:
        return Signature(NO_KEY, version)
    salt, table = payload[8:24], payload[72:]
    if not hmac.compare_digest(payload[24:40], key_id2(key, salt)):
        return Signature(OTHER_KEY, version)
    header, metadata = signed_header(reader), reader.metadata() or b""
    if version in _TABLE_PREFIXES:
        good = _digest_table(version, key, header, salt, metadata, table)
    else:
        h = hmac.new(key, _PREFIX2 + header + salt, hashlib.sha256)
        h.update(stream)
        h.update(_tail(len(stream), metadata) + table)
        good = h.digest()
    if not hmac.compare_digest(good, payload[40:72]):
        return Signature(INVALID, version)
    signature = Signature(VALID, version, key, salt, table)
    problem = signature.stream_problem(stream) if version in _TABLE_PREFIXES else None
    return Signature(INVALID, version, detail=problem) if problem else signature


def status(reader, stream: bytes) -> str:
    """valid / unsigned / other key / invalid (tampered) / no key (nothing to
    check with), for the stream, metadata and chunk table (see `check`)."""
    return check(reader, stream).status
