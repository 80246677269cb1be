#!/usr/bin/env python3
"""Summarise valgrind memcheck logs (one per process, --log-file=...%p.log):
count definite leaks and memory errors, and fail when any of them has a
frame in firkin (its extension module or src/*.c). Leaks and errors of
CPython, numpy and other libraries are counted but not judged.

    python tests/fuzz/vgfilter.py build/valgrind/vg-*.log
"""
import re
import sys

FIRKIN_FRAME = re.compile(r"_core\.cpython|\((?:reader|writer|codec|module|checksum|scan|sign)\.c:\d+\)"
                          r"|in [^)]*firkin[^)]*\.so")
ERROR = re.compile(r"Invalid (?:read|write|free)|Conditional jump|uninitialised|Mismatched free"
                   r"|Source and destination overlap|Argument .* of function .* has a fishy")


def main(paths):
    totals = {"processes": 0, "definite_records": 0, "definite_firkin": 0, "errors": 0, "errors_firkin": 0,
              "definite_bytes": 0}
    bad = []
    for path in paths:
        text = open(path, errors="replace").read()
        if "Memcheck" not in text or "Command:" not in text:
            continue
        totals["processes"] += 1
        m = re.search(r"definitely lost: ([\d,]+) bytes", text)
        if m:
            totals["definite_bytes"] += int(m.group(1).replace(",", ""))
        for block in re.split(r"\n==\d+== \n", text):
            ours = bool(FIRKIN_FRAME.search(block))
            if "definitely lost in loss record" in block:
                totals["definite_records"] += 1
                totals["definite_firkin"] += ours
            elif ERROR.search(block):
                totals["errors"] += 1
                totals["errors_firkin"] += ours
            else:
                continue
            if ours:
                bad.append(f"--- {path}\n{block.strip()[:4000]}")
    print("valgrind summary: " + ", ".join(f"{k}={v}" for k, v in totals.items()))
    for b in bad:
        print(b)
    if not totals["processes"]:
        print("no valgrind logs found")
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
