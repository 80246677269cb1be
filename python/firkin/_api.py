"""dump / load / dumps / loads / load_metadata: the public API over firkin._core."""
from __future__ import annotations

import errno
import fcntl
import functools
import io
import math
import os
import pickle
import secrets
import stat
import struct
import threading
import warnings
from typing import TYPE_CHECKING

import numpy as np

from . import (
    _amplify,
    _byteorder,
    _byvalue,
    _compress,
    _core,
    _defaults,
    _guards,
    _meta,
    _model,
    _outer,
    _progress,
    _remote,
    _sign,
    _text,
    _trust,
)
from ._core import ChecksumError, FirkinError, FormatError, UntrustedTypesError
from ._model import CheckResult, ModelCheckError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any, BinaryIO, Literal, Union

    #: the public API's argument types (checked by tests/test_typing.py)
    Target = Union[str, "os.PathLike[str]", BinaryIO]  # a path or a binary file object
    Compress = Union[bool, int, str, tuple[str, int]]  # as joblib.dump's compress
    MmapMode = Literal[None, "r", "r+", "w+", "c"]
    Trusted = Union[bool, Iterable[str], None]  # True, or extra "module.qualname" names
    Buffer = Union[bytes, bytearray, memoryview]

__all__ = ["dump", "load", "dumps", "loads", "load_metadata", "codecs",
           "check", "FirkinError", "FormatError", "ChecksumError", "UntrustedTypesError",
           "ModelCheckError", "CheckResult", "VersionMismatchWarning", "ModelCheckWarning",
           "TEMP_SUFFIX"]


class _ArgumentError(TypeError, ValueError):
    """An argument of the wrong kind: a TypeError, and the ValueError joblib raises."""


class VersionMismatchWarning(UserWarning):
    """A package whose objects a file holds is installed in another version
    than the one that wrote it."""


class ModelCheckWarning(VersionMismatchWarning):
    """load(..., check=True): the loaded model did not reproduce the outputs
    its file stored for its check sample, or the file holds none. The
    message is the check's report (firkin.check returns it as an object)."""

codecs = _compress.codecs

#: Temporary files of a dump in progress are named ``.<target>.<pid>.<random>.firkin-tmp``
#: in the target's directory; the dump holds a lock on its own, and the next dump of the
#: same target removes those no live dump holds.
TEMP_SUFFIX = ".firkin-tmp"

_MMAP_MODES = {None: None, "r": "r", "r+": "r+", "w+": "r+", "c": "c"}
_active_temps: set[tuple] = set()  # (directory, name) of this process's dumps
_active_lock = threading.Lock()

