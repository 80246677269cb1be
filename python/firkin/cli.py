"""The ``firkin`` command line: ``python -m firkin convert|info``.

convert IN OUT [--compress SPEC]
    Load IN (a joblib file, a pickle or a firkin file), save it as the firkin
    file OUT, then load both again and compare them deeply. Exits 1 (and
    removes OUT) when they differ.
info FILE [--json]
    What a file is and which arrays it holds, read without unpickling it:
    nothing in the file is imported or run.
check FILE [--json] [--rtol R] [--atol A] [--trust NAME] [--trust-all]
    Load the model (under firkin's trust policy) and rerun the check sample
    its file stores (dump(..., check_data=)); exit 1 when an output differs
    or the file holds no sample.

IN, OUT and FILE may be fsspec URLs (s3://bucket/key, gs://..., memory://...);
--storage-options '{"key": ..., "secret": ...}' (JSON) passes credentials and
endpoints to fsspec, as storage_options= does in Python.

Exit status: 0 success, 1 failure, 2 usage error. Errors go to stderr.
"""
from __future__ import annotations

import argparse
import cmath
import json
import math
import os
import pickle
import sys

import numpy as np

from ._text import printable

__all__ = ["main", "diff", "parse_compress"]



class _UsageError(Exception):
    pass


# --------------------------------------------------------------------------- compress specs

def parse_compress(spec: str | None):
    """A --compress SPEC as firkin.dump's `compress`: '3', 'zstd', 'zlib:6', 'none'."""
    if spec is None:
        return 0
    text = spec.strip().lower()
    if text in ("", "0", "none", "no", "false", "off"):
        return 0
    if text.isdigit():
        return int(text)
    method, sep, level = text.partition(":")
    if not sep:
        return method
    if not level.isdigit():
        raise _UsageError(f"--compress {spec!r}: the level after ':' must be a number")
    return (method, int(level))


# --------------------------------------------------------------------------- deep compare

_EXACT = (type(None), bool, int, str, bytes, bytearray, range, slice, type(Ellipsis),
          type(NotImplemented))


def _float_same(a, b) -> bool:
    if isinstance(a, complex):
        return a == b or (cmath.isnan(a) and cmath.isnan(b))
    return a == b or (math.isnan(a) and math.isnan(b))


def _array_diff(a: np.ndarray, b: np.ndarray):
    if a.dtype != b.dtype:
        return f"dtype {a.dtype} != {b.dtype}"
    if a.shape != b.shape:
        return f"shape {a.shape} != {b.shape}"
    if a.dtype.itemsize == 0 or a.size == 0:
        return None
    # bit for bit: NaN equals NaN, NaT equals NaT, structured dtypes compare too
    x = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    y = np.ascontiguousarray(b).reshape(-1).view(np.uint8)
    if not np.array_equal(x, y):
        bad = int(np.argmax(x != y)) // a.dtype.itemsize
        return f"values differ (first at flat index {bad})"
    return None


def _reduce(obj):
    try:
        rv = obj.__reduce_ex__(4)
    except Exception:  # noqa: BLE001 - some objects refuse; the caller falls back
        return None
    if isinstance(rv, str) or not isinstance(rv, tuple) or len(rv) < 2:
        return rv
    parts = list(rv) + [None] * (6 - len(rv))
    func, args, state, listitems, dictitems, _ = parts[:6]
    return (func, args, state,
            list(listitems) if listitems is not None else None,
            list(dictitems) if dictitems is not None else None)


