"""zstd chunks hold runs of one byte as RLE frames (docs/FORMAT.md, "Codecs").

A zstd chunk is one or more Zstandard frames one after another. firkin
writes each run of at least 32 KiB of one byte (the zero byte planes of
shuffled small integers, the zeros of sparse arrays) as a frame of RLE
blocks and the bytes between runs as libzstd frames. These tests read the
frames of the chunks firkin wrote with tests/_container.zstd_frames (RFC
8878 alone) and check them against the runs of the chunk's raw bytes,
found here independently, then load the file (libzstd decodes the frames).
"""
import numpy as np
import pytest

import firkin
from firkin import _core

pytestmark = pytest.mark.skipif("zstd" not in firkin.codecs(), reason="this build has no zstd")

from _container import KIND_BUFFER, parse, rewrite_index_crcs, stored_chunks, zstd_frames  # noqa: E402

RUN_MIN = 32768  # the shortest run written as an RLE frame
BLOCK_MAX = 131072  # the largest zstd block


def _runs(raw: bytes):
    """The maximal runs of one byte in raw of RUN_MIN bytes or more: [(start, end, byte)]."""
    a = np.frombuffer(raw, np.uint8)
    edges = np.flatnonzero(a[1:] != a[:-1]) + 1
    starts = np.concatenate(([0], edges))
    ends = np.concatenate((edges, [len(a)]))
    return [(int(s), int(e), int(a[s])) for s, e in zip(starts, ends) if e - s >= RUN_MIN]


def _expected_segments(raw: bytes):
    """(start, end, byte or None): the runs, and the stretches between them."""
    out, at = [], 0
    for s, e, b in _runs(raw):
        if s > at:
            out.append((at, s, None))
        out.append((s, e, b))
        at = e
    if at < len(raw):
        out.append((at, len(raw), None))
    return out


def _is_run_frame(f) -> bool:
    """A frame of RLE blocks only, of a run's length: what firkin writes by hand."""
    return all(t == 1 for t, _, _ in f["blocks"]) and f["content_size"] >= RUN_MIN


