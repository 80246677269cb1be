"""Object storage: fsspec URLs (s3://, gs://, az://, memory://, ...) wherever a
path is accepted.

Reading goes through `RangeFile`, a seekable binary file object over ranged
reads of the object: the container's header, trailer, index and metadata
come in a few small ranged reads, and once reads run sequentially (the
pickle stream, the buffers) whole parts are fetched ahead, several at a
time, and copied straight into the memory the reader gives (the arrays'
final memory). Writing streams the container: to S3 as one multipart
upload with several parts in flight, completed only when the dump
succeeded and aborted otherwise; to any other store as a temporary object
moved over the target when complete.

fsspec is imported only when a URL is used: `import firkin` does not.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import tempfile
import threading

from . import _core, _text

#: Remote reads: parts fetched ahead while a load reads sequentially, and
#: how many of them are in flight at once.
READ_PART = 8 << 20
READ_AHEAD = 4
#: The first read near either end of an object fetches this much, so that
#: header, trailer, index and metadata take one or two requests.
SMALL_READ = 64 << 10
#: S3 multipart uploads: part size (S3's minimum is 5 MiB) and parts in flight.
WRITE_PART = 8 << 20
WRITE_INFLIGHT = 4

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::?//|^[A-Za-z][A-Za-z0-9+.-]*::")
TEMP_MARK = ".firkin-tmp-"


def is_url(obj) -> bool:
    """A str naming an fsspec URL (not file://, which is a local path) or an
    fsspec OpenFile; fsspec itself is not imported."""
    if isinstance(obj, str):
        return bool(_URL.match(obj)) and not obj.startswith("file://")
    return type(obj).__module__.startswith("fsspec") and hasattr(obj, "fs") and hasattr(obj, "path")


def local_path(obj):
    """A file:// URL as the local path it names (else the object itself)."""
    if isinstance(obj, str) and obj.startswith("file://"):
        return obj[len("file://"):]
    return obj


def check_options(filename, storage_options) -> None:
    if storage_options is not None and not is_url(filename):
        raise ValueError("storage_options are for fsspec URLs (s3://..., gs://..., memory://...), "
                         f"not for {type(filename).__name__} {filename!r}"[:300])
    if storage_options is not None and not isinstance(storage_options, dict):
        raise TypeError(f"storage_options must be a dict, not {type(storage_options).__name__}")


def _fsspec():
    try:
        import fsspec  # optional: only URLs need it
    except ImportError:
        raise ImportError("firkin: URLs need fsspec (and s3fs for s3://, gcsfs for gs://, adlfs "
                          "for az://): pip install 'firkin[remote]'") from None
    return fsspec


def resolve(urlpath, storage_options=None):
    """(filesystem, path inside it, the name errors show) for a URL or OpenFile."""
    if not isinstance(urlpath, str):  # an fsspec OpenFile
        if storage_options:
            raise ValueError("storage_options cannot be given with an fsspec OpenFile "
                             "(its filesystem already has its options)")
        fs = urlpath.fs
        proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        return fs, urlpath.path, f"{proto}://{urlpath.path}"
    fsspec = _fsspec()
    try:
        fs, path = fsspec.core.url_to_fs(urlpath, **(storage_options or {}))
    except ImportError as exc:
        raise ImportError(f"firkin: {urlpath}: {exc} (pip install 'firkin[remote]' installs "
                          "fsspec and s3fs)") from exc
    except ValueError as exc:  # a protocol fsspec does not know
        raise ValueError(f"firkin: {urlpath}: {exc}") from None
    return fs, path, urlpath


def _is_s3(fs) -> bool:
    return type(fs).__module__.startswith("s3fs")


def _stat(fs, path, name) -> dict:
    """The object's info (size, ETag), with errors that name the URL."""
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - a filesystem without a cache
        pass
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(2, f"firkin: no such object: {name} ({_why(exc)})") from None
    except PermissionError as exc:
        raise PermissionError(13, f"firkin: access denied to {name}: {_why(exc)} (check the "
                              "credentials in storage_options or the environment)") from None
    except OSError as exc:
        raise type(exc)(f"firkin: cannot reach {name}: {_why(exc)}") from exc
    except Exception as exc:
        raise _transport(exc, f"firkin: cannot reach {name}") from exc
    if info.get("type") == "directory":
        raise IsADirectoryError(21, f"firkin: {name} is a directory, not an object")
    return info


def _why(exc) -> str:
    return _text.printable(str(exc) or type(exc).__name__)[:300]


_CLIENT_LIBRARIES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google",
                     "azure", "gcsfs", "adlfs")


