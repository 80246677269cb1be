"""Loading files that are not firkin containers: joblib files and plain pickles.

Nothing here imports joblib. The format facts this module relies on:

* joblib >= 0.10 writes ONE file: a pickle stream in which every ndarray
  (exact types ndarray, matrix, memmap) is replaced by a
  ``joblib.numpy_pickle.NumpyArrayWrapper`` object, pickled as
  ``NEWOBJ`` + ``BUILD`` with a state dict {subclass, shape, order, dtype,
  allow_mmap[, numpy_array_alignment_bytes]}. Right after the wrapper's BUILD
  opcode the array follows, outside the pickle opcodes: for object arrays a
  nested, self-contained pickle of the array; otherwise, when the state has
  ``numpy_array_alignment_bytes`` (joblib >= 1.2), one byte L and L padding
  bytes, then the raw bytes of the array in `order`. With pickle protocol >= 4
  joblib ends the current frame right after the wrapper, so the array bytes
  never sit inside a frame.
* A compressed joblib file is that same byte stream through one compressor,
  recognised by its first bytes: zlib (78), gzip (1f 8b), bz2 ("BZ"),
  xz (fd 37 7a 58 5a), lzma-alone (5d 00), lz4 frame (04 22 4d 18).
* joblib < 0.10 wrote a main pickle plus companion files in the same folder:
  ``NDArrayWrapper`` {filename, subclass[, allow_mmap]} points at a ``.npy``
  file; with compression the main file is a "ZF" file (``b"ZF"``, the
  decompressed length in hex padded to 19 characters, sometimes one more
  space, then a zlib stream) and ``ZNDArrayWrapper`` {filename, init_args,
  state} points at a ZF file holding the raw array bytes.

How loading works: CPython's C unpickler reads the stream through an object
with read/readline (and readinto) but no ``peek``: with peek it would
prefetch, without it it asks for exactly the bytes each opcode needs (whole
frames for protocol >= 4), so when a wrapper's BUILD calls ``__setstate__``
the stream sits on the first byte of the array data. For an uncompressed
file that object is a private copy-on-write mmap of the file itself (C read
calls); for compressed data, a `_Stream` over a decompressor.
``__setstate__`` reads the array (or, with mmap_mode, notes its offset and
slices ONE np.memmap of the whole file), then makes the unpickler's next
read return three opcodes of firkin's own: POP (the wrapper), BININT token,
BINPERSID; ``persistent_load(token)`` pushes the array in the wrapper's
place and moves the stream past the array data.

The package, one module per seam: `facts` (the format facts above and the
rules built on them), `sources` (bytes from a descriptor, a buffer or a file
object, and the decompressors over them), `stream` (what the unpickler
reads), `policy` (the trust policy's static judgement before loading),
`unpickler` (the joblib-aware unpickler classes), `loader` (puts each array
in its wrapper's place), `api` (load_foreign, load_fileobj, loads_foreign), `inspect`
(what `firkin info` shows of these files, from the C scanner's walk).
"""
from __future__ import annotations

from .api import load_fileobj, load_foreign, loads_foreign
from .facts import LZ4_MISSING, detect
from .inspect import inspect_file
from .policy import judged_globals, scan, scan_fd

__all__ = ["LZ4_MISSING", "detect", "inspect_file", "judged_globals",
           "load_fileobj", "load_foreign", "loads_foreign", "scan", "scan_fd"]
