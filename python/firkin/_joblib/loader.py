"""The loader: drives an unpickler over a stream and puts each joblib array in its wrapper's place."""
from __future__ import annotations

import io
import operator
import os
import pickle

import numpy as np

from .. import _amplify, _core, _guards, _load, _warn
from .._byteorder import mismatch as _byte_order_mismatch
from .._core import FormatError
from .facts import (
    _ALIGNMENT,
    _BUILD,
    _INJECT,
    _MAX_ARRAY_BYTES,
    _MEMMAP_NAMES,
    _SMALL_COPY,
    _TOKEN,
    _WRAPPERS,
    _as_subclass,
    _describe_head,
    _is_joblib_module,
    _SavedMemmap,
)
from .sources import _read_zfile
from .stream import _MapReader, _Stream
from .unpickler import _dry_classes, _Inert, _Placeholder, _Restart, _unpickler_classes


class _Loader:
    def __init__(self, name, make_reader, *, kind, mmap_mode=None, mmap_file=None,
                 swap=True, dirname=None, trusted=True, spans=None, span_base=0, budget=None,
                 dry=False):
        self.name = name
        self._trusted = trusted
        self._budget = budget  # the amplification bound, None under trusted=True
        # (build_end, data_start, data_end, nested) of each joblib array as the
        # safety scan stepped over it (offsets from the reader's start), or None
        self._holes = spans
        self._span_base = span_base
        self._inline = 0
        #: a delimiting run: reads exactly the stream's bytes, builds nothing
        self._dry = dry
        self._classes = _dry_classes() if dry else _unpickler_classes(trusted, name)
        self._make_reader = make_reader
        self.kind = kind
        self._mm_mode = mmap_mode
        self._mm_file = mmap_file
        self._mm = None
        self._swap = swap
        self._dirname = dirname
        self._types = {}
        self._pending = None
        self._result = None
        self._c_mode = True
        self._framed = False
        self._old_layout = False  # a joblib < 0.10 wrapper was met
        self.reader = None
        self.arrays = 0

    # -- driving
    def run(self):
        with _amplify.active(self._budget), _load.gc_paused():
            try:
                return self._load(c_mode=True)
            except _Restart:
                return self._load(c_mode=False)

    def _load(self, c_mode):
        self._c_mode = c_mode
        self._pending = self._result = None
        self._types = {}
        self.arrays = 0
        self._inline = 0
        self._old_layout = False
        self.reader = reader = self._make_reader()
        head = reader.prefetch(2)
        self._framed = len(head) == 2 and head[0] == 0x80 and head[1] >= 4
        cls = self._classes[0] if c_mode else self._classes[2]
        try:
            obj = cls(reader.file, self).load()
            if isinstance(reader, _Stream):
                reader.finish()
        except (_Restart, _core.FirkinError):
            raise
        except (pickle.UnpicklingError, EOFError) as exc:
            raise self._format_error(head, exc) from exc
        except UnicodeDecodeError as exc:
            # joblib's sentence included: code matches on it
            raise FormatError(f"{self.name}: the pickle holds Python 2 byte strings that are not "
                              "ASCII; they cannot be read as str. You may be trying to read with "
                              "python 3 a joblib pickle generated with python 2. "
                              f"({exc})") from exc
        except ValueError as exc:
            if "pickle protocol" in str(exc):
                raise FormatError(f"{self.name}: {exc}") from exc
            raise
        finally:
            reader.close()
        if self._pending is not None:
            raise FormatError(f"{self.name}: the pickle stream ends right after an array")
        if self._holes is not None and self._inline != len(self._holes):
            raise self._span_error(self._inline)
        if not self._dry and (self._old_layout or self.kind == "zf"):
            # joblib's warning, word for word (its tests and users' filters match on it);
            # `python -m firkin convert` writes the file anew
            _warn.warn(f"The file '{self.name}' has been generated with a joblib version less "
                       "than 0.10. Please regenerate this pickle file.", DeprecationWarning)
        return obj

    def _format_error(self, head, exc):
        if self.arrays or self.kind != "raw" or (len(head) == 2 and head[0] == 0x80
                                                 and head[1] <= pickle.HIGHEST_PROTOCOL):
            what = "joblib" if (self.arrays or self.kind != "raw") else "pickle"
            return FormatError(f"{self.name}: the {what} stream is damaged or truncated: {exc}")
        return FormatError(f"{self.name}: not a firkin file, nor a joblib or pickle file (it "
                           f"starts with bytes {_describe_head(head)}), or it is damaged: {exc}")

    # -- unpickler hooks
    def resolve(self, module, name):
        if (module, name) in _MEMMAP_NAMES:
            return _SavedMemmap
        if name in _WRAPPERS and _is_joblib_module(module):
            t = self._types.get(name)
            if t is None:
                loader = self

                def __setstate__(self, state, _kind=name):
                    loader.build(_kind, state)

                if (name == "NumpyArrayWrapper" and self._c_mode and self._mm_mode is None
                        and isinstance(self.reader, _MapReader)):
                    __setstate__ = self._fast_setstate()
                t = type(name, (_Placeholder,), {"__slots__": (), "__setstate__": __setstate__,
                                                  "__module__": __name__})
                self._types[name] = t
            return t
        return None

    def _fast_setstate(self):
        """NumpyArrayWrapper.__setstate__ for the common case, in one Python call.

        A small native-order array read into memory from an uncompressed file;
        anything else (and every error) goes through build().
        """
        loader, reader = self, self.reader
        mm, size, start = reader.mm, reader.size, reader._start
        src = reader.mv
        empty, dtype_t, ndarray, memmap = np.empty, np.dtype, np.ndarray, np.memmap
        plain = _amplify.GUARDS.get(np.ndarray)  # what the policy hands out for numpy.ndarray
        slow = self.build
        small = _SMALL_COPY
        holes = self._holes

        def __setstate__(self, state):
            try:
                dtype, shape, order = state["dtype"], state["shape"], state["order"]
                if (not isinstance(dtype, dtype_t) or dtype.hasobject or not dtype.isnative
                        or dtype.fields is not None or dtype.subdtype is not None
                        or type(shape) is not tuple or (order != "C" and order != "F")):
                    return slow("NumpyArrayWrapper", state)
                nbytes = dtype.itemsize
                for n in shape:
                    if type(n) is not int or n < 0:
                        return slow("NumpyArrayWrapper", state)
                    nbytes *= n
                p = mm.tell()
                if p == 0 or mm[p - 1] != _BUILD or reader._scratch is None and p - start < 7:
                    return slow("NumpyArrayWrapper", state)
                build_end = p
                if state.get("numpy_array_alignment_bytes") is not None:
                    if p >= size:
                        return slow("NumpyArrayWrapper", state)
                    p += 1 + mm[p]
                end = p + nbytes
                if end > size or nbytes > small or not dtype.itemsize:
                    return slow("NumpyArrayWrapper", state)
            except (TypeError, KeyError):
                return slow("NumpyArrayWrapper", state)
            if holes is not None:
                loader._check_span(build_end, end)
            arr = empty(shape, dtype, order)
            if nbytes:
                try:
                    dst = memoryview(arr if order == "C" else arr.T).cast("B")
                except (TypeError, ValueError):  # dtypes without a buffer format
                    dst = memoryview(arr.reshape(-1, order=order).view(np.uint8))
                dst[:] = src[p:end]  # small: in the mapping, or in a frozen copy (never a hole)
            sub = state.get("subclass")
            if sub is not plain and sub is not ndarray and sub is not memmap and sub is not None:
                arr = _as_subclass(arr, sub)
            loader.arrays += 1
            loader._pending = (_TOKEN, arr)
            if reader._scratch is None:
                mm[start:start + 7] = _INJECT
                reader._scratch = _INJECT
            reader._resume = end
            mm.seek(start)

        return __setstate__

    def _span_error(self, k):
        return FormatError(f"{self.name}: joblib array #{k} is not where the safety scan found "
                           "it: the file is damaged or crafted to hide opcodes from the scan")

    def _check_span(self, build_end, data_end):
        """The array whose BUILD ended at build_end and whose data ended at
        data_end (reader offsets) must be the next one the scan stepped over:
        then the unpickler executes exactly the bytes the scan judged."""
        k = self._inline
        self._inline = k + 1
        base = self._span_base
        holes = self._holes
        if (k >= len(holes) or holes[k][0] != build_end - base
                or holes[k][2] != data_end - base):
            raise self._span_error(k)

    def persistent_load(self, pid):
        pending = self._pending
        if pending is not None and type(pid) is int and pid == pending[0]:
            self._pending = None
            self.reader.resume()
            return pending[1]
        raise pickle.UnpicklingError("the file uses persistent IDs, which firkin cannot resolve")

    def take_result(self):
        arr, self._result = self._result, None
        return arr

    def build(self, kind, state):
        if not isinstance(state, dict):
            raise FormatError(f"{self.name}: joblib {kind} with a state of type "
                              f"{type(state).__name__}, expected a dict")
        reader = self.reader
        p0 = reader.tell()
        if self._c_mode and reader.last_byte() != _BUILD:
            if kind != "NumpyArrayWrapper":
                raise _Restart
            raise FormatError(f"{self.name}: array #{self.arrays} is not followed by its data "
                              "where joblib puts it; the file is damaged")
        if kind == "NumpyArrayWrapper":
            arr = self._read_inline(state)
            if self._holes is not None:
                self._check_span(p0, reader.tell())
        else:
            if self._c_mode and self._framed:
                raise _Restart  # the BUILD may sit inside a frame: no injection possible
            arr = self._read_companion(kind, state)
        self.arrays += 1
        if self._c_mode:
            self._pending = (_TOKEN, arr)
            reader.inject(p0, _INJECT)
        else:
            self._result = arr

    # -- arrays
    def _check_meta(self, state, what):
        dtype = state.get("dtype")
        shape = state.get("shape")
        order = state.get("order", "C")
        if not isinstance(dtype, np.dtype):
            raise FormatError(f"{self.name}: {what}: dtype is {type(dtype).__name__}, "
                              "not a numpy dtype")
        why = _guards.dtype_problem(dtype)
        if why:
            raise FormatError(f"{self.name}: {what}: {why} (a damaged or crafted file)")
        nbytes = dtype.itemsize
        try:
            for s in shape:
                if type(s) is not int:
                    s = operator.index(s)
                if s < 0:
                    raise ValueError(s)
                nbytes *= s
            if type(shape) is not tuple:
                shape = tuple(operator.index(s) for s in shape)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{self.name}: {what}: bad shape {shape!r}") from exc
        if order != "C" and order != "F":
            raise FormatError(f"{self.name}: {what}: bad order {order!r}")
        if nbytes > _MAX_ARRAY_BYTES:
            raise FormatError(f"{self.name}: {what}: implausible size {nbytes} bytes")
        return dtype, shape, order, nbytes

    def _read_inline(self, state):
        what = f"array #{self.arrays}"
        dtype, shape, order, nbytes = self._check_meta(state, what)
        reader = self.reader
        subclass = state.get("subclass")
        if self._dry:  # step over the array's bytes, reading them (the stream records them)
            if dtype.hasobject:
                self._classes[1](reader.file).load()
                return _Inert()
            if state.get("numpy_array_alignment_bytes") is not None:
                reader.skip(reader.read_exact(1, f"the padding of {what}")[0],
                            f"the padding of {what}")
            reader.skip(nbytes, f"the data of {what}")
            return _Inert()
        if dtype.hasobject:
            arr = self._classes[1](reader.file).load()
            if not isinstance(arr, np.ndarray):
                raise FormatError(f"{self.name}: {what}: the object array's pickle holds a "
                                  f"{type(arr).__name__}")
            return _as_subclass(arr, subclass)
        if state.get("numpy_array_alignment_bytes") is not None:
            pad = reader.read_exact(1, f"the padding of {what}")[0]
            reader.skip(pad, f"the padding of {what}")
        if self._mm_mode is not None and state.get("allow_mmap", False) and reader.mappable:
            offset = reader.tell()
            reader.skip(nbytes, f"the data of {what}")
            arr = self._mapped(offset, dtype, shape, order, nbytes)
            if state.get("numpy_array_alignment_bytes") is None and offset % _ALIGNMENT:
                # one warning per array, as joblib gives (joblib >= 1.2 pads every array)
                _warn.warn(f"The memmapped {dtype} array #{self.arrays} of shape {shape} at "
                           f"offset {offset} of the file {self.name} is not aligned to "
                           f"{_ALIGNMENT} bytes (written by joblib < 1.2): BLAS, PyTorch and "
                           "other libraries may reject it or end in a segmentation fault. "
                           "`python -m firkin convert` writes the file anew.")
        else:
            arr = self._read_new(dtype, shape, order, nbytes, what)
        return _as_subclass(arr, subclass)

    def _read_new(self, dtype, shape, order, nbytes, what):
        swap = self._swap and _byte_order_mismatch(dtype)
        arr = np.empty(shape, dtype=dtype.newbyteorder("=") if swap else dtype, order=order)
        if nbytes:
            flat = arr.reshape(-1, order=order).view(np.uint8)
            self.reader.readinto_exact(memoryview(flat), f"the data of {what}")
            if swap:
                arr.byteswap(inplace=True)
        return arr

    def _mapped(self, offset, dtype, shape, order, nbytes):
        if self._mm is None:
            size = os.fstat(self._mm_file.fileno()).st_size
            self._mm = np.memmap(self._mm_file, dtype=np.uint8, mode=self._mm_mode,
                                 shape=(size,))
        if dtype.itemsize == 0:
            return np.empty(shape, dtype=dtype, order=order)
        return self._mm[offset:offset + nbytes].view(dtype).reshape(shape, order=order)

    def _companion_path(self, filename):
        if (not isinstance(filename, str) or not filename or filename in (".", "..")
                or os.path.basename(filename) != filename or "\0" in filename
                or (os.altsep and os.altsep in filename)):
            raise FormatError(f"{self.name}: bad companion file name {filename!r} in a "
                              "joblib < 0.10 file")
        if self._dirname is None:
            raise FormatError(f"{self.name}: this joblib < 0.10 file keeps its arrays in "
                              f"companion files ({filename}); load it by path")
        path = os.path.join(self._dirname, filename)
        # a symlink may not lead out of the main file's folder
        folder = os.path.realpath(self._dirname)
        if os.path.commonpath([os.path.realpath(path), folder]) != folder:
            raise FormatError(f"{self.name}: companion file {filename!r} is a link to "
                              f"{os.path.realpath(path)}, outside the folder of the file")
        return path

    def _load_npy(self, path, mode):
        """A joblib < 0.10 companion file. Arrays load with allow_pickle=False;
        what numpy would unpickle (an object .npy, or a file that is not .npy
        at all) goes through the trust policy like the main file."""
        if self._trusted is True:
            return np.load(path, mmap_mode=mode, allow_pickle=True)
        with open(path, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
            pickled = not magic.startswith(np.lib.format.MAGIC_PREFIX) and magic[:2] != b"PK"
            if not pickled:
                f.seek(0)
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
                pickled = dtype.hasobject  # numpy writes an object array as a pickle of it
            if not pickled:
                return np.load(path, mmap_mode=mode, allow_pickle=False)
            if not magic.startswith(np.lib.format.MAGIC_PREFIX):
                f.seek(0)  # the whole file is a pickle
            data = f.read()
        from .. import _trust

        _trust.check_stream(data, self._trusted, name=path)
        unpickler = _trust.make_unpickler(pickle.Unpickler, self._trusted)(io.BytesIO(data))
        unpickler.fk_name = path
        try:
            arr = unpickler.load()
        except (pickle.UnpicklingError, EOFError) as exc:
            raise FormatError(f"{path}: the pickled companion array is damaged: {exc}") from exc
        if not isinstance(arr, np.ndarray):
            raise FormatError(f"{path}: holds a {type(arr).__name__}, not an array")
        npy = magic.startswith(np.lib.format.MAGIC_PREFIX)
        if npy and (arr.dtype, arr.shape) != (dtype, shape):
            raise FormatError(f"{path}: holds a {arr.dtype} array of shape {arr.shape}, not the "
                              f"{dtype} array of shape {shape} its header describes")
        return arr

    def _read_companion(self, kind, state):
        self._old_layout = True
        path = self._companion_path(state.get("filename"))
        if kind == "NDArrayWrapper":
            mode = self._mm_mode if state.get("allow_mmap", True) else None
            try:
                arr = self._load_npy(path, mode)
            except FileNotFoundError as exc:
                raise FormatError(f"{self.name}: companion file {path} is missing") from exc
            except ValueError as exc:
                if isinstance(exc, FormatError):
                    raise
                raise FormatError(f"{path}: not a valid .npy file: {exc}") from exc
            if not isinstance(arr, np.ndarray):
                raise FormatError(f"{path}: holds a {type(arr).__name__}, not an array")
            if mode is None and self._swap and _byte_order_mismatch(arr.dtype):
                arr = arr.byteswap().view(arr.dtype.newbyteorder("="))
            return _as_subclass(arr, state.get("subclass"))
        # ZNDArrayWrapper: init_args (subclass, (0,), 'b'), state (version, shape, dtype, fortran)
        init_args, astate = state.get("init_args"), state.get("state")
        try:
            _, shape, dtype, fortran = astate[:4]
            subclass = init_args[0]
        except (TypeError, ValueError, IndexError) as exc:
            raise FormatError(f"{self.name}: bad ZNDArrayWrapper state") from exc
        meta = {"dtype": dtype, "shape": shape, "order": "F" if fortran else "C"}
        dtype, shape, order, nbytes = self._check_meta(meta, f"companion {path}")
        if dtype.hasobject:
            raise FormatError(f"{path}: object arrays cannot be stored in ZF files")
        try:
            data = _read_zfile(path, nbytes, self._budget)
        except FileNotFoundError as exc:
            raise FormatError(f"{self.name}: companion file {path} is missing") from exc
        if len(data) != nbytes:
            raise FormatError(f"{path}: holds {len(data)} bytes, the array needs {nbytes}")
        swap = self._swap and _byte_order_mismatch(dtype)
        arr = np.empty(shape, dtype=dtype.newbyteorder("=") if swap else dtype, order=order)
        if nbytes:
            arr.reshape(-1, order=order).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            if swap:
                arr.byteswap(inplace=True)
        return _as_subclass(arr, subclass)
