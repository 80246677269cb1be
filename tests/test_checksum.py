"""CRC-32C (docs/FORMAT.md, "Checksum"): the implementation the C core
picks at run time (AVX-512 carry-less multiplication folding, the SSE4.2
crc32 instruction in three lanes, ARMv8 CRC) and its table loop give the
values of the polynomial's definition, for every length, alignment and
starting value, and agree with each other."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from firkin import _core

# lengths around every threshold of the implementations: the 8-byte
# alignment loop, 32-byte blocks, the three-lane loop's 3 x 4096 bytes; the
# folding's 512-byte minimum, its 256-byte loop, 64-byte loop and tail
_LENGTHS = sorted({*range(0, 80), *(b + d for b in (256, 512, 1024, 3 * 4096, 65536) for d in range(-9, 10)),
                   *(64 * k + 1 for k in range(16, 40)),
                   *(512 + 256 * i + 64 * j + r for i in (0, 1, 2) for j in (0, 1, 2, 3)
                     for r in (0, 1, 8, 15, 16, 17, 63)),
                   1 << 20, (1 << 20) + 77, 3 * (1 << 20) + 5})


def _byte_table() -> list[int]:
    """The CRC of each byte value, one bit at a time from the reflected
    polynomial 0x82F63B78."""
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _byte_table()


def _reference(data: bytes, crc: int = 0) -> int:
    """CRC-32C from its definition: the table above, init and final xor
    0xFFFFFFFF."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def test_check_value():
    assert _core.crc32c(b"123456789") == 0xE3069283 == _reference(b"123456789")
    assert _core.crc32c(b"") == 0


def test_matches_the_definition_at_every_length_and_alignment():
    data = np.random.default_rng(7).bytes(70_000 + 8)
    view = memoryview(data)
    for n in (n for n in _LENGTHS if n <= 70_000):
        for off in (0, 1, 5) if n < 2000 else (0, 3):
            part = view[off:off + n]
            want = _reference(part)
            assert _core.crc32c(part) == want, (n, off)
            assert _core.crc32c(part, 0x12345678) == _reference(part, 0x12345678), (n, off)
            cut = n // 3  # continuing from a CRC is the CRC of the joined bytes
            assert _core.crc32c(part[cut:], _core.crc32c(part[:cut])) == want, (n, off)


_CHILD = """
import json, sys, numpy as np
from firkin import _core
data = memoryview(np.random.default_rng(11).bytes(3 * (1 << 20) + 16))
lengths = json.loads(sys.argv[1])
print(json.dumps([_core.build_info()["crc32c"]]
                 + [_core.crc32c(data[off:off + n], seed) for n in lengths for off in (0, 3)
                    for seed in (0, 0xDEADBEEF)]))
"""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_every_implementation_gives_the_same_values():
    """The one this machine picks, the SSE4.2 loop where the folding was
    picked (FIRKIN_CRC_NO_AVX512) and the table loop (FIRKIN_CRC_SOFTWARE),
    over the same bytes up to 3 MiB (the definition above is too slow for
    that many)."""
    ways = [("picked", {}), ("software", {"FIRKIN_CRC_SOFTWARE": "1"})]
    picked = _core.build_info()["crc32c"]
    if {"avx512f", "vpclmulqdq", "sse4_2", "pclmulqdq"} <= _cpu_flags():
        assert picked == "avx512-vpclmulqdq"  # the CPU has it: the detection must find it
    if picked == "avx512-vpclmulqdq":
        ways.append(("sse4.2", {"FIRKIN_CRC_NO_AVX512": "1"}))
    got = {}
    for name, env in ways:
        proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(_LENGTHS)], capture_output=True,
                              text=True, env=dict(os.environ, **env), timeout=300)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        got[name] = (out[0], out[1:])
    assert got["software"][0] == "software"
    assert got["picked"][0] == picked
    if "sse4.2" in got:
        assert got["sse4.2"][0] == "sse4.2"
    for name in got:
        assert got[name][1] == got["software"][1], {k: v[0] for k, v in got.items()}
