"""Type stubs of firkin's C core (src/). The public API is firkin/__init__.py."""
from typing import Any, Callable, Optional, Sequence, TypedDict

__version__: str
FLAG_BUFFERS_MUTABLE: int
REQ_STREAMED: int  # required feature bit 0: the streamed layout (docs/FORMAT.md)
REQ_PACKED: int  # required feature bit 2: a packed-buffers section (format 1.3)
MAX_FRAME: int  # largest frame of the streamed layout
MAP_NORESERVE: int  # the platform's mmap flag (0 where it has none): address space without a memory reservation
HEADER_LEN: int  # the header's length (docs/FORMAT.md, "Header")
HEADER_FIXED_LEN: int  # its fixed part (magic, version, length, required flags): what a signature covers
FRAME_PREFIX_LEN: int  # a streamed-layout frame's length prefix
SNIFF_LEN: int  # sniff reads this many bytes at the start (and the end) of some data
FORMAT_MAJOR: int  # the container format this firkin writes
FORMAT_MINOR: int
HASH_STREAM: int  # the buffer number of a pickle stream chunk's hash record (0xFFFFFFFE)
DEFAULT_THRESHOLD: int
DEFAULT_CHUNK_SIZE: int
MAX_INDEX: int
MAX_SECTIONS: int
MAX_METADATA: int
CODEC_RAW: int
CODEC_ZLIB: int
CODEC_ZSTD: int
CODEC_LZ4: int
CODEC_BZ2: int
CODEC_LZMA: int
FILTER_AUTO: int  # Writer: choose each buffer's filter by sampling
FILTER_NONE: int
FILTER_SHUFFLE: int
FILTER_BITSHUFFLE: int
FILTER_DELTA: int
REQ_FILTERS: int  # required feature flag of files that may hold filtered buffers

class FirkinError(Exception): ...
class FormatError(FirkinError, ValueError): ...
class ChecksumError(FormatError): ...
class UntrustedTypesError(FirkinError):
    names: list[str]
    unsafe_ops: list[str]

def crc32c(data: bytes, value: int = 0, /) -> int: ...
def build_info() -> dict[str, Any]: ...
def poly1305(key: bytes, data: bytes, portable: bool = False) -> bytes: ...
def native_codecs() -> dict[str, Any]: ...
class Header(TypedDict):
    major: int
    minor: int
    header_length: int
    required: int
    optional: int
    total: int  # 0: the writer could not seek
    index_offset: int
    magic_ok: bool
    crc_ok: bool

def parse_header(data: bytes | bytearray | memoryview, name: object = None, check: bool = True) -> Header: ...
def header_fixed(required: int, major: int = ..., minor: int = ..., /) -> bytes: ...
def frame_length(prefix: bytes | bytearray | memoryview, /) -> int: ...
def required_flags(codec: int, filters: int, streamed: bool = False, /) -> int: ...
def filter_bytes(filter: int, elem: int, data: bytes, undo: bool = False, /) -> bytes: ...
def set_byvalue_types(types: tuple[type, ...], /) -> None: ...
def scan_call_policy(never_called: frozenset[tuple[str, str]],
                     never_with_args: frozenset[tuple[str, str]], /) -> None: ...
def set_py_codec(codecs: tuple[Callable[..., bytes], Callable[..., bytes]], /) -> None: ...
def scan_pickle(data: bytes, /) -> dict[str, Any]: ...
def scan_joblib(data: bytes, /) -> dict[str, Any]: ...
def scan_records(data: bytes, joblib: bool, /) -> dict[str, Any]: ...
def scan_joblib_file(fd: int, offset: int, buf: Any, hole_min: int, records: bool,
                     step: int = ..., huge: bool = ..., /) -> dict[str, Any]: ...
def dtype_problem(dtype: Any, /) -> Optional[str]: ...

class DtypeGuard:
    def __init__(self, fn: Callable[..., Any], slow: Callable[..., Any], at: int,
                 native: bool = False, structured: bool = False,
                 record: Optional[Callable[[Any], Any]] = None) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
