"""Pickle streams, written opcode by opcode, of numpy object arrays nested
n deep: arrays of objects free their items without CPython's recursion
guard, so a deep enough chain overflows the C stack when it is freed."""
import struct

from _pickles import _g


def _put(k):
    return b"r" + struct.pack("<I", k)


def _get(k):
    return b"j" + struct.pack("<I", k)


# memo 0: _reconstruct, 1: ndarray, 2: dtype('O')
_HEAD = (b"\x80\x02" + _g("numpy._core.multiarray", "_reconstruct") + _put(0) + b"0"
         + _g("numpy", "ndarray") + _put(1) + b"0"
         + _g("numpy", "dtype") + b"U\x02O8\x89\x88\x87R"
         + b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb" + _put(2) + b"0")


def _array_of(item_ops):
    """a 1-element object array holding what item_ops push"""
    return (_get(0) + _get(1) + b"K\x00\x85C\x01b\x87R"
            + b"(K\x01K\x01\x85" + _get(2) + b"\x89]" + item_ops + b"atb")


def nested_arrays(n, inner_first=True, tail=b""):
    """array(array(...array(None)...)), n arrays deep. inner_first: each
    array is built, memoized and popped before the next (the stack stays
    shallow); else each is built inside the state of the one around it.
    tail: opcodes run after the chain is built (its value is what loads)."""
    if inner_first:
        body = bytearray(_HEAD + _array_of(b"N") + _put(3) + b"0")
        for k in range(1, n):
            body += _array_of(_get(2 + k)) + _put(3 + k) + b"0"
        body += _get(2 + n)
    else:
        body = bytearray(_HEAD)
        pre = _get(0) + _get(1) + b"K\x00\x85C\x01b\x87R" + b"(K\x01K\x01\x85" + _get(2) + b"\x89]"
        body += pre * n + b"N" + b"atb" * n
    return bytes(body) + tail + b"."
