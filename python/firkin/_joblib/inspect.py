"""A static walk over pickle opcodes for `firkin info` (nothing is imported or built)."""
from __future__ import annotations

import os
import pickletools
import struct

import numpy as np

from .. import _amplify, _core
from .facts import _WRAPPERS, _is_joblib_module, detect
from .sources import _FdSource, _Inflate, _make_source
from .stream import _Stream

# A static walk over the pickle opcodes: nothing is imported and no object is
# built, except numpy dtypes from literal arguments. It lists the arrays a
# file holds (joblib wrappers, in-band numpy arrays, firkin's out-of-band
# buffers) and every global the pickle references.

class _Opaque:
    __slots__ = ()


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def is_(self, modules, names):
        return self.module in modules and self.name in names

    def __str__(self):
        return f"{self.module}.{self.name}"


class _Buf:
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


class _Wrapper:
    __slots__ = ("kind",)

    def __init__(self, kind):
        self.kind = kind


class _Recon:
    __slots__ = ("cls",)

    def __init__(self, cls):
        self.cls = cls


_DTYPE_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_COPYREG = ("copyreg", "copy_reg")
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
            "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
            "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"}


class _ScanError(Exception):
    pass


def _class_name(cls):
    if isinstance(cls, _Global):
        return str(cls)
    return None