def _transport(exc: Exception, what: str) -> Exception:
    """A storage client's own connection error (botocore's
    EndpointConnectionError is no OSError) as a ConnectionError naming the
    URL; other exceptions as they are."""
    if type(exc).__module__.split(".")[0] in _CLIENT_LIBRARIES:
        return ConnectionError(f"{what}: {type(exc).__name__}: {_why(exc)}")
    return exc


def etag(info: dict):
    """What identifies this version of the object: its ETag, else its
    modification time (stores without ETags)."""
    for k in ("ETag", "etag", "md5Hash", "content_md5", "LastModified", "mtime", "created"):
        if info.get(k):
            return str(info[k]).strip('"')
    return None


# ------------------------------------------------------------------ reading

class RangeFile(io.RawIOBase):
    """A read-only, seekable view of one remote object through ranged reads.

    Small reads that are not in sequence (header, trailer, index) fetch
    SMALL_READ bytes around themselves; sequential reads switch to
    fetching READ_PART-byte parts ahead, READ_AHEAD of them in flight, and
    copy them into the caller's buffer. `bytes_fetched` counts what was
    transferred."""

    def __init__(self, fs, path, name, info):
        super().__init__()
        self.fs, self.path, self.name = fs, path, name
        self.size = int(info["size"])
        self.etag = etag(info)
        self.bytes_fetched = 0
        self._pos = 0
        self._last_end = -1
        self._run = 0             # bytes read in sequence so far
        self._window = (0, b"")   # the last small fetch
        self._tail = None         # the object's last SMALL_READ bytes, once fetched
        self._parts = {}          # part number -> Future of its bytes
        self._pool = None
        self._lock = threading.Lock()

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=0):
        if whence == 0:
            pos = offset
        elif whence == 1:
            pos = self._pos + offset
        elif whence == 2:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(22, f"{self.name}: negative seek position {pos}")
        self._pos = pos
        return pos

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            data = self.fs.cat_file(self.path, start=start, end=end)
        except FileNotFoundError as exc:
            raise FileNotFoundError(2, f"firkin: {self.name} disappeared while being read "
                                    f"({_why(exc)})") from None
        except OSError as exc:
            raise OSError(exc.errno, f"firkin: reading {self.name} (bytes {start}-{end}): "
                          f"{_why(exc)}") from exc
        except Exception as exc:
            raise _transport(exc, f"firkin: reading {self.name} (bytes {start}-{end})") from exc
        if len(data) != end - start:
            from ._core import FormatError

            raise FormatError(f"{self.name}: the object changed or ended while being read: asked "
                              f"for bytes {start}-{end}, got {len(data)} (size was {self.size})")
        with self._lock:
            self.bytes_fetched += len(data)
        return data

    def _part(self, k: int):
        fut = self._parts.get(k)
        if fut is None:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(READ_AHEAD, "firkin-read")
            start = k * READ_PART
            fut = self._pool.submit(self._fetch, start, min(self.size, start + READ_PART))
            self._parts[k] = fut
        return fut

    def _streamed(self, mv, pos: int, n: int) -> None:
        first, last = pos // READ_PART, (pos + n - 1) // READ_PART
        nparts = (self.size + READ_PART - 1) // READ_PART
        for k in range(first, min(nparts, last + READ_AHEAD)):
            self._part(k)
        for k in [k for k in self._parts if k < first]:  # behind us: never read again
            self._parts.pop(k).cancel()
        done = 0
        for k in range(first, last + 1):
            data = self._parts[k].result()
            lo = pos + done - k * READ_PART
            take = min(n - done, len(data) - lo)
            mv[done:done + take] = data[lo:lo + take]
            done += take

    def _small(self, mv, pos: int, n: int) -> None:
        tail_start = max(0, self.size - SMALL_READ)
        if pos >= tail_start:
            if self._tail is None:
                self._tail = self._fetch(tail_start, self.size)
            mv[:n] = self._tail[pos - tail_start:pos - tail_start + n]
            return
        start, data = self._window
        if not (start <= pos and pos + n <= start + len(data)):
            end = min(self.size, pos + max(n, SMALL_READ))
            self._window = start, data = pos, self._fetch(pos, end)
        mv[:n] = data[pos - start:pos - start + n]

    def readinto(self, b) -> int:
        with memoryview(b) as view, view.cast("B") as mv:
            pos = self._pos
            n = max(0, min(len(mv), self.size - pos))
            if n == 0:
                return 0
            self._run = self._run + n if pos == self._last_end else n
            if n >= SMALL_READ * 4 or self._run >= SMALL_READ * 4:
                self._streamed(mv, pos, n)
            else:
                self._small(mv, pos, n)
            self._pos = self._last_end = pos + n
            return n

    def read(self, n=-1):
        if n is None or n < 0:
            n = max(0, self.size - self._pos)
        buf = bytearray(min(n, max(0, self.size - self._pos)))
        got = self.readinto(buf)
        return bytes(buf[:got])

    def readall(self):
        return self.read(-1)

    def fileno(self):
        raise io.UnsupportedOperation(f"{self.name} is a remote object, not a local file")

    def close(self):
        if self._pool is not None:
            for fut in self._parts.values():
                fut.cancel()
            self._pool.shutdown(wait=True)
            self._pool = None
        self._parts.clear()
        self._tail = None
        self._window = (0, b"")
        super().close()