def _key_path(path, key):
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def diff(a, b, path: str = "obj"):
    """Where `a` and `b` first differ, as a message; None when they are the same.

    numpy arrays compare bit for bit with their dtype, shape and type; dicts,
    lists, tuples and sets element by element; other objects with == when it
    gives a plain answer, else by what they pickle (``__reduce_ex__``: class,
    arguments, state, so scikit-learn estimators compare attribute by
    attribute), and as a last resort by their pickle.dumps bytes.
    """
    seen = set()
    keep = []  # keeps compared temporaries alive so their ids stay unique
    work = [(a, b, path)]
    while work:
        x, y, where = work.pop()
        if x is y:
            continue
        tx = type(x)
        if tx is not type(y):
            return f"{where}: type {tx.__module__}.{tx.__qualname__} != " \
                   f"{type(y).__module__}.{type(y).__qualname__}"
        key = (id(x), id(y))
        if key in seen:
            continue
        seen.add(key)
        keep.append((x, y))
        if tx in _EXACT:
            if x != y:
                return f"{where}: {x!r:.80} != {y!r:.80}"
        elif tx is float or tx is complex:
            if not _float_same(x, y):
                return f"{where}: {x!r} != {y!r}"
        elif isinstance(x, np.ndarray):
            if x.dtype.hasobject and x.dtype == y.dtype and x.shape == y.shape:
                for i, (u, v) in enumerate(zip(x.flat, y.flat)):
                    work.append((u, v, f"{where}.flat[{i}]"))
            else:
                msg = _array_diff(x, y)
                if msg:
                    return f"{where}: {msg}"
        elif isinstance(x, np.generic):
            msg = _array_diff(np.asarray(x), np.asarray(y))
            if msg:
                return f"{where}: {msg}"
        elif tx is dict:
            if len(x) != len(y) or list(x) != list(y):
                kx, ky = list(x), list(y)
                if set(map(repr, kx)) == set(map(repr, ky)):
                    return f"{where}: same keys in another order"
                return f"{where}: keys differ ({len(kx)} vs {len(ky)} keys)"
            for k in reversed(list(x)):
                work.append((x[k], y[k], f"{where}[{k!r}]"))
        elif tx is list or tx is tuple:
            if len(x) != len(y):
                return f"{where}: length {len(x)} != {len(y)}"
            for i in range(len(x) - 1, -1, -1):
                work.append((x[i], y[i], f"{where}[{i}]"))
        elif tx is set or tx is frozenset:
            if x != y:
                return f"{where}: sets differ"
        else:
            msg = _object_diff(x, y, where, work)
            if msg:
                return msg
    return None


def _object_diff(x, y, where, work):
    tx = type(x)
    if tx.__module__.split(".")[0] == "pandas" and callable(getattr(x, "equals", None)):
        try:
            return None if x.equals(y) else f"{where}: pandas objects differ"
        except Exception:  # noqa: BLE001 - fall through to the generic comparison
            pass
    if tx.__eq__ is not object.__eq__:
        try:
            same = x == y
        except Exception:  # noqa: BLE001 - == that raises is not meaningful here
            same = None
        if same is True or (isinstance(same, np.bool_) and bool(same)):
            return None
    rx, ry = _reduce(x), _reduce(y)
    if rx is not None and ry is not None:
        if isinstance(rx, str) or isinstance(ry, str):
            return None if rx == ry else f"{where}: {rx!r} != {ry!r}"
        if rx[0] is not ry[0] and rx[0] != ry[0]:
            return f"{where}: reconstructed by {rx[0]!r} != {ry[0]!r}"
        sx, sy = rx[2], ry[2]
        work.append((rx[4], ry[4], f"{where}<dict items>"))
        work.append((rx[3], ry[3], f"{where}<list items>"))
        if type(sx) is dict and type(sy) is dict and list(sx) == list(sy):
            for k in reversed(list(sx)):
                work.append((sx[k], sy[k], _key_path(where, k)))
        else:
            work.append((sx, sy, f"{where}<state>"))
        work.append((rx[1], ry[1], f"{where}<args>"))
        return None
    try:
        same = pickle.dumps(x, 5) == pickle.dumps(y, 5)
    except Exception:  # noqa: BLE001
        return f"{where}: objects of type {tx.__qualname__} cannot be compared"
    return None if same else f"{where}: pickled bytes differ"


# --------------------------------------------------------------------------- commands

def _say(text="", file=None):
    """Print a line that may hold text from a file: escaped (firkin._text),
    so names and metadata cannot move the cursor, erase lines, set titles or
    plant links, and a lone surrogate cannot make printing fail."""
    print(printable(text), file=file)


def _err(msg: str):
    # line by line: the lines of firkin's own messages stay lines
    print("\n".join(printable(line) for line in f"firkin: {msg}".split("\n")), file=sys.stderr)


def _is_url(path: str) -> bool:
    from . import _remote

    return _remote.is_url(path)


def _exists(path: str) -> bool:
    return _is_url(path) or os.path.isfile(path)  # a missing object is reported when read


def _size(path: str, so) -> int:
    from . import _remote

    with _remote.opened(path, so if _is_url(path) else None) as (_, _, _, size):
        return size