class _Scanner:
    def __init__(self, stream, joblib_aware=True):
        self.stream = stream
        self.arrays = []
        self.globals = set()
        self.protocol = None
        self.wrappers = {}
        self.joblib_aware = joblib_aware
        self.aligned = 0
        self._buffers = 0

    def scan(self, nested=False):
        stack, marks, memo = [], [], {}

        def pop_mark():
            if not marks:
                raise _ScanError("MARK missing")
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        for op, arg, _ in pickletools.genops(self.stream):
            name = op.name
            if name in _INT_OPS:
                stack.append(arg)
            elif name == "PROTO":
                if not nested:
                    self.protocol = arg
            elif name in ("FRAME", "STOP"):
                pass
            elif name == "NONE":
                stack.append(None)
            elif name == "NEWTRUE":
                stack.append(True)
            elif name == "NEWFALSE":
                stack.append(False)
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "APPEND":
                v = stack.pop()
                if isinstance(stack[-1], list):
                    stack[-1].append(v)
            elif name == "APPENDS":
                items = pop_mark()
                if isinstance(stack[-1], list):
                    stack[-1].extend(items)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                stack.append(self._dict(items))
            elif name == "SETITEM":
                v = stack.pop()
                k = stack.pop()
                self._setitems(stack[-1], [k, v])
            elif name == "SETITEMS":
                items = pop_mark()
                self._setitems(stack[-1], items)
            elif name in ("EMPTY_SET", "FROZENSET"):
                if name == "FROZENSET":
                    pop_mark()
                stack.append(_Opaque())
            elif name == "ADDITEMS":
                pop_mark()
            elif name == "POP":
                if marks and marks[-1] == len(stack):
                    marks.pop()
                else:
                    stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(arg, _Opaque()))
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GLOBAL", "INST"):
                module, _, gname = arg.partition(" ")
                self.globals.add(f"{module}.{gname}")
                if name == "INST":
                    pop_mark()
                    stack.append(_Opaque())
                else:
                    stack.append(_Global(module, gname))
            elif name == "STACK_GLOBAL":
                gname = stack.pop()
                module = stack.pop()
                if isinstance(module, str) and isinstance(gname, str):
                    self.globals.add(f"{module}.{gname}")
                    stack.append(_Global(module, gname))
                else:
                    stack.append(_Opaque())
            elif name == "REDUCE":
                args = stack.pop()
                func = stack.pop()
                stack.append(self._call(func, args))
            elif name == "NEWOBJ":
                stack.pop()
                cls = stack.pop()
                stack.append(self._new(cls))
            elif name == "NEWOBJ_EX":
                stack.pop()
                stack.pop()
                cls = stack.pop()
                stack.append(self._new(cls))
            elif name == "OBJ":
                pop_mark()
                stack.append(_Opaque())
            elif name == "BUILD":
                st = stack.pop()
                stack[-1] = self._build(stack[-1], st)
            elif name == "PERSID":
                stack.append(_Opaque())
            elif name == "BINPERSID":
                stack.pop()
                stack.append(_Opaque())
            elif name in ("EXT1", "EXT2", "EXT4"):
                stack.append(_Opaque())
            elif name == "NEXT_BUFFER":
                stack.append(_Buf(self._buffers))
                self._buffers += 1
            elif name == "READONLY_BUFFER":
                pass
            else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
                raise _ScanError(f"unknown opcode {name}")

    @staticmethod
    def _dict(items):
        d = {}
        for i in range(0, len(items) - 1, 2):
            try:
                d[items[i]] = items[i + 1]
            except TypeError:
                pass
        return d

    @staticmethod
    def _setitems(target, items):
        if isinstance(target, dict):
            for i in range(0, len(items) - 1, 2):
                try:
                    target[items[i]] = items[i + 1]
                except TypeError:
                    pass

    def _is_wrapper(self, cls):
        return (self.joblib_aware and isinstance(cls, _Global) and cls.name in _WRAPPERS
                and _is_joblib_module(cls.module))

    def _new(self, cls):
        if self._is_wrapper(cls):
            return _Wrapper(cls.name)
        return _Opaque()

    def _call(self, func, args):
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            return _Opaque()
        if func.is_(_DTYPE_MODULES, ("dtype",)):
            if args and all(isinstance(a, (str, bool, int)) for a in args):
                try:
                    return np.dtype(*args)
                except (TypeError, ValueError):
                    return _Opaque()
            return _Opaque()
        if (func.is_(("_codecs", "codecs"), ("encode",)) and len(args) == 2
                and isinstance(args[0], str) and args[1] == "latin1"):
            return args[0].encode("latin1")  # how protocols 0-2 spell bytes
        if func.is_(_MULTIARRAY, ("_reconstruct",)) and args:
            return _Recon(args[0])
        if func.is_(_NUMERIC, ("_frombuffer",)) and len(args) == 4:
            buf, dtype, shape, order = args
            rec = {"kind": "in-band", "dtype": dtype, "shape": shape, "order": order}
            if isinstance(buf, _Buf):
                rec.update(kind="out-of-band", buffer=buf.index)
            self._record(rec)
            return _Opaque()
        if func.is_(_COPYREG, ("_reconstructor",)) and args and self._is_wrapper(args[0]):
            return _Wrapper(args[0].name)
        return _Opaque()

    def _record(self, rec):
        dtype = rec.get("dtype")
        shape = rec.get("shape")
        out = {"index": len(self.arrays), "kind": rec["kind"],
               "dtype": str(dtype) if isinstance(dtype, np.dtype) else None,
               "shape": list(shape) if isinstance(shape, tuple) else None}
        if isinstance(dtype, np.dtype) and dtype.names:
            out["fields"] = len(dtype.names)
        for key in ("order", "buffer", "offset", "nbytes", "mmap", "subclass", "file"):
            if key in rec:
                out[key] = rec[key]
        if (out.get("nbytes") is None and isinstance(dtype, np.dtype)
                and isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
            n = dtype.itemsize
            for s in shape:
                n *= s
            out["nbytes"] = n
        self.arrays.append(out)

    def _build(self, inst, state):
        if isinstance(inst, np.dtype):
            if isinstance(state, tuple):
                try:
                    inst.__setstate__(state)
                except (TypeError, ValueError):
                    pass
            return inst
        if isinstance(inst, _Recon):
            if isinstance(state, tuple) and len(state) >= 4:
                _, shape, dtype, fortran = state[:4]
                rec = {"kind": "in-band", "dtype": dtype, "shape": shape,
                       "order": "F" if fortran is True else "C"}
                sub = _class_name(inst.cls)
                if sub not in (None, "numpy.ndarray"):
                    rec["subclass"] = sub
                self._record(rec)
            return _Opaque()
        if isinstance(inst, _Wrapper):
            self.wrappers[inst.kind] = self.wrappers.get(inst.kind, 0) + 1
            if not isinstance(state, dict):
                raise _ScanError("a joblib wrapper without a state dict")
            if inst.kind == "NumpyArrayWrapper":
                self._wrapped(state)
            elif inst.kind == "NDArrayWrapper":
                self._record({"kind": "companion .npy", "file": state.get("filename"),
                              "subclass": _class_name(state.get("subclass"))})
            else:
                astate = state.get("state")
                rec = {"kind": "companion .npy.z", "file": state.get("filename")}
                if isinstance(astate, tuple) and len(astate) >= 4:
                    rec.update(shape=astate[1], dtype=astate[2],
                               order="F" if astate[3] is True else "C")
                self._record(rec)
            return _Opaque()
        return inst if isinstance(inst, (dict, list)) else _Opaque()

    def _wrapped(self, state):
        dtype, shape = state.get("dtype"), state.get("shape")
        order = state.get("order", "C")
        if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple):
            raise _ScanError("a joblib array whose dtype or shape cannot be read without "
                             "loading the file")
        stream = self.stream
        sub = _class_name(state.get("subclass"))
        rec = {"kind": "joblib", "dtype": dtype, "shape": shape, "order": order,
               "mmap": bool(state.get("allow_mmap", False)) and not dtype.hasobject}
        if sub not in (None, "numpy.ndarray"):
            rec["subclass"] = sub
        if dtype.hasobject:
            start = stream.tell()
            inner = _Scanner(stream, joblib_aware=False)
            inner.scan(nested=True)
            self.globals |= inner.globals
            rec.update(kind="joblib (object)", offset=start,
                       nbytes=stream.tell() - start, mmap=False)
        else:
            if state.get("numpy_array_alignment_bytes") is not None:
                self.aligned += 1
                pad = stream.read_exact(1, "array padding")[0]
                stream.skip(pad, "array padding")
            n = dtype.itemsize
            for s in shape:
                n *= int(s)
            rec.update(offset=stream.tell(), nbytes=n)
            stream.skip(n, "array data")
        self._record(rec)