def open_input(urlpath, storage_options=None) -> RangeFile:
    fs, path, name = resolve(urlpath, storage_options)
    return RangeFile(fs, path, name, _stat(fs, path, name))


def head_tail(f: RangeFile) -> tuple[bytes, bytes]:
    n = _core.SNIFF_LEN
    f.seek(0)
    head = f.read(n)
    f.seek(max(0, f.size - n))
    tail = f.read(n) if f.size >= n else b""
    f.seek(0)
    return head, tail


def copy_to(f: RangeFile, out) -> None:
    """The whole object into the binary file `out`, part by part (parallel
    ranged reads ahead)."""
    f.seek(0)
    part = bytearray(READ_PART)
    while True:
        got = f.readinto(part)
        if not got:
            return
        out.write(memoryview(part)[:got])


# ------------------------------------------------------------------ writing

class _MultipartSink(io.RawIOBase):
    """Writes one S3 object as a multipart upload: WRITE_PART-byte parts,
    WRITE_INFLIGHT of them uploading at once while the dump goes on.
    `finish()` completes the upload (the object appears, whole, only
    then); `abort()` aborts it, leaving neither object nor parts. An object
    smaller than one part is sent with one PUT at finish()."""

    def __init__(self, fs, path, name):
        super().__init__()
        self.fs, self.name = fs, name
        self.bucket, self.key, _ = fs.split_path(path)
        self.upload_id = None
        self.parts = []   # (part number, Future of its ETag)
        self.buf = bytearray()
        self.written = 0
        self._pool = None

    def writable(self):
        return True

    def seekable(self):
        return False

    def tell(self):
        return self.written

    def write(self, b) -> int:
        with memoryview(b) as view, view.cast("B") as mv:
            n = len(mv)
            done = 0
            while done < n:
                take = min(n - done, WRITE_PART - len(self.buf))
                self.buf += mv[done:done + take]
                done += take
                if len(self.buf) >= WRITE_PART:
                    self._send_part()
        self.written += n
        return n

    def _call(self, method, **kw):
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kw)
        except FileNotFoundError as exc:
            raise FileNotFoundError(2, f"firkin.dump: cannot write {self.name}: {_why(exc)} "
                                    "(does the bucket exist?)") from None
        except PermissionError as exc:
            raise PermissionError(13, f"firkin.dump: access denied writing {self.name}: "
                                  f"{_why(exc)} (check the credentials)") from None
        except OSError as exc:
            raise OSError(exc.errno, f"firkin.dump: writing {self.name} ({method}): "
                          f"{_why(exc)}") from exc
        except Exception as exc:
            raise _transport(exc, f"firkin.dump: writing {self.name} ({method})") from exc

    def _send_part(self) -> None:
        if self.upload_id is None:
            self.upload_id = self._call("create_multipart_upload")["UploadId"]
            self._pool = concurrent.futures.ThreadPoolExecutor(WRITE_INFLIGHT, "firkin-upload")
        # at most WRITE_INFLIGHT parts held: wait for the oldest before queueing more
        pending = [f for _, f in self.parts if not f.done()]
        while len(pending) >= WRITE_INFLIGHT:
            concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            pending = [f for _, f in self.parts if not f.done()]
        for _, f in self.parts:
            if f.done() and f.exception() is not None:
                raise f.exception()
        number = len(self.parts) + 1
        body, self.buf = self.buf, bytearray()
        fut = self._pool.submit(lambda: self._call("upload_part", PartNumber=number,
                                                   UploadId=self.upload_id, Body=body)["ETag"])
        self.parts.append((number, fut))

    def finish(self) -> None:
        if self.upload_id is None:
            self._call("put_object", Body=bytes(self.buf))
            return
        if self.buf:
            self._send_part()
        done = [{"PartNumber": n, "ETag": f.result()} for n, f in self.parts]
        self._call("complete_multipart_upload", UploadId=self.upload_id,
                   MultipartUpload={"Parts": done})
        self._pool.shutdown()

    def abort(self) -> None:
        if self._pool is not None:
            for _, f in self.parts:
                f.cancel()
            self._pool.shutdown(wait=True)
        if self.upload_id is not None:
            self._call("abort_multipart_upload", UploadId=self.upload_id)
            self.upload_id = None


