"""dump / load / dumps / loads / load_metadata / check: the public API over
firkin._core. Arguments are checked in firkin._args, paths are replaced
atomically by firkin._atomic, containers are found by firkin._source and
loaded by firkin._load (firkin._unpickle decides trust and unpickles)."""
from __future__ import annotations

import functools
import io
import os
import pickle
import warnings
from typing import TYPE_CHECKING

from . import (
    _amplify,
    _args,
    _atomic,
    _byteorder,
    _byvalue,
    _compress,
    _core,
    _defaults,
    _load,
    _meta,
    _model,
    _outer,
    _progress,
    _remote,
    _sign,
    _source,
)
from ._atomic import TEMP_SUFFIX
from ._core import ChecksumError, FirkinError, FormatError, UntrustedTypesError
from ._meta import VersionMismatchWarning
from ._model import CheckResult, ModelCheckError, ModelCheckWarning

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

codecs = _compress.codecs


#: Buffers of at least this many bytes go out-of-band (own aligned section,
#: memory-mappable); smaller ones stay inside the pickle stream. Tuned by
#: bench/bench.py; tests lower it to push many small arrays out-of-band.
OOB_THRESHOLD = _core.DEFAULT_THRESHOLD


def _write(value, target, protocol, user_meta, compress, threads, progress=None, name=None,
           strip_paths=False, check_data=None, fsync=True, streamed=False) -> int:
    """streamed: write the streamed layout (docs/FORMAT.md), which a reader of
    a pipe or socket can delimit without seeking. Sinks whose readers seek
    (files, object stores through firkin._remote) keep the plain layout."""
    codec, level, described, filters = compress
    outer = None
    if described and described.get("whole_file"):
        # one gzip/zlib/bz2/lzma/xz file around the container, as joblib writes
        outer = _outer.Compressor(target, described["method"], level, threads, name=name)
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
    keeps the temporary file and its atomic replacement (a file of yours is
    swapped with it, renameat2 RENAME_EXCHANGE, so that ext4 does not write
    it out first): a killed process still never leaves a torn file, but
    after a power loss or OS crash the target may hold the previous file,
    or be empty or torn. File objects are never fsynced.

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
    is_path = _args.is_path(filename)
    if not is_path and not hasattr(filename, "write") and not _remote.is_url(filename):
        raise _args.ArgumentError("firkin.dump: the second argument must be a path or a binary "
                                  f"file object, not {type(filename).__name__} (did you swap "
                                  "value and filename?)")
    protocol = _args.check_protocol(protocol)
    threads = _args.check_threads(threads)
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
        _atomic.replace(os.fsdecode(os.fspath(filename)), lambda fd, name: _write(
            value, fd, protocol, user_meta, comp, threads, progress, name=name,
            strip_paths=strip_paths, check_data=check_data, fsync=durable), durable)
        return [os.fsdecode(os.fspath(filename)) if not isinstance(filename, str) else filename]
    _args.check_binary(filename, "dump")
    # a file object that cannot seek (or only appends) is a pipe or a socket to its reader
    _write(value, filename, protocol, user_meta, comp, threads, progress, strip_paths=strip_paths,
           check_data=check_data, streamed=not _source.writes_in_place(filename))
    return None


