"""Pickle streams, written opcode by opcode, that give numpy a structured
dtype whose flags hide the object field it holds, through every way the
allowlist lets a stream construct a numpy dtype and set its state; and
streams that put such a dtype to use (an array or scalar over the file's
bytes). Shared by the scanner's and the loader's tests."""

from _pickles import _binunicode as _u, _g

# numpy.dtype's BUILD state: (version, byte order, subarray, names, fields,
# itemsize, alignment, flags); 'a' is an object field at offset 0
V16 = "V16"


def _long(n):
    return b"L" + str(n).encode() + b"L\n"


def fields_obj():
    """{'a': (dtype('O'), 0), 'b': (dtype('f8'), 8)}"""
    return (b"}(" + _u("a") + _g("numpy", "dtype") + _u("O8") + b"\x89\x88\x87R" + b"K\x00\x86"
            + _u("b") + _g("numpy", "dtype") + _u("f8") + b"\x89\x88\x87R" + b"K\x08\x86" + b"u")


def state(version=b"K\x03", flags=b"K\x00", order=None):
    """the 8-tuple state with the version and flags written by the given opcodes"""
    order = _u("|") if order is None else order
    return (b"(" + version + order + b"N" + b"(" + _u("a") + _u("b") + b"t" + fields_obj()
            + b"K\x10K\x08" + flags + b"t")


# ---- ways to make a dtype('V16') that the state then goes on
MAKERS = {
    "REDUCE numpy.dtype": _g("numpy", "dtype") + _u(V16) + b"\x89\x88\x87R",
    "NEWOBJ numpy.dtype": _g("numpy", "dtype") + _u(V16) + b"\x85\x81",
    "NEWOBJ_EX numpy.dtype": _g("numpy", "dtype") + _u(V16) + b"\x85}\x92",
    "copyreg.__newobj__": _g("copyreg", "__newobj__") + _g("numpy", "dtype") + _u(V16) + b"\x86R",
    "copyreg.__newobj_ex__": (_g("copyreg", "__newobj_ex__") + _g("numpy", "dtype") + _u(V16)
                              + b"\x85}\x87R"),
    "copyreg._reconstructor": (_g("copyreg", "_reconstructor") + _g("numpy", "dtype")
                               + _g("numpy", "dtype") + _u(V16) + b"\x87R"),
    "pandas _new_Index": (_g("pandas.core.indexes.base", "_new_Index") + _g("numpy", "dtype")
                          + b"}" + _u("dtype") + _u(V16) + b"s\x86R"),
}

# ---- ways to write the state
STATES = {
    "BININT version": state(),
    "LONG version": state(version=_long(3)),
    "LONG1 version": state(version=b"\x8a\x01\x03"),
    "INT version, LONG flags": state(version=b"I3\n", flags=_long(0)),
    "bytes byte order": state(order=b"C\x01|"),
    # numpy's hasobject bit alone: arrays of it take object pointers from the bytes
    "refcount flag only": state(flags=b"K\x01"),
}


def tuple_of_list_state():
    """the state as builtins.tuple([...]): a tuple the scanner does not see into"""
    s = state()
    return _g("builtins", "tuple") + b"(]" + b"(" + s[1:-1] + b"e" + b"tR"


def dtype_stream(maker: str, how: str, protocol: int = 2) -> bytes:
    """a pickle whose value is the lying dtype"""
    st = tuple_of_list_state() if how == "tuple(list) state" else STATES[how]
    return b"\x80" + bytes([protocol]) + MAKERS[maker] + st + b"b."


def lying_dtype(maker="REDUCE numpy.dtype", how="BININT version") -> bytes:
    """the dtype's opcodes (no PROTO, no STOP)"""
    return MAKERS[maker] + STATES[how] + b"b"