def _check_chunk(stored: bytes, raw: bytes):
    """The frames of one zstd chunk are the runs of its raw bytes, in order."""
    frames = zstd_frames(stored)
    want = _expected_segments(raw)
    assert [f["content_size"] for f in frames] == [e - s for s, e, _ in want], "frame boundaries are not the runs"
    for (s, e, byte), f in zip(want, frames):
        if byte is None:
            # libzstd's frame of the stretch between runs: it may hold an RLE
            # block of its own, but it is not one of the hand-written frames
            assert not _is_run_frame(f)
            continue
        n = e - s
        sizes = [BLOCK_MAX] * (n // BLOCK_MAX) + ([n % BLOCK_MAX] if n % BLOCK_MAX else [])
        assert f["blocks"] == [(1, size, byte) for size in sizes]
        assert not f["checksum"]
        assert f["end"] - f["start"] == 9 + 4 * len(sizes)  # magic, descriptor, 4-byte content size, blocks
    return frames


def _dump_and_check(tmp_path, value: np.ndarray, filtered_raw=None, **kw):
    """Dump value with zstd, check every compressed chunk of its buffer
    section, load it back. filtered_raw(chunk raw bytes) -> what the codec saw.
    Returns the number of RLE frames written and the frames of each
    compressed chunk."""
    path = tmp_path / "r.firkin"
    firkin.dump(value, path, compress=kw.pop("compress", ("zstd", 1)), filters=kw.pop("filters", None),
                whole_file=False, **kw)
    p = parse(path.read_bytes())
    (sec,) = [s for s in p["sections"] if s["kind"] == KIND_BUFFER]
    raw_all = value.tobytes()
    at, chunk_frames = 0, []
    for stored, codec, _filt, _elem, raw_len in stored_chunks(p, sec):
        raw = raw_all[at:at + raw_len]
        at += raw_len
        if codec == 0:
            assert stored == raw
            continue
        assert codec == 2
        chunk_frames.append(_check_chunk(stored, filtered_raw(raw) if filtered_raw else raw))
    assert at == len(raw_all) and chunk_frames
    out = firkin.load(path)
    assert out.dtype == value.dtype and np.array_equal(out, value)
    return sum(_is_run_frame(f) for frames in chunk_frames for f in frames), chunk_frames


def _noise(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8)


def _layout(rng, parts):
    """uint8 array from parts: ("noise", n) or (byte, n)."""
    return np.concatenate([_noise(rng, n) if kind == "noise" else np.full(n, kind, np.uint8)
                           for kind, n in parts])


CASES = {
    "run at the start": [(0, 40_000), ("noise", 100_000)],
    "run at the end": [("noise", 100_000), (7, 70_000)],
    "whole chunk one byte": [(0x5A, 1 << 20)],
    "exactly the shortest run, unaligned": [("noise", 12_345), (3, RUN_MIN), ("noise", 30_000)],
    "one byte short of a run": [("noise", 12_345), (3, RUN_MIN - 1), ("noise", 30_000)],
    "two runs side by side": [("noise", 5_000), (1, 50_000), (2, 60_000), ("noise", 5_000)],
    "runs over several blocks": [("noise", 1_000), (0, 3 * BLOCK_MAX + 17), ("noise", 1_000), (9, 2 * BLOCK_MAX)],
    "short runs only": [(0, 31_000), ("noise", 9_000)] * 20,
    "tiny stretches between runs": [(4, 40_000), ("noise", 1), (5, 40_000), ("noise", 3), (4, 40_000)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_runs_in_one_chunk(tmp_path, case):
    rng = np.random.default_rng(len(case))
    value = _layout(rng, CASES[case])
    assert 64 << 10 <= len(value) <= 1 << 20  # its own section (not packed), one chunk
    rle, _ = _dump_and_check(tmp_path, value)
    assert rle == len(_runs(value.tobytes()))
    assert (rle == 0) == (case in ("one byte short of a run", "short runs only"))


def test_run_that_the_noise_before_it_extends(tmp_path):
    """A run's first bytes can come from the stretch before it (noise that
    happens to end in the run's byte): the frame starts where the run does."""
    rng = np.random.default_rng(3)
    noise = _noise(rng, 10_000)
    noise[-5:] = 0  # five more zeros than the planted run
    noise[-6] = 1
    value = np.concatenate([noise, np.zeros(50_000, np.uint8), _noise(rng, 10_000)])
    assert _dump_and_check(tmp_path, value)[0] == 1
    assert _runs(value.tobytes())[0][:2] == (9_995, 60_000)


def test_runs_across_chunks_and_seeds(tmp_path):
    """Random layouts over several chunks: runs cut by chunk ends, runs of
    every length around the shortest, one after another."""
    total = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        parts, size = [], 0
        while size < 3 * (1 << 20) + 12_345:
            kind = rng.integers(0, 4)
            if kind == 0:
                n = int(rng.integers(1, 50_000))
                parts.append(("noise", n))
            else:
                n = int(rng.choice([RUN_MIN - 1, RUN_MIN, RUN_MIN + 1, int(rng.integers(1, 400_000))]))
                parts.append((int(rng.integers(0, 3)), n))
            size += n
        total += _dump_and_check(tmp_path, _layout(rng, parts))[0]
    assert total > 50  # the layouts did hold runs


def test_shuffled_small_integers(tmp_path):
    """int64 values 0..49, byte-shuffled: each chunk is one libzstd frame of
    the low bytes and one RLE frame of the seven zero planes."""
    value = np.random.default_rng(0).integers(0, 50, 3 * (1 << 17), dtype=np.int64)  # 3 chunks

    def shuffled(raw):
        return np.frombuffer(raw, np.uint8).reshape(-1, 8).T.tobytes()

    rle, chunk_frames = _dump_and_check(tmp_path, value, filtered_raw=shuffled, filters="auto")
    sec = [s for s in parse((tmp_path / "r.firkin").read_bytes())["sections"] if s["kind"] == KIND_BUFFER][0]
    assert (sec["flags"] >> 1) & 7 == 1 and sec["filter_elem"] == 8  # auto chose byte shuffle
    assert rle == 3
    for frames in chunk_frames:
        assert [f["content_size"] for f in frames] == [1 << 17, 7 << 17]


@pytest.mark.parametrize("level", [1, 3, 19, 22])
def test_every_level_writes_runs(tmp_path, level):
    rng = np.random.default_rng(level + 10)
    value = _layout(rng, [("noise", 20_000), (0, 200_000), ("noise", 20_000), (0xFF, 40_000)])
    assert _dump_and_check(tmp_path, value, compress=("zstd", level))[0] == 2


def test_sparse_float_array(tmp_path):
    """A sparse array: long zero stretches between values, some of them runs."""
    rng = np.random.default_rng(5)
    value = np.zeros(600_000)
    value[rng.choice(len(value), 40, replace=False)] = rng.random(40)
    assert _dump_and_check(tmp_path, value)[0] > 0


@pytest.mark.parametrize("change", ["one byte short", "one byte long", "other byte"])
def test_doctored_rle_frame_is_refused_or_loads_what_it_says(tmp_path, change):
    """A chunk's frames are checked like any zstd data: with its CRC fixed, an
    RLE frame that decodes to one byte fewer or more than the chunk's raw
    length is refused; one that repeats another byte loads that byte (the
    CRC covers what is stored, and the chunk decodes to its length)."""
    rng = np.random.default_rng(9)
    value = _layout(rng, [("noise", 30_000), (0, 300_000), ("noise", 30_000)])
    path = tmp_path / "d.firkin"
    firkin.dump(value, path, compress=("zstd", 1), filters=None, whole_file=False)
    data = bytearray(path.read_bytes())
    p = parse(bytes(data))
    (sec,) = [s for s in p["sections"] if s["kind"] == KIND_BUFFER]
    (chunk,) = stored_chunks(p, sec)
    (rle,) = [f for f in zstd_frames(chunk[0]) if _is_run_frame(f)]
    at = sec["offset"] + rle["start"]
    fcs = int.from_bytes(data[at + 5:at + 9], "little")
    last = at + rle["end"] - rle["start"] - 4  # the last block's header
    header = int.from_bytes(data[last:last + 3], "little")
    if change == "other byte":
        for b in range(len(rle["blocks"])):
            data[at + 9 + 4 * b + 3] = 0x77
    else:
        d = -1 if change == "one byte short" else 1
        data[at + 5:at + 9] = (fcs + d).to_bytes(4, "little")
        data[last:last + 3] = (header + (d << 3)).to_bytes(3, "little")
    rewrite_index_crcs(data, at)
    path.write_bytes(bytes(data))
    if change == "other byte":
        out = firkin.load(path)
        expected = value.copy()
        start, end, _ = _runs(value.tobytes())[0]
        expected[start:end] = 0x77
        assert np.array_equal(out, expected)
    else:
        with pytest.raises(firkin.FormatError, match="does not decode|invalid") as info:
            firkin.load(path)
        assert str(path) in str(info.value) and "chunk 0" in str(info.value)


def test_compressed_chunks_are_at_most_64_mib():
    """Readers refuse a compressed chunk of more than 64 MiB raw bytes, so the
    writer refuses to cut a compressed dump in bigger chunks."""
    import io

    with pytest.raises(ValueError, match="chunk_size of a compressed dump"):
        _core.Writer(io.BytesIO(), chunk_size=(64 << 20) + 4096, codec=_core.CODEC_ZSTD)
    _core.Writer(io.BytesIO(), chunk_size=64 << 20, codec=_core.CODEC_ZSTD)
    _core.Writer(io.BytesIO(), chunk_size=(64 << 20) + 4096, codec=_core.CODEC_RAW)