def dump(urlpath, storage_options, write) -> str:
    """Stream a dump to a URL: `write(file object, name)` writes the
    container; the object appears only once it is complete."""
    fs, path, name = resolve(urlpath, storage_options)
    if _is_s3(fs):
        sink = _MultipartSink(fs, path, name)
        try:
            write(sink, name)
            sink.finish()
        except BaseException:
            try:
                sink.abort()
            except Exception:  # noqa: BLE001 - the dump's own error matters more
                pass
            raise
        finally:
            _invalidate(fs, path)
        return name
    # other stores: a temporary object next to the target, moved over it when complete
    parent, base = path.rsplit("/", 1) if "/" in path else ("", path)
    tmp = f"{parent}/.{base}{TEMP_MARK}{secrets.token_hex(4)}" if parent else \
        f".{base}{TEMP_MARK}{secrets.token_hex(4)}"
    try:
        with fs.open(tmp, "wb") as f:
            write(f, name)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001
            pass
        raise
    finally:
        _invalidate(fs, path)
    return name


def _invalidate(fs, path) -> None:
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------ cache for mmap_mode

#: Where `load(url, mmap_mode=...)` keeps local copies of remote objects.
CACHE_ENV = "FIRKIN_CACHE_DIR"


def cached_copy(f: RangeFile, check) -> str:
    """The local copy of the object `f` reads, in $FIRKIN_CACHE_DIR: reused
    when the object's ETag and size are those recorded with it, else
    downloaded (parallel ranged reads) to a temporary file, passed to
    `check(path)` (firkin's checksums) and renamed into place."""
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        raise ValueError(
            f"firkin.load: mmap_mode on a URL ({f.name}) maps a local copy of the object, and "
            f"no cache directory is set: set the environment variable {CACHE_ENV} to a "
            "directory of yours (copies are checked against the object's ETag and size and "
            "firkin's checksums), or load without mmap_mode to read the arrays into memory")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    key = hashlib.sha256(f.name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    data, tag = os.path.join(cache, key + ".firkin"), os.path.join(cache, key + ".json")
    want = {"url": f.name, "size": f.size, "etag": f.etag}
    try:
        with open(tag, encoding="utf-8") as t:
            have = json.load(t)
        if f.etag is not None and have == want and os.path.getsize(data) == f.size:
            return data
    except (OSError, ValueError):
        pass
    tmp = f"{data}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as out:
            copy_to(f, out)
        check(tmp)
        os.replace(tmp, data)
        with open(tag + ".tmp", "w", encoding="utf-8") as t:
            json.dump(want, t)
        os.replace(tag + ".tmp", tag)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return data


@contextlib.contextmanager
def opened(filename, storage_options=None):
    """(file object, source for firkin's Reader, name, size) of a local path
    or a URL: one way in for the functions that read parts of a file."""
    filename = local_path(filename)
    check_options(filename, storage_options)
    if is_url(filename):
        with open_input(filename, storage_options) as f:
            yield f, f, f.name, f.size
        return
    path = os.fsdecode(os.fspath(filename))
    with open(path, "rb") as f:
        yield f, f.fileno(), path, os.fstat(f.fileno()).st_size


@contextlib.contextmanager
def local_file(f):
    """A local temporary copy of a remote object, for the joblib and pickle
    scanners that read file descriptors."""
    with tempfile.NamedTemporaryFile(prefix="firkin-") as tmp:
        copy_to(f, tmp)
        tmp.flush()
        tmp.seek(0)
        yield tmp