def _cmd_convert(args) -> int:
    import firkin

    from . import _compress

    src, dst = args.input, args.output
    so_in = args.storage_options if _is_url(src) else None
    so_out = args.storage_options if _is_url(dst) else None
    compress = parse_compress(args.compress)
    try:
        _compress.resolve(compress, dst, whole_file=False)
    except ValueError as exc:
        raise _UsageError(f"--compress {args.compress!r}: {exc}") from exc
    if not _exists(src):
        _err(f"{src}: no such file")
        return 1
    if src == dst or (not _is_url(src) and not _is_url(dst) and os.path.exists(dst)
                      and os.path.samefile(src, dst)):
        raise _UsageError("OUT must be another file than IN (the original is needed to verify "
                          "the conversion)")
    trusted = True if args.trust_all else (args.trust or None)
    limit = {"max_memory": args.max_memory} if args.max_memory is not None else {}
    try:
        obj = firkin.load(src, trusted=trusted, storage_options=so_in, **limit)
    except Exception as exc:  # noqa: BLE001 - any failure to load is reported, not raised
        _err(f"cannot load {src}: {type(exc).__name__}: {exc}")
        return 1
    try:
        # firkin's own compression of chunks (parallel both ways), whatever OUT's ending
        firkin.dump(obj, dst, compress=compress, storage_options=so_out, whole_file=False)
    except Exception as exc:  # noqa: BLE001
        _err(f"cannot write {dst}: {type(exc).__name__}: {exc}")
        return 1
    del obj
    verified = ""
    if not args.no_verify:
        try:
            before = firkin.load(src, trusted=trusted, storage_options=so_in, **limit)
            after = firkin.load(dst, trusted=trusted, storage_options=so_out, **limit)
            problem = diff(before, after)
        except Exception as exc:  # noqa: BLE001
            problem = f"reloading failed: {type(exc).__name__}: {exc}"
        if problem:
            try:
                if _is_url(dst):
                    from . import _remote

                    fs, path, _ = _remote.resolve(dst, so_out)
                    fs.rm(path)
                else:
                    os.unlink(dst)
            except OSError:
                pass
            _err(f"verification failed, {dst} removed: {problem}")
            return 1
        verified = ", verified"
    _say(f"{src} ({_size(src, so_in):,} bytes) -> {dst} ({_size(dst, so_out):,} bytes, "
          f"firkin{'' if not compress else f', compress={compress!r}'}){verified}")
    return 0


def _cmd_info(args) -> int:
    from . import _inspect

    path = args.file
    if not _exists(path):
        _err(f"{path}: no such file")
        return 1
    try:
        info = _inspect.FileInfo(path, _options(args))
    except Exception as exc:  # noqa: BLE001 - a damaged file is a failure, reported
        _err(f"{path}: {type(exc).__name__}: {exc}")
        return 1
    if args.json:
        # strict JSON, ASCII only: metadata never holds NaN or infinities (_meta.parse)
        print(json.dumps(info.to_dict(), indent=2, default=str, allow_nan=False))
    else:
        print(repr(info))  # escaped by FileInfo: text from the file cannot drive the terminal
    if info.error:
        _err(f"{path}: {info.error}")
        return 1
    return 0


def _cmd_verify(args) -> int:
    import firkin

    if not _exists(args.file):
        _err(f"{args.file}: no such file")
        return 1
    try:
        report = firkin.verify(args.file, quick=args.quick, storage_options=_options(args))
    except OSError as exc:  # an object store that cannot be reached, or no such object
        _err(str(exc))
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        for line in str(report).split("\n"):
            _say(line)
    if not report.ok:
        for p in report.problems or [f"signature: {report.signature}"]:
            _err(p)
        return 1
    return 0


def _cmd_untrusted(args) -> int:
    import firkin

    if not _exists(args.file):
        _err(f"{args.file}: no such file")
        return 1
    try:
        names = firkin.untrusted_types(args.file, storage_options=_options(args))
    except (firkin.FirkinError, OSError) as exc:
        _err(str(exc))
        return 1
    if args.json:
        print(json.dumps(names))
    elif names:
        for name in names:  # one escaped name a line: a name cannot hide another
            _say(name)
    else:
        _say(f"{args.file}: nothing beyond firkin's allowlist")
    return 0


def _cmd_check(args) -> int:
    import firkin

    if not _exists(args.file):
        _err(f"{args.file}: no such file")
        return 1
    trusted = True if args.trust_all else (args.trust or None)
    try:
        result = firkin.check(args.file, trusted=trusted, rtol=args.rtol, atol=args.atol,
                              max_memory=args.max_memory, storage_options=_options(args))
    except (firkin.FirkinError, OSError) as exc:
        _err(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - the model does not load here: the check failed
        _err(f"{args.file}: the model does not load with the installed packages: "
             f"{type(exc).__name__}: {exc}")
        try:
            from . import _meta

            meta = firkin.load_metadata(args.file, storage_options=_options(args))
            for v in _meta.version_differences(meta, python=True):
                _err(f"  {v['package']} recorded {v['recorded']}, installed {v['installed']}")
        except (firkin.FirkinError, OSError):
            pass
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str, allow_nan=False))
    else:
        for line in str(result).split("\n"):
            _say(line)
    return 0 if result.ok else 1


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _byte_count(text: str):
    """'4G' -> 4 << 30; 'inf' -> math.inf; a plain int as it is."""
    import math

    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t in ("INF", "INFINITY", "NONE"):
        return math.inf
    shift = {"K": 10, "M": 20, "G": 30, "T": 40}.get(t[-1:], 0)
    try:
        n = int(t[:-1] if shift else t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a byte count: {text!r} (e.g. 4G, 512M, inf)") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r}")
    return n << shift