class TreeGuard:
    cls: Optional[type]
    setstate: Any
    def __init__(self, load: Callable[[], type], slow_factory: Callable[..., Any],
                 slow_setstate: Callable[[Any, Any], None],
                 slow_estimator: Callable[[str, Any], None],
                 slow_forest: Callable[[str, Any], None], local: Any) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def check_decision_tree(self, name: str, est: Any, /) -> None: ...
    def check_forest(self, name: str, est: Any, /) -> None: ...
class MappedArrays:
    def __init__(self, mm: Any) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
def checked_subclass(base: type, name: str, /) -> type: ...
def exchange(dir_fd: int, src: str | bytes, dst: str | bytes, /) -> bool: ...
def array_setstate(base: type, slow: Callable[[Any, Any], None], /) -> Any: ...
def retype(obj: Any, cls: type, /) -> None: ...
def retype_all(items: list[Any], from_: type, to: type, /) -> None: ...
def tree_links(left: Any, right: Any, feature: Any, n_features: int, /) -> int | tuple[int, int]: ...
def walk(root: Any, name: str, by_class: dict[type, Callable[[str, Any], object]],
         leaves: frozenset[type], skip: tuple[type, ...], expand: Callable[[Any], list], /) -> None: ...

class Writer:
    buffer_count: int
    oob_bytes: int
    worker_chunks: int
    by_value: int
    arrays: list[Optional[tuple[str, tuple[int, ...]]]]
    def __init__(
        self,
        target: Any,
        threads: int = 0,
        chunk_size: int = ...,
        threshold: int = ...,
        codec: int = 0,
        level: int = 0,
        progress: Optional[Callable[[int, int], None]] = None,
        name: Optional[str] = None,  # the file name a write error (OSError) carries
        # reduces what pickle cannot save by reference (firkin._byvalue.Session)
        byvalue: Optional[Callable[[Any], Any]] = None,
        hash_key: Optional[bytes] = None,  # 32-byte Poly1305 key: hash stream chunks (raw), buffer chunks (stored)
        streamed: bool = False,  # the streamed layout, for sinks that cannot seek
        filters: int = 0,  # FILTER_*: for every numeric buffer, or FILTER_AUTO to sample
    ) -> None: ...
    chunk_hashes: Optional[bytes]  # with hash_key: 32-byte records (buffer or HASH_STREAM, chunk, raw length, hash)
    # extra: pickled after obj's STOP as a second pickle (its buffers after obj's); the
    # modules returned are obj's
    def dump(self, obj: Any, protocol: int, extra: Any = None, /) -> list[str]: ...
    def finish(self, metadata: bytes, fsync: bool = True, signature: bytes = b"", /) -> int: ...
    def write(self, data: bytes, /) -> int: ...

class Buffer:
    def __len__(self) -> int: ...

class Reader:
    name: str
    total_length: int
    format_version: tuple[int, int]
    flags: int
    required_flags: int
    buffer_count: int  # buffer sections; the packed section's buffers are not counted
    def __init__(
        self,
        source: Any,
        name: Optional[str] = None,
        base: int = 0,
        deframed: bool = False,  # a streamed-layout container whose frames were removed
    ) -> None: ...
    def pickle_stream(self) -> bytes: ...
    def metadata(self) -> Optional[bytes]: ...
    def signature(self) -> Optional[bytes]: ...
    def header_bytes(self) -> bytes: ...
    def read_buffers(
        self,
        verify: bool = True,
        threads: int = 0,
        which: Optional[Sequence[int]] = None,
        progress: Optional[Callable[[int], None]] = None,
        hash_key: Optional[bytes] = None,
        hash_stored: bool = False,  # hash buffer chunks as stored (signature version 4), not raw
    ) -> Any: ...  # list[Optional[Buffer | bytearray]] in NEXT_BUFFER order; with hash_key: (that list, hash records)
    def buffer_spans(self) -> list[tuple[int, int, bool]]: ...  # NEXT_BUFFER order
    def packed_buffers(self) -> list[int]: ...  # the NEXT_BUFFER numbers of the packed buffers
    def verify_mapped(self, mapping: Any, verify: bool = True,
                      hash_key: Optional[bytes] = None, hash_stored: bool = False,
                      threads: int = 0) -> Optional[bytes]: ...  # mapping None: read from the file
    def set_flag(self, flag: int, /) -> None: ...
    def sections(self) -> list[dict[str, Any]]: ...