def inspect_stream(stream, joblib_aware=True) -> dict:
    """Walk a pickle stream (a `_Stream`) without loading it."""
    sc = _Scanner(stream, joblib_aware)
    sc.scan()
    return {"protocol": sc.protocol, "arrays": sc.arrays, "globals": sorted(sc.globals),
            "wrappers": sc.wrappers}


def _npy_header(rec, dirname):
    """dtype and shape of a joblib < 0.10 companion .npy file, from its header alone."""
    name = rec["file"]
    if not isinstance(name, str) or os.path.basename(name) != name:
        return
    try:
        with open(os.path.join(dirname, name), "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = reader(f)
    except (OSError, ValueError):
        rec["missing"] = True
        return
    rec.update(dtype=str(dtype), shape=list(shape), order="F" if fortran else "C")
    n = dtype.itemsize
    for s in shape:
        n *= s
    rec["nbytes"] = n


def inspect_file(path: str) -> dict:
    """What a joblib or pickle file holds, read statically (nothing is unpickled).

    Returns {format, compression, protocol, layout, arrays, globals} and, when
    the walk fails, 'error' with the partial results.
    """
    with open(path, "rb") as f:
        fd = f.fileno()
        head = os.pread(fd, 8, 0)
        kind = detect(head)
        out = {"format": "pickle", "compression": None if kind == "raw" else
               ("zlib (joblib < 0.10 ZF)" if kind == "zf" else kind)}
        sc = None
        try:
            src = _make_source(kind, _FdSource(fd, 0, path), path)
            if isinstance(src, _Inflate):  # a bomb stops at the default bound
                src.budget = _amplify.Budget(None, path, "firkin.load")
            sc = _Scanner(_Stream(src))
            sc.scan()
        except (ImportError, _core.UntrustedTypesError) as exc:
            out["error"] = str(exc)
        except (ValueError, _ScanError, EOFError, IndexError, KeyError, struct.error) as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        if sc is not None:
            for rec in sc.arrays:
                if rec.get("file") and rec.get("dtype") is None:
                    _npy_header(rec, os.path.dirname(path))
            out.update(protocol=sc.protocol, arrays=sc.arrays, globals=sorted(sc.globals))
            w = sc.wrappers
            if w or kind != "raw":
                out["format"] = "joblib"
            if w.get("NDArrayWrapper") or w.get("ZNDArrayWrapper") or kind == "zf":
                out["layout"] = "joblib < 0.10 (pickle + companion files)"
            elif w.get("NumpyArrayWrapper"):
                out["layout"] = ("joblib >= 1.2, single file, aligned arrays" if sc.aligned
                                 else "joblib >= 0.10, single file")
            elif kind != "raw":
                out["layout"] = "compressed pickle"
            else:
                out["layout"] = "plain pickle"
    return out