# numpy's reconstructor for protocol-5 arrays, as pickled by this numpy
_NP_FROMBUFFER = np.zeros(1, np.uint8).__reduce_ex__(5)[0]
_NP_FROMBUFFER_NAMES = {
    (mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")
}


def _is_path(obj) -> bool:
    return isinstance(obj, (str, bytes, os.PathLike))


def _check_protocol(protocol) -> int:
    if protocol is None:
        return 5
    if isinstance(protocol, bool) or not isinstance(protocol, int):
        raise TypeError(f"protocol must be an int or None, not {type(protocol).__name__}")
    if protocol < 0:
        return pickle.HIGHEST_PROTOCOL
    if protocol > pickle.HIGHEST_PROTOCOL:
        raise ValueError(f"pickle protocol must be <= {pickle.HIGHEST_PROTOCOL}, got {protocol}")
    return protocol


def _check_binary(f, what: str) -> None:
    mode = getattr(f, "mode", "b")
    if isinstance(f, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
        raise TypeError(f"firkin.{what}: the file object must be opened in binary mode "
                        f"('rb'/'wb'), not text mode ({getattr(f, 'mode', type(f).__name__)!r})")


def _check_threads(threads) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be None (all cores) or an int >= 1, got {threads!r}")
    return threads


#: Buffers of at least this many bytes go out-of-band (own aligned section,
#: memory-mappable); smaller ones stay inside the pickle stream. Tuned by
#: bench/bench.py; tests lower it to push many small arrays out-of-band.
OOB_THRESHOLD = _core.DEFAULT_THRESHOLD


def _seekable(f) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _write(value, target, protocol, user_meta, compress, threads, progress=None, name=None,
           strip_paths=False, check_data=None, fsync=True, streamed=False) -> int:
    """streamed: write the streamed layout (docs/FORMAT.md), which a reader of
    a pipe or socket can delimit without seeking. Sinks whose readers seek
    (files, object stores through firkin._remote) keep the plain layout."""
    codec, level, described, filters = compress
    outer = None
    if described and described.get("whole_file"):
        # one gzip/zlib/bz2/lzma/xz file around the container, as joblib writes
        outer = _outer.Compressor(target, described["method"], level, threads)
        target, streamed = outer, True
    models = _model.signatures(value)
    payload, check_entry = (None, None) if check_data is None else _model.prepare(value, check_data)
    byvalue = _byvalue.Session(strip_paths)
    key = _sign.current_key()
    signer = (_sign.Signer(key, _core.required_flags(codec, filters, streamed)) if key is not None
              else None)
    bar = _progress.Progress(progress, "firkin.dump")
    try:
        w = _core.Writer(target, threshold=OOB_THRESHOLD, codec=codec, level=level, filters=filters,
                         threads=threads,
                         progress=bar if bar.mode is not False else None, name=name,
                         byvalue=byvalue, streamed=streamed,
                         **(signer.writer_kwargs() if signer else {}))
        try:
            modules = w.dump(value, protocol, payload)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            from . import _explain  # only needed when a dump fails

            located = _explain.explain(value, exc, protocol)
            if located is exc:
                raise
            raise located from exc
        top = type(value)
        meta = _meta.build(modules, user_meta, w.buffer_count, w.oob_bytes, described,
                           f"{top.__module__}.{top.__qualname__}", w.arrays, byvalue.summary(),
                           models, check_entry)
        n = w.finish(meta, fsync, signer.finish(meta, w) if signer else b"")
        if outer is not None:
            outer.close()
            if fsync and isinstance(outer.target, int):
                os.fsync(outer.target)
        return n
    finally:
        if outer is not None:
            outer.abort()
        bar.close()


_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_MAX_SYMLINKS = 40  # as the kernel


def _check_protected_symlink(link: str, link_st, directory: str) -> None:
    """Follow `link` only where the kernel's protected_symlinks rule would:
    in a sticky, world-writable directory (/tmp, a shared project folder), a
    link is followed only when it belongs to the follower or to the
    directory's owner. Anyone can plant a link there; following it would
    let them choose which file this dump replaces or creates."""
    dst = os.stat(directory)
    shared = dst.st_mode & stat.S_ISVTX and dst.st_mode & stat.S_IWOTH
    if shared and link_st.st_uid not in (os.geteuid(), dst.st_uid):
        raise PermissionError(
            errno.EACCES, "firkin.dump: refusing to follow the symbolic link "
            f"{_text.printable(link)}: it belongs to uid {link_st.st_uid}, neither you nor the "
            "owner of the shared (sticky, world-writable) directory it lies in, so its owner "
            "would choose which file this dump replaces (the kernel's protected_symlinks rule). "
            "Remove the link or dump elsewhere")


def _resolve_target(path: str) -> tuple[str, str]:
    """The real directory and the name a dump of `path` writes: every
    symbolic link on the way is followed (each one checked by
    `_check_protected_symlink`), and a link whose target does not exist is
    refused rather than followed to create a file where it points."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        raise IsADirectoryError(errno.EISDIR,
                                f"firkin.dump: {path!r} names a directory, not a file")
    pending = list(reversed(os.path.join(os.getcwd(), path).split(os.sep)))
    resolved, hops, final_link = os.sep, 0, None
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, name)
        last = not any(p not in ("", ".") for p in pending)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            if not last:
                raise FileNotFoundError(errno.ENOENT, f"firkin.dump: directory {candidate!r} does "
                                        f"not exist (writing {path!r})") from None
            if final_link is not None:
                raise FileNotFoundError(
                    errno.ENOENT, f"firkin.dump: {path!r} is a symbolic link whose target "
                    f"{candidate!r} does not exist; firkin does not create files through dangling "
                    "links (dump to the target's path if you mean it)") from None
            return resolved, name
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP,
                              f"firkin.dump: too many levels of symbolic links in {path!r}")
            _check_protected_symlink(candidate, st, resolved)
            target = os.readlink(candidate)
            if last:
                final_link = candidate
            if os.path.isabs(target):
                resolved = os.sep
            pending.extend(reversed(target.split(os.sep)))
            continue
        if last:
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} is a directory")
            return resolved, name
        resolved = candidate
    raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} names a directory, not a file")


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _active_lock:
        old = os.umask(0o077)
        os.umask(old)
    return old


def _final_mode(old) -> int:
    """Permissions of the new file: the old file's permission bits when the
    old file is yours (never setuid, setgid or sticky), else what the umask
    gives a new file, as open() would."""
    if old is not None and old.st_uid == os.geteuid():
        return stat.S_IMODE(old.st_mode) & 0o777
    return 0o666 & ~_umask()


_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}


def _lock_temp(fd: int) -> None:
    """Hold an exclusive advisory lock on a temp file for as long as its dump
    runs: other dumps remove only temp files nobody holds (`_remove_stale_temps`).
    flock locks work across PID namespaces, and over NFS where the mount
    supports locks; without lock support nothing is locked and nothing is
    removed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise


def _remove_stale_temps(dir_fd: int, dir_key, base: str) -> None:
    """Remove temp files of earlier dumps of `base` that no live dump holds:
    your own regular files whose lock can be taken. A file that cannot be
    opened, belongs to someone else, or is locked (a dump in progress, in
    this or another process, PID namespace or host) is left alone."""
    prefix = "." + base + "."
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        middle = name[len(prefix):-len(TEMP_SUFFIX)].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        with _active_lock:
            if (dir_key, name) in _active_temps:
                continue
        try:
            fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC,
                         dir_fd=dir_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live dump holds it (or locks are not supported here)
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(name, dir_fd=dir_fd)  # while locked: see _create_temp
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temp(dir_fd: int, base: str) -> tuple[int, str]:
    """A new temp file for a dump of `base` in the directory `dir_fd`: mode
    0600, never through a link, locked. A cleaner unlinks a file only while
    holding its lock, so once the lock is ours and the name still leads to
    our file, nobody removes it."""
    for _ in range(100):
        name = f".{base}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC,
                         0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        try:
            _lock_temp(fd)
            st = os.fstat(fd)
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd, name
        except FileNotFoundError:
            pass  # removed by a cleaner before we held the lock: take another name
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "firkin.dump: could not create a temporary file")


def _dump_path(value, filename, protocol, user_meta, compress, threads, progress,
               strip_paths=False, check_data=None, durable=True) -> None:
    path = os.fsdecode(os.fspath(filename))
    # write where the data will live: through a (checked) symlink, next to its target
    dirname, base = _resolve_target(path)
    try:
        dir_fd = os.open(dirname, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except PermissionError:
        if not hasattr(os, "O_PATH"):
            raise
        # a directory you may write but not list (a drop box): *at calls work
        # through an O_PATH descriptor; listing (stale temps) and fsync do not
        dir_fd = os.open(dirname, os.O_PATH | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    try:
        dst = os.fstat(dir_fd)
        dir_key = (dst.st_dev, dst.st_ino)
        try:
            old = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"firkin.dump: {path!r} is a directory")
        _remove_stale_temps(dir_fd, dir_key, base)
        fd, tmp = _create_temp(dir_fd, base)
        with _active_lock:
            _active_temps.add((dir_key, tmp))
        try:
            try:
                # a failed write (disk full, file size limit) names the user's
                # file: the temporary one is gone by the time they read it
                _write(value, fd, protocol, user_meta, compress, threads, progress, name=path,
                       strip_paths=strip_paths, check_data=check_data, fsync=durable)
                os.fchmod(fd, _final_mode(old))  # widened only now that it is written
                # renamed while still locked, so no cleaner takes it in between
                os.rename(tmp, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                os.close(fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        finally:
            with _active_lock:
                _active_temps.discard((dir_key, tmp))
        if durable:
            try:
                os.fsync(dir_fd)  # the rename itself reaches the disk
            except OSError:
                pass
    finally:
        os.close(dir_fd)


def dump(value: Any, filename: Target, compress: Compress = 0, protocol: int | None = None, *,
         metadata: Mapping[str, Any] | None = None, threads: int | None = None,
         progress: bool | None = None, strip_paths: bool = False,
         storage_options: dict[str, Any] | None = None,
         check_data: Any = None, durable: bool | None = None,
         filters: str | None = "auto", whole_file: bool | None = None) -> list[str] | None:
    """Persist `value` to `filename` (str, os.PathLike, an fsspec URL or
    OpenFile, or a binary file object).

    Paths are written atomically: a temporary file next to the target is
    written, fsynced and renamed over it, so an interrupted dump never leaves
    a torn file and never damages the previous one. Returns ``[str(filename)]``
    for a path and ``None`` for a file object, like joblib.dump.

    durable: True (the default, unless firkin.set_defaults or FIRKIN_DURABLE
    say otherwise) fsyncs the file and then its directory, so the new file
    survives a power loss once dump returns. False skips both fsyncs and
    keeps the temporary file and rename: a killed process still never
    leaves a torn file, but after a power loss or OS crash the target may
    hold the previous file, or be empty or torn on file systems that do not
    order the rename after the data. File objects are never fsynced.

    compress takes every form joblib.dump takes: False/0, True (zlib level
    3), a level 0-9 (zlib), a method name ('zlib', 'gzip', 'bz2', 'lzma',
    'xz', 'lz4', 'zstd') or a (method, level) tuple; without an explicit
    method, a path ending in .z .gz .bz2 .xz .lzma .lz4 .zst chooses one.
    Chunks are compressed in parallel on `threads` native threads (None: all
    cores); chunks that do not shrink are stored raw. 'lz4' without a level
    is LZ4's fast mode; ('lz4', 3..16) is LZ4-HC.

    whole_file: None (the default) does what joblib does with a method it
    names: compress='zlib', 'gzip', 'bz2', 'lzma', 'xz' (alone, in a tuple,
    or picked by a path ending .z .gz .bz2 .lzma .xz) writes a real file of
    that kind (gunzip, bunzip2, xz open it) holding the firkin container;
    gzip, bz2 and xz compress blocks of it in parallel. Such a file loads
    into memory (mmap_mode warns and is ignored, as joblib does).
    compress=True, a level, 'zstd' and 'lz4' compress each chunk of the
    container instead (in parallel; raw arrays stay memory-mappable).
    False: chunks for every method; True: the whole file (zlib for True or
    a level).

    filters: with compression, numeric arrays are rearranged before they
    are compressed by the filter ('shuffle', 'bitshuffle' or 'delta') that
    a sample of each array says compresses best, or none ("auto"); None
    turns filters off (files that firkin readers of format 1.1 can load),
    a filter name applies that filter to every numeric array.

    progress: None shows a byte-based bar (tqdm) for dumps over 256 MB
    when someone watches (stderr is a terminal, or a Jupyter kernel), True
    always, False never; firkin.set_defaults and FIRKIN_PROGRESS change what
    None means.

    Classes and functions defined in __main__ (a notebook, a script) are
    saved by value, with the values of the globals they use and their source
    file's path (the metadata's record, a script's __file__);
    strip_paths=True leaves every path out.

    URLs (s3://, gs://, memory://, ...; storage_options as in pandas) are
    written as one stream that appears only once complete: to S3 as a
    multipart upload aborted on failure (firkin._remote).

    A scikit-learn-style model's signature (class, pipeline steps, feature
    count and names, classes, output methods) goes into the metadata.
    check_data (an array, DataFrame, Series, sparse matrix or list): its
    first firkin._model.CHECK_ROWS rows and the model's outputs on them are
    stored too, for firkin.check and load(..., check=True).
    """
    is_path = _is_path(filename)
    if not is_path and not hasattr(filename, "write") and not _remote.is_url(filename):
        raise _ArgumentError("firkin.dump: the second argument must be a path or a binary file "
                             f"object, not {type(filename).__name__} (did you swap value and "
                             "filename?)")
    protocol = _check_protocol(protocol)
    threads = _check_threads(threads)
    user_meta = _meta.check_user_metadata(metadata)
    durable = _defaults.durable(durable)
    filename = _remote.local_path(filename)
    _remote.check_options(filename, storage_options)
    if _remote.is_url(filename):
        comp = _compress.resolve(compress, filename if isinstance(filename, str) else filename.path,
                                 filters, whole_file)
        return [_remote.dump(filename, storage_options, lambda f, name: _write(
            value, f, protocol, user_meta, comp, threads, progress, name=name,
            strip_paths=strip_paths, check_data=check_data))]
    comp = _compress.resolve(compress, os.fsdecode(os.fspath(filename)) if is_path else None, filters,
                             whole_file)
    if is_path:
        _dump_path(value, filename, protocol, user_meta, comp, threads, progress, strip_paths,
                   check_data, durable)
        return [os.fsdecode(os.fspath(filename)) if not isinstance(filename, str) else filename]
    _check_binary(filename, "dump")
    # a file object that cannot seek is a pipe or a socket to its reader
    _write(value, filename, protocol, user_meta, comp, threads, progress, strip_paths=strip_paths,
           check_data=check_data, streamed=not _seekable(filename))
    return None


def dumps(value: Any, compress: Compress = 0, protocol: int | None = None, *,
          metadata: Mapping[str, Any] | None = None, threads: int | None = None,
          progress: bool | None = None, strip_paths: bool = False,
          check_data: Any = None, filters: str | None = "auto",
          whole_file: bool | None = None) -> bytes:
    """The bytes of the firkin file `dump` would write."""
    protocol = _check_protocol(protocol)
    threads = _check_threads(threads)
    user_meta = _meta.check_user_metadata(metadata)
    bio = io.BytesIO()
    comp = _compress.resolve(compress, None, filters, whole_file)
    _write(value, bio, protocol, user_meta, comp, threads, progress, strip_paths=strip_paths,
           check_data=check_data)
    return bio.getvalue()


# ---------------------------------------------------------------- loading

#: the mappings of the mapped loads in progress: id of the ndarray view whose
#: slices _load_mapped_buffers hands out -> (its np.memmap, its address)
_MAPPINGS: dict[int, tuple] = {}


def _frombuffer_mmap(buf, dtype, shape, order, axis_order=None):
    """numpy's _frombuffer, but an array over the file's mapping (a plain
    slice of an ndarray view of the np.memmap, as _load_mapped_buffers hands
    them out) is an np.memmap made straight on that mapping, as np.memmap
    makes itself: one object per array (small arrays are many), with the
    mapping's mode and filename, flush() and its offset in the file."""
    base, readonly = buf, False
    if isinstance(buf, memoryview):
        base, readonly = buf.obj, buf.readonly
    mapped = _MAPPINGS.get(id(base.base)) if type(base) is np.ndarray else None
    if (mapped is not None and base.base is mapped[0] and base.nbytes
            and math.prod(shape) * np.dtype(dtype).itemsize == base.nbytes):
        whole, root, start = mapped
        off = base.__array_interface__["data"][0] - start  # = the offset in the file
        permuted = order == "K" and axis_order is not None
        # on the mmap object itself, as np.memmap does (base: the mmap, so flush() works)
        arr = np.ndarray.__new__(np.memmap, shape, dtype, buffer=root._mmap, offset=off,
                                 order="C" if permuted else order)
        arr._mmap, arr.filename, arr.offset, arr.mode = root._mmap, root.filename, off, root.mode
        if permuted:
            arr = arr.transpose(axis_order)
        if readonly and arr.flags.writeable:
            arr.flags.writeable = False
        return arr
    if axis_order is None:
        return _NP_FROMBUFFER(buf, dtype, shape, order)
    return _NP_FROMBUFFER(buf, dtype, shape, order, axis_order)


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


class _MmapHooks(_Hooks):
    """Arrays over the file's mapping stay np.memmap."""

    FROMBUFFER = _guards.checked_maker(_frombuffer_mmap, "numpy._core.numeric._frombuffer", 1,
                                       "dtype", True)


class _NativeHooks(_Hooks):
    """Arrays come back in native byte order."""

    FROMBUFFER = _guards.checked_maker(_frombuffer_native, "numpy._core.numeric._frombuffer", 1,
                                       "dtype", True, native_fast=_NP_FROMBUFFER)


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
    (computed with `hash_key`) must match the signature, or the load is
    refused as if the file were unsigned."""

    def __init__(self, reader, refused, signature):
        self.reader, self.refused, self.signature = reader, refused, signature
        self.hash_key = signature.hash_key

    def check(self, records: bytes) -> None:
        problem = self.signature.buffer_problem(records, self.reader.buffer_count)
        if problem and self.reader.flags & _core.FLAG_BUFFERS_MUTABLE:
            problem += ("; the file was opened with mmap_mode='r+', so its arrays may have been "
                        "changed in place on purpose")
        if problem:
            raise _refusal(self.reader, self.refused, _sign.INVALID, problem)


def _check_trust(reader, stream, trusted):
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
    raise _refusal(reader, refused, signature.status)


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


def _unpickle(reader, stream, buffers, mmap: bool, policy, budget=None, native=False):
    """native: arrays of the other byte order come back in this machine's
    (never for mapped arrays: firkin._byteorder.resolve)."""
    hooks = _MmapHooks if mmap else _NativeHooks if native else None
    try:
        if policy is True and hooks is None:
            return pickle.loads(stream, buffers=buffers)  # reads the bytes in place
        cls = pickle.Unpickler if policy is True else _trust.make_unpickler(pickle.Unpickler, policy)
        if hooks is not None:
            cls = _hooked_class(hooks, cls)
        unpickler = cls(_WholeStream(stream), buffers=buffers)
        unpickler.fk_name = reader.name  # refusals name the file
        with _amplify.active(budget if policy is not True else None):
            return unpickler.load()
    except pickle.UnpicklingError as exc:
        raise FormatError(f"{reader.name}: the pickle stream is invalid: {exc}") from exc


@functools.lru_cache(maxsize=64)
def _hooked_class(hooks, unpickler_cls):
    return type(f"_{hooks.__name__.strip('_')}{unpickler_cls.__name__.lstrip('_')}",
                (hooks, unpickler_cls), {})


def _warn_versions(reader, meta: dict) -> None:
    diffs = [_text.printable(f"{d['package']} {d['recorded']} (installed: "
                             f"{d['installed'] or 'not installed'})")
             for d in _meta.version_differences(meta)]
    if diffs:
        warnings.warn(f"{reader.name} was written with " + ", ".join(diffs)
                      + "; objects may behave differently or fail to load", VersionMismatchWarning,
                      stacklevel=4)


def _is_streamed(head: bytes) -> bool:
    """A whole, undamaged header of the streamed layout (docs/FORMAT.md)."""
    return (len(head) >= _core.HEADER_LEN and head[:8] == _core.MAGIC
            and bool(struct.unpack_from("<Q", head, 16)[0] & _core.REQ_STREAMED)
            and _core.crc32c(bytes(head[:60])) == struct.unpack_from("<I", head, 60)[0])


def _header_at(source, base: int) -> bytes:
    """Up to the 64 header bytes of the container at `base` in `source` (a
    descriptor, bytes-like data or a seekable file object)."""
    if isinstance(source, int):
        return os.pread(source, _core.HEADER_LEN, base)
    if hasattr(source, "read"):
        source.seek(base)
        return _read_upto(source, _core.HEADER_LEN)
    with memoryview(source) as mv:
        return bytes(mv[base:base + _core.HEADER_LEN])


def _reader(source, name, base=0, deframed=False):
    """The reader of the container at `base` in `source`. One in the streamed
    layout (written to a pipe or socket, then saved) has its frames removed
    first: it is read into memory."""
    if not deframed and _is_streamed(_header_at(source, base)):
        f = (_FdStream(source, base) if isinstance(source, int) else
             source if hasattr(source, "read") else io.BytesIO(memoryview(source)[base:]))
        if hasattr(source, "read"):
            source.seek(base)
        source, deframed = _read_container(f, b"", name)
        base = 0
    return _core.Reader(source, name=name, base=base, deframed=deframed)


class _FdStream:
    """read() over a descriptor from an offset, with pread (the descriptor's
    own position is left alone)."""

    def __init__(self, fd: int, pos: int):
        self.fd, self.pos = fd, pos

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, n, self.pos)
        self.pos += len(data)
        return data


def _buffer_bytes(reader, which=None) -> int:
    spans = reader.buffer_spans()
    return sum(n for i, (_, n, _) in enumerate(spans) if which is None or i in which)


def _read_buffers(reader, verify, threads, progress, which=None, signed=None):
    """The buffers (those numbered in `which`); with `signed`, their chunks
    are hashed as they are read, and (buffers, hash records) come back."""
    bar = _progress.Progress(progress, "firkin.load", _buffer_bytes(reader, which))
    try:
        return reader.read_buffers(verify=verify, threads=_check_threads(threads), which=which,
                                   progress=bar if bar.mode is not False else None,
                                   hash_key=signed.hash_key if signed else None)
    finally:
        bar.close()


def _unmapped_batches(reader, spans):
    """The buffers that cannot be mapped, in batches to read: one buffer
    section at a time (then dropped), the packed section's buffers together
    (it is read whole once)."""
    packed = set(reader.packed_buffers())
    unmapped = [i for i, (_, _, mappable) in enumerate(spans) if not mappable]
    batches = [[i] for i in unmapped if i not in packed]
    together = [i for i in unmapped if i in packed]
    return batches + [together] if together else batches


def _expansion(reader, kinds) -> int:
    """Bytes the compressed sections of these kinds declare beyond what the
    file holds (_amplify.excess)."""
    return sum(_amplify.excess(s["raw"], s["stored"]) for s in reader.sections()
               if s["kind"] in kinds and s["codec"] != "raw")


def _budget(reader, trusted, max_memory, call="firkin.load"):
    """The load's amplification budget (None under trusted=True), charged
    with what the pickle stream and metadata declare beyond their stored
    bytes: checked before either is decoded."""
    if trusted is True:
        return None
    budget = _amplify.Budget(max_memory, reader.name, call)
    budget.hold(sum(s["raw"] for s in reader.sections()))
    budget.charge(_expansion(reader, ("pickle stream", "metadata")),
                  "decompressing the pickle stream and metadata")
    return budget


def _charge_buffers(reader, stream, budget, policy, which=None) -> None:
    """Charge the compressed arrays' declared expansion before they are read,
    unless the file is your own (signed with your key). `which`: the
    buffers (NEXT_BUFFER numbers) to be read, else all."""
    if budget is None or policy is True:
        return
    secs = reader.sections()
    bufs = [s for s in secs if s["kind"] == "buffer"]
    packed = [s for s in secs if s["kind"] == "packed buffers"]  # read whole, for any of its buffers
    if which is not None:
        in_packed = set(reader.packed_buffers()) if packed else set()
        # buffer section k holds the k-th buffer that is not packed
        sectioned = [i for i in range(len(bufs) + len(in_packed)) if i not in in_packed]
        bufs = [s for k, s in enumerate(bufs) if sectioned[k] in which]
        packed = packed if not in_packed.isdisjoint(which) else []
    grown = sum(_amplify.excess(s["raw"], s["stored"]) for s in bufs + packed if s["codec"] != "raw")
    if grown > budget.limit - budget.charged - budget.expansion:
        if _sign.status(reader, stream) == _sign.VALID:
            return
    budget.charge(grown, f"decompressing {len(bufs) + len(packed)} compressed array section(s)")


def _load_reader(reader, verify, threads, progress=None, trusted=None, max_memory=None,
                 extra=None, native=True):
    budget = _budget(reader, trusted, max_memory)
    meta = _meta.parse(reader.metadata(), reader.name)  # before anything is unpickled
    stream = reader.pickle_stream()
    policy, signed = _check_trust(reader, stream, trusted)
    _charge_buffers(reader, stream, budget, policy)
    buffers = _read_buffers(reader, _verify_buffers(reader, verify, False), threads, progress,
                            signed=signed)
    if signed:
        buffers, records = buffers
        signed.check(records)
    obj = _unpickle(reader, stream, buffers, False, policy, budget, native)
    if extra is None or not extra.get("quiet"):  # firkin.check reports the versions itself
        _warn_versions(reader, meta)
    if extra is not None:
        extra.update(name=reader.name, meta=meta,
                     payload=_check_payload(reader, meta, stream, buffers, False, policy, budget))
    return obj


def _check_payload(reader, meta, stream, buffers, mmap, policy, budget):
    """The check sample a file declares (metadata "check"): the second pickle
    of the stream, after the object's STOP, whose out-of-band buffers follow
    the object's (docs/FORMAT.md, "Check sample"). It is judged by the same
    policy as the object (the allowlist, or the signature that let the object
    load), never a looser one. None when the file declares none."""
    if not isinstance(meta.get("check"), dict):
        return None
    where = f"{reader.name} (check sample)"
    info = _trust._scan(stream, reader.name)
    end, first = info["end"], info["n_buffers"]
    if end >= len(stream) or first > len(buffers):
        raise FormatError(f"{reader.name}: the metadata declares a check sample, but the pickle "
                          "stream ends with the object")
    rest = bytes(memoryview(stream)[end:])
    if policy is not True:
        judged = _trust._scan(rest, where)
        refused = _trust.untrusted(judged["globals"], judged["unsafe_ops"], policy)
        if refused:
            raise _trust._error(where, refused, "firkin.check")
    return _unpickle(reader, rest, list(buffers[first:]), mmap, policy, budget)


def _verify_buffers(reader, verify, mapped: bool) -> bool:
    if reader.flags & _core.FLAG_BUFFERS_MUTABLE and verify is not True:
        return False  # arrays were opened with mmap_mode='r+': their bytes are the user's to change
    if verify is None:
        return not mapped
    return bool(verify)


def _check_mmap_mode(mmap_mode):
    if mmap_mode not in _MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of None, 'r', 'r+', 'w+', 'c'; got {mmap_mode!r}")
    return _MMAP_MODES[mmap_mode]


def _is_firkin_bytes(head: bytes, tail: bytes = b"") -> bool:
    """True for firkin data, damaged included, so that the reader names the
    damage instead of the data being taken for another format (the rule is
    firkin._core.sniff's, the reader's own)."""
    return _core.sniff(head, tail) is not None


def _looks_like_firkin(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return _is_firkin_bytes(os.pread(fd, 8, 0), os.pread(fd, 8, size - 8) if size >= 8 else b"")


def _compressed_firkin(open_raw, name, mmap_mode, trusted, max_memory, verify, threads, progress,
                       ensure_native_byte_order, extra=None, stream=False):
    """A firkin file compressed as a whole (dumped with compress='gzip' and
    the like, into a gzip.GzipFile, bz2.BZ2File or lzma.LZMAFile, or
    compressed afterwards), its container read through the decompressor, as
    joblib loads a compressed file. open_raw() makes firkin._joblib's source
    of the raw bytes at their first byte. (False, None) when it is not one."""
    budget = None if trusted is True else _amplify.Budget(max_memory, name)
    got = _outer.unwrap(open_raw, name, budget, stream)
    if got is None:
        return False, None
    _, data, deframed = got
    if mmap_mode is not None:  # joblib's warning, word for word
        warnings.warn(f'mmap_mode "{mmap_mode}" is not compatible with compressed file {name}. '
                      f'"{mmap_mode}" flag will be ignored.', UserWarning, stacklevel=4)
    native = _byteorder.resolve(ensure_native_byte_order, None)
    reader = _reader(data, name, deframed=deframed)
    return True, _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)


def _load_foreign(f, name, mode, kwargs):
    """Files that are not firkin containers: joblib and pickle files."""
    from . import _joblib  # only needed for foreign files

    return _joblib.load_foreign(f, name, mode, **kwargs)


def load(filename: Target, mmap_mode: MmapMode = None, *, trusted: Trusted = None,
         verify: bool | None = None, threads: int | None = None, progress: bool | None = None,
         ensure_native_byte_order: bool | Literal["auto"] = "auto",
         max_memory: float | None = None, storage_options: dict[str, Any] | None = None,
         check: bool = False) -> Any:
    """Load an object saved by `dump` from a path or a binary file object.

    mmap_mode: None reads every array into fresh writable memory. 'r', 'r+',
    'c' map the file once and return its large arrays as np.memmap views of
    that one mapping (read-only, write-through, copy-on-write); 'w+' acts as
    'r+'. verify: checksums of array data are verified when read (not when
    mapped) by default; True also verifies mapped data, False skips it.
    progress: None shows a bar when more than 256 MB are read and someone
    watches (a terminal on stderr, a Jupyter kernel), True always, False
    never (firkin.set_defaults, FIRKIN_PROGRESS).

    trusted: what may be imported while loading. By default a file loads
    when every class and function it names is on firkin's allowlist (data
    types, NumPy, SciPy sparse, pandas, scikit-learn), or when it is signed
    with your key; otherwise UntrustedTypesError names what it would import,
    before anything is constructed. A list of "module.qualname" names trusts
    those too; trusted=True loads anything, which is as unsafe as pickle.

    joblib files (every version and compressor) and plain pickle files load
    too, under the same allowlist (they are never signed); for them
    ensure_native_byte_order has joblib's meaning ('auto': arrays come back in
    native byte order unless memory-mapped).

    max_memory: how many bytes a load may use beyond the bytes the file
    holds (None: firkin._amplify.DEFAULT_MAX_MEMORY, 2 GiB; math.inf: no
    bound). Decompression that grows data by more than that, and constructors
    the stream calls with sizes instead of data (bytearray(n), range(n),
    arrays whose shape their data does not back), are refused before the
    work is done with UntrustedTypesError. Arrays and data the file holds
    never count, nor do files signed with your key or trusted=True loads.

    filename may be an fsspec URL or OpenFile (storage_options as in
    pandas): the file is read with ranged, parallel reads; with mmap_mode, a
    local copy in $FIRKIN_CACHE_DIR is mapped (firkin._remote).

    check: True reruns the check sample the file stores (dump(...,
    check_data=)) through the loaded model and warns with ModelCheckWarning
    (a VersionMismatchWarning) when an output is not reproduced or the file
    holds no sample; "strict" raises ModelCheckError instead. The sample
    loads under the same policy as the model; firkin.check returns the report.
    """
    # every argument is checked before the file system is touched, as joblib does
    mode = _check_mmap_mode(mmap_mode)
    native = _byteorder.resolve(ensure_native_byte_order, mmap_mode)
    _amplify.check_max_memory(max_memory)
    how = _model.check_mode(check)
    # firkin.check's report names the versions that differ: no warning for them then
    extra = None if how is None else {"quiet": isinstance(how, _model.Collect)}
    _check_threads(threads)
    filename = _remote.local_path(filename)
    _remote.check_options(filename, storage_options)
    if _remote.is_url(filename):
        with _remote.open_input(filename, storage_options) as f:
            if mode == "r+":
                raise ValueError(f"firkin.load: mmap_mode={mmap_mode!r} would write to a local "
                                 f"copy of {f.name}, never to the object; use 'r' or 'c'")
            if mode is None:
                obj = _load_fileobj(f, verify, threads, progress, trusted,
                                    ensure_native_byte_order, max_memory, extra)
            else:
                local = _remote.cached_copy(f, _check_copy)
        if mode is not None:
            return load(local, mmap_mode, trusted=trusted, verify=verify, threads=threads,
                        progress=progress, ensure_native_byte_order=ensure_native_byte_order,
                        max_memory=max_memory, check=check)
    elif _is_path(filename):
        path = os.fsdecode(os.fspath(filename))
        with open(path, "r+b" if mode == "r+" else "rb") as f:
            if not _looks_like_firkin(f.fileno()):
                from . import _joblib  # only needed for foreign files

                done, obj = _compressed_firkin(
                    functools.partial(_joblib.sources._FdSource, f.fileno(), 0, path), path,
                                               mmap_mode, trusted, max_memory, verify, threads,
                                               progress, ensure_native_byte_order, extra)
                if not done:
                    obj = _load_foreign(f, path, mmap_mode, {
                        "trusted": trusted, "ensure_native_byte_order": ensure_native_byte_order,
                        "max_memory": max_memory})
            else:
                reader = _reader(f.fileno(), path)
                if mode is not None and reader.required_flags & _core.REQ_STREAMED:
                    warnings.warn(f"{path} was written to a stream (the streamed layout): its "
                                  "arrays are read into memory instead of being memory-mapped",
                                  UserWarning, stacklevel=2)
                    mode = None
                if mode is None:
                    obj = _load_reader(reader, verify, threads, progress, trusted, max_memory,
                                       extra, native)
                else:
                    obj = _load_mapped(reader, f, mode, verify, threads, progress, trusted,
                                       max_memory, extra)
    elif hasattr(filename, "read"):
        _check_binary(filename, "load")
        if mode is not None:
            # joblib's warnings, word for word: code matches on them
            if isinstance(filename, io.BytesIO):
                msg = ("In memory persistence is not compatible with mmap_mode "
                       f'"{mmap_mode}" flag passed. mmap_mode option will be ignored.')
            elif _plain_fd(filename) is None:
                msg = f'"{filename!r}" is not a raw file, mmap_mode "{mmap_mode}" flag will be ignored.'
            else:
                msg = ("firkin.load: mmap_mode has no effect when loading from a file object; "
                       "the arrays are read into memory")
            warnings.warn(msg, UserWarning, stacklevel=2)
        obj = _load_fileobj(filename, verify, threads, progress, trusted, ensure_native_byte_order,
                            max_memory, extra)
    else:
        raise _ArgumentError("firkin.load: expected a path or a binary file object, not "
                             f"{type(filename).__name__}")
    if how is not None:
        name = extra.get("name") or (os.fsdecode(os.fspath(filename)) if _is_path(filename)
                                     else str(getattr(filename, "name", "<file>")))
        _model.enforce(_model.run(name, obj, extra.get("payload"), extra.get("meta"), how), how)
    return obj


def _check_copy(path: str) -> None:
    """Every checksum of a freshly downloaded firkin file (others have none)."""
    with open(path, "rb") as f:
        if not _looks_like_firkin(f.fileno()):
            return
        reader = _reader(f.fileno(), path)
        reader.pickle_stream()
        spans = reader.buffer_spans()
        if spans:
            mm = np.memmap(f, dtype=np.uint8, mode="r", shape=(reader.total_length,))
            reader.verify_mapped(mm, verify=True)
            for batch in _unmapped_batches(reader, spans):
                reader.read_buffers(verify=True, which=batch)


def check(filename, *, trusted=None, mmap_mode=None, verify=None, threads=None, max_memory=None,
          storage_options=None, rtol=_model.RTOL, atol=_model.ATOL) -> CheckResult:
    """Load the model in `filename` (a path, fsspec URL or binary file object) under the
    same trust policy as load, and rerun the check sample its file stores
    (dump(..., check_data=)) through it: labels must match exactly, floats
    within |got - stored| <= atol + rtol * |stored|. The CheckResult (true
    when every output was reproduced; text with str(), a table in Jupyter)
    names the outputs that differ, by how much, and the recorded package
    versions that differ from the installed ones (so no VersionMismatchWarning
    is issued). A file without a sample gives a result that says so. Never
    raises for a mismatch."""
    collect = _model.Collect(rtol, atol)
    load(filename, mmap_mode, trusted=trusted, verify=verify, threads=threads, progress=False,
         max_memory=max_memory, storage_options=storage_options, check=collect)
    return collect.result


def _load_mapped(reader, f, mode, verify, threads, progress, trusted, max_memory=None, extra=None):
    budget = _budget(reader, trusted, max_memory)
    meta = _meta.parse(reader.metadata(), reader.name)  # before anything is unpickled
    stream = reader.pickle_stream()
    policy, signed = _check_trust(reader, stream, trusted)
    obj, buffers = _load_mapped_buffers(reader, f, mode, verify, threads, progress, stream, policy,
                                        signed, budget)
    if extra is None or not extra.get("quiet"):  # firkin.check reports the versions itself
        _warn_versions(reader, meta)
    if extra is not None:
        extra.update(name=reader.name, meta=meta,
                     payload=_check_payload(reader, meta, stream, buffers, True, policy, budget))
    return obj


def _load_mapped_buffers(reader, f, mode, verify, threads, progress, stream, policy, signed,
                         budget=None):
    """(object, buffers): a file trusted by its signature (`signed`) has every
    mapped byte hashed and checked against the signature before anything is built."""
    spans = reader.buffer_spans()
    packed = [i for i, (_, _, mappable) in enumerate(spans) if not mappable]
    if len(packed) == len(spans) and any(sec["codec"] != "raw" for sec in reader.sections()):
        # nothing can be mapped: joblib's warning, word for word (code matches on it)
        warnings.warn(f'mmap_mode "{mode}" is not compatible with compressed file {reader.name}. '
                      f'"{mode}" flag will be ignored.', UserWarning, stacklevel=3)
    elif packed:
        warnings.warn(f"{reader.name}: {len(packed)} of {len(spans)} arrays are compressed; they are "
                      "decompressed into memory instead of being memory-mapped", UserWarning,
                      stacklevel=3)
    if not spans:
        if signed:
            signed.check(b"")
        return _unpickle(reader, stream, [], True, policy, budget), []
    buffers = [None] * len(spans)
    records = b""
    if packed:
        _charge_buffers(reader, stream, budget, policy, set(packed))
        buffers = _read_buffers(reader, _verify_buffers(reader, verify, False), threads, progress,
                                packed, signed)
        if signed:
            buffers, records = buffers
    if len(packed) < len(spans):
        mm = np.memmap(f, dtype=np.uint8, mode=mode, shape=(reader.total_length,))
        crc = _verify_buffers(reader, verify, True)
        if crc or signed:
            got = reader.verify_mapped(mm, verify=crc, hash_key=signed.hash_key if signed else None)
            records += got or b""
    if signed:
        signed.check(records)
    if len(packed) < len(spans):
        if mode == "r+":
            # from here on the array bytes are the user's to change (verified first, if asked)
            reader.set_flag(_core.FLAG_BUFFERS_MUTABLE)
        whole = mm.view(np.ndarray)  # plain slices of it: _frombuffer_mmap makes the np.memmaps
        for i, (off, n, mappable) in enumerate(spans):
            if mappable:
                buffers[i] = whole[off:off + n]
        _MAPPINGS[id(whole)] = (whole, mm, whole.__array_interface__["data"][0])
        try:
            return _unpickle(reader, stream, buffers, True, policy, budget), buffers
        finally:
            del _MAPPINGS[id(whole)]
    return _unpickle(reader, stream, buffers, True, policy, budget), buffers


def _plain_fd(f):
    """The descriptor of a file object that is a plain file (io.FileIO, or a
    buffered reader, writer or random-access file over one, on a regular
    file), whose bytes are those of its descriptor; None for every other file
    object (decompressing wrappers, BytesIO, sockets, fsspec and user files),
    which are read through their own read()/readinto()."""
    raw = f.raw if isinstance(f, (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)) else f
    if type(raw) is not io.FileIO:
        return None
    try:
        fd = raw.fileno()
        return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError):
        return None


def _read_upto(f, n: int) -> bytes:
    """Up to n bytes from f, fewer only at its end: never more than n."""
    parts, got = [], 0
    while got < n:
        b = f.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


_PIECE = 16 << 20  # bytes read from a stream at a time: memory grows with what arrives


def _read_into(f, out: bytearray, n: int, name: str, what: str) -> None:
    """Append exactly n bytes of f to out; FormatError when the stream ends first."""
    while n:
        b = _read_upto(f, min(n, _PIECE))
        out += b
        n -= len(b)
        if n and len(b) < min(n + len(b), _PIECE):
            raise FormatError(f"{name}: truncated: the stream ended inside {what} "
                              f"({n} bytes missing after byte {len(out)})")


def _read_container(f, head: bytes, name: str):
    """The bytes of the firkin container that starts with `head` in the
    stream f, read up to its last byte and never past it (a pipe or socket
    that stays open afterwards is not waited on). Returns (data, deframed):
    a container in the streamed layout comes back without its frames."""
    out = bytearray(head)
    _read_into(f, out, _core.HEADER_LEN - len(out), name, "the header")
    if _core.crc32c(bytes(out[:60])) != struct.unpack_from("<I", out, 60)[0]:
        return out, False  # the reader names the damage
    required, = struct.unpack_from("<Q", out, 16)
    total, = struct.unpack_from("<Q", out, 32)
    if required & _core.REQ_STREAMED:
        frames = 0
        while True:
            ln = _read_upto(f, 4)
            if len(ln) < 4:
                raise FormatError(f"{name}: truncated: the stream ended after {len(out)} bytes "
                                  f"of the container ({frames} frames), before its end mark")
            n, = struct.unpack("<I", ln)
            if n == 0:
                return out, True
            if n > _core.MAX_FRAME:
                raise FormatError(f"{name}: frame {frames} at container offset {len(out)} claims "
                                  f"{n} bytes; frames hold at most {_core.MAX_FRAME}")
            _read_into(f, out, n, name, f"frame {frames}")
            frames += 1
    if total:  # written to a seekable output: the header says where it ends
        if total > len(out):
            _read_into(f, out, total - len(out), name, f"the {total}-byte container")
        return out, False
    # written by firkin < 1.2 to an output that could not seek: it ends at EOF
    while b := f.read(_PIECE):
        out += b
    return out, False


class _Replay:
    """A non-seekable stream whose first bytes were already read."""

    def __init__(self, head: bytes, f):
        self._head, self._f = head, f
        self.name = getattr(f, "name", None)

    def seekable(self):
        return False

    def read(self, n=-1):
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._f.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._f.read(n)

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _load_fileobj(f, verify, threads, progress, trusted, ensure_native_byte_order="auto",
                  max_memory=None, extra=None):
    name = getattr(f, "name", None)
    name = name if isinstance(name, str) else f"<{type(f).__name__}>"
    native = _byteorder.resolve(ensure_native_byte_order, None)
    seekable = _seekable(f)
    if not seekable:
        head = _read_upto(f, 8)
        if not _is_firkin_bytes(head):
            from . import _joblib

            if _joblib.detect(head) not in ("raw", "zf"):  # a firkin file compressed as a whole?
                seen = bytearray()
                done, obj = _compressed_firkin(
                    lambda: _outer.StreamRaw(head, f, seen, name), name, None, trusted, max_memory,
                    verify, threads, progress, ensure_native_byte_order, extra, stream=True)
                if done:
                    return obj
                head += bytes(seen)  # what the attempt read, handed on
            return _joblib.load_fileobj(_Replay(head, f), name,
                                        ensure_native_byte_order=ensure_native_byte_order,
                                        trusted=trusted, max_memory=max_memory)
        data, deframed = _read_container(f, head, name)
        reader = _reader(data, name, deframed=deframed)
        return _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)
    start = f.tell()
    head = _read_upto(f, _core.HEADER_LEN)
    if not head and start > 0 and f.seek(0, io.SEEK_END) == start:
        # positioned exactly at its end: a file object just dumped into, loaded
        # without seek(0) -- joblib reads such a file from its start
        start = 0
        f.seek(0)
        head = _read_upto(f, _core.HEADER_LEN)
    f.seek(start)
    if not _is_firkin_bytes(head[:8]):
        from . import _joblib

        fd = _plain_fd(f)
        if fd is not None:
            open_raw = functools.partial(_joblib.sources._FdSource, fd, start, name)
        elif isinstance(f, io.BytesIO):
            def open_raw(data=f.getvalue()):
                src = _joblib.sources._BytesSource(data, name)
                src.pos = start
                return src
        else:
            def open_raw():
                f.seek(start)
                return _joblib.sources._FileSource(f, name)
        done, obj = _compressed_firkin(open_raw, name, None, trusted, max_memory, verify, threads,
                                       progress, ensure_native_byte_order, extra)
        if done:
            return obj
        f.seek(start)
        return _joblib.load_fileobj(f, name, ensure_native_byte_order=ensure_native_byte_order,
                                    trusted=trusted, max_memory=max_memory)
    if _is_streamed(head):
        data, _ = _read_container(f, b"", name)  # leaves f right after the container
        reader = _reader(data, name, deframed=True)
        return _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)
    if isinstance(f, io.BytesIO):
        source = f.getvalue()  # shares the BytesIO's buffer in the common case
    else:
        source = _plain_fd(f)
        if source is not None and f.writable():
            f.flush()
        source = f if source is None else source
    reader = _reader(source, name, start)
    obj = _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)
    f.seek(start + reader.total_length)  # like pickle: positioned after what was read
    return obj


def _check_bytes_like(data, what: str) -> None:
    try:
        memoryview(data).release()
    except TypeError:
        raise TypeError(f"firkin.{what}: expected a bytes-like object, not {type(data).__name__}"
                        + (" (use firkin.load for paths)" if _is_path(data) else "")) from None


def _loads_named(data, name, trusted, verify, threads, progress, ensure_native_byte_order,
                 max_memory=None, extra=None):
    with memoryview(data) as mv:
        head, tail = bytes(mv[:8]), bytes(mv[-8:])
    if not _is_firkin_bytes(head, tail):
        from . import _joblib

        done, obj = _compressed_firkin(functools.partial(_joblib.sources._BytesSource, data, name),
                                       name, None, trusted, max_memory, verify, threads, progress,
                                       ensure_native_byte_order, extra)
        if done:
            return obj
        return _joblib.loads_foreign(data, name, ensure_native_byte_order=ensure_native_byte_order,
                                     trusted=trusted, max_memory=max_memory)
    native = _byteorder.resolve(ensure_native_byte_order, None)
    reader = _reader(data, name)
    return _load_reader(reader, verify, threads, progress, trusted, max_memory, extra, native)


def loads(data: Buffer, *, trusted: Trusted = None, verify: bool | None = None,
          threads: int | None = None, progress: bool | None = None,
          ensure_native_byte_order: bool | Literal["auto"] = "auto",
          max_memory: float | None = None) -> Any:
    """Load an object from the bytes `dumps` returned (any bytes-like object);
    joblib and pickle bytes load too. max_memory as for load."""
    if isinstance(data, str):
        raise TypeError("firkin.loads: expected a bytes-like object, not str (use firkin.load for paths)")
    _check_bytes_like(data, "loads")
    _amplify.check_max_memory(max_memory)
    return _loads_named(data, "<bytes>", trusted, verify, threads, progress,
                        ensure_native_byte_order, max_memory)


def load_metadata(filename: Target | bytearray | memoryview, *,
                  storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata recorded in a firkin file, without loading its objects
    (of a URL: a few ranged reads)."""
    filename = _remote.local_path(filename)
    _remote.check_options(filename, storage_options)
    if _is_path(filename) or _remote.is_url(filename):
        from ._inspect import _open_reader, _opened  # a file compressed as a whole too

        with _opened(filename, storage_options, call="firkin.load_metadata") as (_, source, path, _):
            reader = _open_reader(source, path)
            raw = reader.metadata()
    elif isinstance(filename, (bytearray, memoryview)):
        reader = _reader(filename, "<bytes>")
        raw = reader.metadata()
    else:
        _check_binary(filename, "load_metadata")
        start = filename.tell()
        reader = _reader(filename, getattr(filename, "name", "<file>"), start)
        raw = reader.metadata()
        filename.seek(start)
    meta = _meta.parse(raw, reader.name)
    meta["size"] = reader.total_length
    return meta