def _options(args):
    return args.storage_options if _is_url(args.file) else None


def _storage_options(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="firkin", description="Convert joblib and pickle files to firkin files; inspect, "
        "verify and check firkin, joblib and pickle files.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--storage-options", metavar="JSON", type=_storage_options, default=None,
                        help="options for fsspec URLs (credentials, endpoint), a JSON object")
    c = sub.add_parser("convert", parents=[remote],
                       help="save a joblib/pickle/firkin file as a firkin file",
                       description="Load IN (joblib, pickle or firkin), save it to OUT with "
                       "firkin.dump, then reload both and compare them deeply.")
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT")
    c.add_argument("--compress", metavar="SPEC", default=None,
                   help="compression of OUT: a level ('3', zlib), a method ('zstd', 'lz4', "
                   "'gzip', 'bz2', 'lzma', 'xz', 'zlib') or method:level ('zlib:6'); "
                   "default none")
    c.add_argument("--no-verify", action="store_true",
                   help="skip reloading and comparing both files")
    c.add_argument("--trust", action="append", metavar="NAME", default=[],
                   help="also trust this module.qualname while loading IN (repeatable)")
    c.add_argument("--trust-all", action="store_true",
                   help="load IN whatever it imports (as unsafe as pickle: only for your own files)")
    c.add_argument("--max-memory", metavar="BYTES", type=_byte_count, default=None,
                   help="how much memory loading IN may use beyond the size of its data "
                   "(decompression, sizes the pickle asks for): bytes, or with a K/M/G/T "
                   "suffix (binary); 'inf' for no bound; default 2G")
    i = sub.add_parser("info", parents=[remote],
                       help="describe a file without unpickling it",
                       description="Format, size, metadata and the arrays a firkin, joblib or "
                       "pickle file holds; nothing in the file is imported or run.")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    v = sub.add_parser("verify", parents=[remote],
                       help="check every checksum and the signature of a firkin file",
                       description="Exit status 0 when every checksum matches and the signature "
                       "is not invalid, 1 otherwise; nothing is unpickled.")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument("--quick", action="store_true",
                   help="check the header, index, pickle stream, metadata and their signature, "
                   "not the array data (a few ranged reads of a URL)")
    u = sub.add_parser("untrusted", parents=[remote],
                       help="list what a default load would refuse",
                       description="The module.qualname names (and unjudgeable opcodes) in a "
                       "firkin or pickle file that are not on firkin's allowlist; nothing is "
                       "unpickled.")
    u.add_argument("file", metavar="FILE")
    u.add_argument("--json", action="store_true", help="print a JSON list")
    k = sub.add_parser("check", parents=[remote], help="rerun a model's stored check sample and compare",
                       description="Load the model in FILE under firkin's trust policy, rerun the "
                       "check sample stored with dump(..., check_data=) and compare its outputs: "
                       "labels exactly, floats within |got - stored| <= atol + rtol * |stored|. "
                       "Exit status 0 when every output is reproduced, 1 otherwise (also when "
                       "FILE holds no sample).")
    k.add_argument("file", metavar="FILE")
    k.add_argument("--json", action="store_true", help="print one JSON object")
    k.add_argument("--rtol", type=_float, default=1e-7, help="relative tolerance (default 1e-7)")
    k.add_argument("--atol", type=_float, default=1e-10, help="absolute tolerance (default 1e-10)")
    k.add_argument("--trust", action="append", metavar="NAME", default=[],
                   help="also trust this module.qualname while loading FILE (repeatable)")
    k.add_argument("--trust-all", action="store_true",
                   help="load FILE whatever it imports (as unsafe as pickle: only for your own files)")
    k.add_argument("--max-memory", metavar="BYTES", type=_byte_count, default=None,
                   help="as for convert")
    return p


def main(argv=None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_usage(sys.stderr)
        _err("a command is required: convert, info, verify, untrusted or check")
        return 2
    try:
        commands = {"convert": _cmd_convert, "info": _cmd_info, "verify": _cmd_verify,
                    "untrusted": _cmd_untrusted, "check": _cmd_check}
        return commands[args.command](args)
    except _UsageError as exc:
        parser.print_usage(sys.stderr)
        _err(str(exc))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 1
    except BrokenPipeError:
        # the reader went away (e.g. `firkin info FILE | head`): not an error of ours
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
