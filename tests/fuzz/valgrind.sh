#!/usr/bin/env bash
# valgrind memcheck over a subset of the tests, against a debug build (-O0 -g)
# of firkin._core made in a scratch copy of the tree; fails when a definite
# leak or a memory error has a frame in firkin (tests/fuzz/vgfilter.py).
#
#   tests/fuzz/valgrind.sh                    the default subset (~5 min)
#   tests/fuzz/valgrind.sh tests/test_objects.py -k refcount    any pytest args
#
# Logs: build/valgrind/vg-<pid>.log (one per process; children are traced).
# CPython runs with PYTHONMALLOC=malloc so that every object is a malloc
# block valgrind tracks; no suppression file is needed because only records
# with a firkin frame are judged (CPython's and numpy's own one-time
# allocations at import are reported as 'definitely lost' and ignored).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../.." && pwd)"
py="$(${PYTHON:-python3} -c 'import sys; print(sys.executable)')"   # the real binary, not a pyenv shim
logs="${VG_LOGDIR:-$src/build/valgrind}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tree"
(cd "$src" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/tree")
(cd "$work/tree" && rm -f python/firkin/_core*.so &&
  FIRKIN_DEBUG=1 "$py" setup.py -q build_ext --inplace >/dev/null 2>&1)
ls "$work"/tree/python/firkin/_core*.so >/dev/null
rm -rf "$logs" && mkdir -p "$logs"
if [ $# -eq 0 ]; then
  set -- "$src/tests/test_reliability.py" "$src/tests/test_corruption.py" \
    -k "refcount or file_size or missing_parent or (never_crashes and (raw or chunked or small_oob)) or regression"
fi
export PYTHONPATH="$work/tree/python" PYTHONMALLOC=malloc
export FIRKIN_CORRUPTION_CASES="${FIRKIN_CORRUPTION_CASES:-40}"
set +e
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
  --num-callers=40 --trace-children=yes --log-file="$logs/vg-%p.log" \
  "$py" -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
"$py" "$here/vgfilter.py" "$logs"/vg-*.log || status=1
exit $status