# ---- ways to put bytes under the dtype
def use_stream(use: str, dtype_ops: bytes | None = None) -> bytes:
    d = lying_dtype() if dtype_ops is None else dtype_ops
    raw = b"C\x20" + b"A" * 32  # two items of 16 bytes, 'AAAAAAAA' where a pointer goes
    if use == "_reconstruct + BUILD":
        body = (_g("numpy._core.multiarray", "_reconstruct") + _g("numpy", "ndarray") + b"K\x00\x85"
                + b"C\x01b" + b"\x87R" + b"(K\x01K\x02\x85" + d + b"\x89" + raw + b"tb")
    elif use == "numpy.core _reconstruct + BUILD":
        body = (_g("numpy.core.multiarray", "_reconstruct") + _g("numpy", "ndarray") + b"K\x00\x85"
                + b"C\x01b" + b"\x87R" + b"(K\x01K\x02\x85" + d + b"\x89" + raw + b"tb")
    elif use == "_frombuffer":
        body = (_g("numpy._core.numeric", "_frombuffer") + b"(" + raw + d + b"K\x02\x85" + _u("C")
                + b"tR")
    elif use == "scalar":
        body = _g("numpy._core.multiarray", "scalar") + d + b"C\x10" + b"A" * 16 + b"\x86R"
    elif use == "ndarray(shape, dtype, buffer)":
        body = _g("numpy", "ndarray") + b"(K\x02\x85" + d + raw + b"tR"
    elif use == "_mareconstruct + BUILD":
        body = (_g("numpy.ma.core", "_mareconstruct") + b"(" + _g("numpy.ma.core", "MaskedArray")
                + _g("numpy", "ndarray") + b"K\x00\x85" + _u("b") + b"tR"
                + b"(K\x01K\x02\x85" + d + b"\x89" + raw + b"C\x04\x00\x00\x00\x00" + b"Ntb")
    else:
        raise KeyError(use)
    return b"\x80\x02" + body + b"."


USES = ["_reconstruct + BUILD", "numpy.core _reconstruct + BUILD", "_frombuffer", "scalar",
        "ndarray(shape, dtype, buffer)", "_mareconstruct + BUILD"]


# ---- a plain object dtype (typestr 'O8') whose state of 8 or 9 items gives
# it flags without the object bits: numpy keeps it an object dtype and takes
# the flags, so arrays of it read object pointers from the file's bytes
def plain_state(flags=b"K\x00", nine=False):
    return (b"(K\x03" + _u("|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + flags
            + (b"N" if nine else b"") + b"t")


PLAIN_STATES = {
    "8 items, flags 0": plain_state(),
    "9 items, flags 0": plain_state(nine=True),
    "LONG flags 0": plain_state(_long(0)),
    "refcount flag only": plain_state(b"K\x01"),
}


def lying_object_dtype(maker="REDUCE numpy.dtype", how="8 items, flags 0") -> bytes:
    """the opcodes of dtype('O8') made by maker, given a state whose flags deny its objects"""
    return MAKERS[maker].replace(_u(V16), _u("O8")) + PLAIN_STATES[how] + b"b"


# ---- dtypes whose items a list fills one by one, made huge by their state
def big_items(kind: str, itemsize: int, n: int = 3) -> bytes:
    """an array of n items filled from a list of n Nones, whose dtype's state
    makes each item itemsize bytes: "claimed" is S1 whose flags claim objects
    it does not hold, "record" a record of one object field (honest flags),
    "masked record" the same as a numpy.ma masked array's state"""
    size = b"J" + itemsize.to_bytes(4, "little", signed=True)
    if kind == "claimed":
        d = (_g("numpy", "dtype") + _u("S1") + b"\x89\x88\x87R"
             + b"(K\x03" + _u("|") + b"NNN" + size + b"K\x01K?tb")
    else:
        fields = b"}" + _u("a") + _g("numpy", "dtype") + _u("O8") + b"\x89\x88\x87R" + b"K\x00\x86s"
        d = (_g("numpy", "dtype") + _u("V8") + b"\x89\x88\x87R"
             + b"(K\x03" + _u("|") + b"N(" + _u("a") + b"t" + fields + size + b"K\x01K?tb")
    items = b"](" + b"N" * n + b"e"
    if kind == "masked record":  # numpy.ma's state: (1, shape, dtype, fortran, data, mask, fill)
        body = (_g("numpy.ma.core", "_mareconstruct") + b"(" + _g("numpy.ma.core", "MaskedArray")
                + _g("numpy", "ndarray") + b"K\x00\x85" + _u("b") + b"tR" + b"(K\x01K" + bytes([n])
                + b"\x85" + d + b"\x89" + items + b"C" + bytes([n]) + b"\x00" * n + b"Ntb")
    else:
        body = (_g("numpy.core.multiarray", "_reconstruct") + _g("numpy", "ndarray") + b"K\x00\x85C\x01b"
                + b"\x87R" + b"(K\x01K" + bytes([n]) + b"\x85" + d + b"\x89" + items + b"tb")
    return b"\x80\x02" + body + b"."
