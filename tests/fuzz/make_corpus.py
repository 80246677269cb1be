#!/usr/bin/env python3
"""Seed corpora for the fuzz harnesses, generated from valid files.

    python tests/fuzz/make_corpus.py OUTDIR

writes OUTDIR/reader/* (mode byte + container, see fuzzlib.py) and
OUTDIR/scan/* (pickle streams of protocols 0-5). Deterministic.
"""
import hashlib
import os
import pickle
import sys

import numpy as np

# files made with firkin.dumps are signed: use a fixed key, never the user's key file
os.environ["FIRKIN_KEY"] = "firkin-fuzz-seed-key"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fuzzlib


def values():
    rng = np.random.default_rng(1234)
    yield "empty_dict", {}
    yield "scalars", [None, True, 1, -(2 ** 70), 1.5, "text", b"bytes", (1, 2), {3, 4}]
    yield "small_arrays", {"a": np.arange(10), "b": np.ones((3, 4), np.float32)}
    yield "oob_arrays", {"x": np.arange(3000, dtype=np.int64), "y": rng.random(500),
                         "z": np.zeros(0), "s": "marker"}
    yield "multi_chunk", [np.arange(5000, dtype=np.float64), np.arange(100, dtype=np.uint8)]
    yield "layouts", {"f": np.asfortranarray(np.arange(600.0).reshape(20, 30)),
                      "be": np.arange(300, dtype=">i4"), "strided": np.arange(2000)[::3],
                      "t": np.arange(600).reshape(20, 30).T}
    yield "bytes_oob", [bytearray(b"q" * 5000), pickle.PickleBuffer(b"r" * 3000)]
    yield "shared", (lambda a: [a, a, {"again": a}])(np.arange(400))
    yield "records", np.array([(1, 2.0, b"ab")] * 50, dtype=[("i", "i4"), ("f", "f8"), ("s", "S2")])


def main(out):
    reader_dir = os.path.join(out, "reader")
    scan_dir = os.path.join(out, "scan")
    os.makedirs(reader_dir, exist_ok=True)
    os.makedirs(scan_dir, exist_ok=True)
    n_reader = n_scan = 0

    def save(d, data):
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)

    codecs = [("raw", 0, 0)] + [(n, c, 1) for n, c in sorted(fuzzlib.available_codecs().items())]
    for label, value in values():
        for cname, codec, level in codecs:
            blob = fuzzlib.build_container(value, codec, level, metadata={"seed": label})
            # every mode: as-is, and with each kind of checksum repair
            for mode in (0, 7) if codec == 0 else (7,):
                save(reader_dir, bytes([mode]) + blob)
                n_reader += 1
            assert fuzzlib.decode_reader_input(b"\x07" + blob) == blob, "fixup changed a valid file"
            if cname in ("zstd", "zlib") and label in ("oob_arrays", "multi_chunk", "layouts"):
                # filtered buffer sections (format 1.2): every filter, forced
                for filt in (fuzzlib.core.FILTER_SHUFFLE, fuzzlib.core.FILTER_BITSHUFFLE,
                             fuzzlib.core.FILTER_DELTA):
                    fblob = fuzzlib.build_container(value, codec, level, metadata={"seed": label},
                                                    filters=filt)
                    save(reader_dir, b"\x07" + fblob)
                    n_reader += 1
            if codec == 0:
                # small arrays packed (format 1.3), as a dump to a path writes them
                pblob = fuzzlib.build_container(value, metadata={"seed": label}, packed=True)
                for mode in (0, 7):
                    save(reader_dir, bytes([mode]) + pblob)
                    n_reader += 1
                stream = fuzzlib.core.Reader(blob).pickle_stream()
                save(scan_dir, stream)
                n_scan += 1
        for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
            try:
                save(scan_dir, pickle.dumps(value, protocol=proto))
                n_scan += 1
            except (pickle.PicklingError, TypeError, ValueError):
                pass
        # joblib's own files: array data between the opcodes (scan_joblib's walk)
        try:
            import io

            import joblib
        except ImportError:
            joblib = None
        if joblib is not None and isinstance(value, (np.ndarray, dict, list)):
            for proto in (2, 4):
                bio = io.BytesIO()
                try:
                    joblib.dump(value, bio, protocol=proto)
                except (pickle.PicklingError, TypeError, ValueError):
                    continue
                save(scan_dir, bio.getvalue())
                n_scan += 1
    # the default writer settings too (1 MiB chunks, 64 KiB threshold), compressed to stay small
    save(reader_dir, b"\x07" + fuzzlib.firkin.dumps({"w": np.arange(20000.0), "k": "v"}, compress=1))
    n_reader += 1
    print(f"make_corpus: {n_reader} reader seeds in {reader_dir}, {n_scan} scan seeds in {scan_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