def dumps(value: Any, compress: Compress = 0, protocol: int | None = None, *,
          metadata: Mapping[str, Any] | None = None, threads: int | None = None,
          progress: bool | None = None, strip_paths: bool = False,
          check_data: Any = None, filters: str | None = "auto",
          whole_file: bool | None = None) -> bytes:
    """The bytes of the firkin file `dump` would write."""
    protocol = _args.check_protocol(protocol)
    threads = _args.check_threads(threads)
    user_meta = _meta.check_user_metadata(metadata)
    bio = io.BytesIO()
    comp = _compress.resolve(compress, None, filters, whole_file)
    _write(value, bio, protocol, user_meta, comp, threads, progress, strip_paths=strip_paths,
           check_data=check_data)
    return bio.getvalue()


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
    mode = _args.check_mmap_mode(mmap_mode)
    native = _byteorder.resolve(ensure_native_byte_order, mmap_mode)
    _amplify.check_max_memory(max_memory)
    how = _model.check_mode(check)
    # firkin.check's report names the versions that differ: no warning for them then
    extra = None if how is None else {"quiet": isinstance(how, _model.Collect)}
    _args.check_threads(threads)
    filename = _remote.local_path(filename)
    _remote.check_options(filename, storage_options)
    if _remote.is_url(filename):
        with _remote.open_input(filename, storage_options) as f:
            if mode == "r+":
                raise ValueError(f"firkin.load: mmap_mode={mmap_mode!r} would write to a local "
                                 f"copy of {f.name}, never to the object; use 'r' or 'c'")
            if mode is None:
                obj = _load.load_fileobj(f, verify, threads, progress, trusted,
                                         ensure_native_byte_order, max_memory, extra)
            else:
                local = _remote.cached_copy(f, _load.check_copy)
        if mode is not None:
            return load(local, mmap_mode, trusted=trusted, verify=verify, threads=threads,
                        progress=progress, ensure_native_byte_order=ensure_native_byte_order,
                        max_memory=max_memory, check=check)
    elif _args.is_path(filename):
        path = os.fsdecode(os.fspath(filename))
        with open(path, "r+b" if mode == "r+" else "rb") as f:
            if not _source.looks_like_firkin(f.fileno()):
                from . import _joblib  # only needed for foreign files

                done, obj = _load.compressed_firkin(
                    functools.partial(_joblib.sources._FdSource, f.fileno(), 0, path), path,
                    mmap_mode, trusted, max_memory, verify, threads, progress,
                    ensure_native_byte_order, extra)
                if not done:
                    obj = _load.load_foreign(f, path, mmap_mode, {
                        "trusted": trusted, "ensure_native_byte_order": ensure_native_byte_order,
                        "max_memory": max_memory})
            else:
                reader = _source.open_reader(f.fileno(), path)
                if mode is not None and reader.required_flags & _core.REQ_STREAMED:
                    warnings.warn(f"{path} was written to a stream (the streamed layout): its "
                                  "arrays are read into memory instead of being memory-mapped",
                                  UserWarning, stacklevel=2)
                    mode = None
                obj = _load.load_reader(reader, verify, threads, progress, trusted, max_memory,
                                        extra, native, None if mode is None else (f, mode))
    elif hasattr(filename, "read"):
        _args.check_binary(filename, "load")
        if mode is not None:
            # joblib's warnings, word for word: code matches on them
            if isinstance(filename, io.BytesIO):
                msg = ("In memory persistence is not compatible with mmap_mode "
                       f'"{mmap_mode}" flag passed. mmap_mode option will be ignored.')
            elif _source.plain_fd(filename) is None:
                msg = f'"{filename!r}" is not a raw file, mmap_mode "{mmap_mode}" flag will be ignored.'
            else:
                msg = ("firkin.load: mmap_mode has no effect when loading from a file object; "
                       "the arrays are read into memory")
            warnings.warn(msg, UserWarning, stacklevel=2)
        obj = _load.load_fileobj(filename, verify, threads, progress, trusted,
                                 ensure_native_byte_order, max_memory, extra)
    else:
        raise _args.ArgumentError("firkin.load: expected a path or a binary file object, not "
                                  f"{type(filename).__name__}")
    if how is not None:
        name = extra.get("name") or (os.fsdecode(os.fspath(filename)) if _args.is_path(filename)
                                     else _source.display_name(filename))
        _model.enforce(_model.run(name, obj, extra.get("payload"), extra.get("meta"), how), how)
    return obj


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


def loads(data: Buffer, *, trusted: Trusted = None, verify: bool | None = None,
          threads: int | None = None, progress: bool | None = None,
          ensure_native_byte_order: bool | Literal["auto"] = "auto",
          max_memory: float | None = None) -> Any:
    """Load an object from the bytes `dumps` returned (any bytes-like object);
    joblib and pickle bytes load too. max_memory as for load."""
    if isinstance(data, str):
        raise TypeError("firkin.loads: expected a bytes-like object, not str (use firkin.load for paths)")
    _args.check_bytes_like(data, "loads")
    _amplify.check_max_memory(max_memory)
    return _load.loads_named(data, "<bytes>", trusted, verify, threads, progress,
                             ensure_native_byte_order, max_memory)


def load_metadata(filename: Target | bytearray | memoryview, *,
                  storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata recorded in a firkin file, without loading its objects
    (of a URL: a few ranged reads)."""
    filename = _remote.local_path(filename)
    _remote.check_options(filename, storage_options)
    if _args.is_path(filename) or _remote.is_url(filename):
        from ._inspect import _open_reader, _opened  # a file compressed as a whole too

        with _opened(filename, storage_options, call="firkin.load_metadata") as (_, source, path, _):
            reader = _open_reader(source, path)
            raw = reader.metadata()
    elif isinstance(filename, (bytearray, memoryview)):
        reader = _source.open_reader(filename, "<bytes>")
        raw = reader.metadata()
    else:
        _args.check_binary(filename, "load_metadata")
        start = filename.tell()
        reader = _source.open_reader(filename, _source.display_name(filename), start)
        raw = reader.metadata()
        filename.seek(start)
    meta = _meta.parse(raw, reader.name)
    meta["size"] = reader.total_length
    return meta
