#!/usr/bin/env bash
# Build hypermixer with AddressSanitizer + UndefinedBehaviorSanitizer into a separate virtual
# environment (the shared editable install is left alone) and run the whole test suite there.
#
#   scripts/sanitize.sh                 # build, then run every test
#   scripts/sanitize.sh tests/test_x.py # build, then run the given pytest arguments
#
# Environment: VENV (default /tmp/hm-asan-venv), BUILD_DIR (default /tmp/hm-asan-build),
# SKIP_BUILD=1 to reuse an existing build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-/tmp/hm-asan-venv}"
BUILD_DIR="${BUILD_DIR:-/tmp/hm-asan-build}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q numpy pytest hypothesis cython scikit-build-core cython-cmake ninja cmake
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    # Not editable: the package is copied into the venv, so the shared tree's build/ is not used.
    HYPERMIXER_SANITIZE=ON "$VENV/bin/pip" install -q --no-build-isolation --no-deps \
        -C build-dir="$BUILD_DIR" -C cmake.build-type=Debug "$ROOT"
fi

LIBASAN="$(gcc -print-file-name=libasan.so)"
LIBUBSAN="$(gcc -print-file-name=libubsan.so)"
# Found without importing hypermixer (that would load the ASan runtime too late).
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')"
MODULE="$(ls "$SITE"/hypermixer/_kernels*.so | head -1)"
if ! readelf -d "$MODULE" | grep -q libasan; then
    echo "sanitize.sh: $MODULE is not linked against libasan; the build did not pick up" \
         "HYPERMIXER_SANITIZE" >&2
    exit 2
fi

# Reports go to files as well as being fatal: pytest captures file descriptor 2, and a
# process that aborts takes the captured text with it.
REPORTS="$(mktemp -d /tmp/hm-sanitizer-reports.XXXXXX)"
# detect_leaks=0: CPython keeps interned objects and arenas alive at exit by design.
# detect_stack_use_after_return=0: ASan's fake stack frames are not 64-byte aligned, and the
# Debug build (-O0) spills 512-bit vectors with aligned moves (vmovaps) into them, so the
# AVX-512 width-4 code (csrc/hypermixing_w4.h) faults there although it is correct (seen in
# gdb: `vmovaps %zmm5,-0x140(%r11)` on a fake-stack address; the same tests pass with real
# stack frames).
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0:check_initialization_order=1:log_path=$REPORTS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$REPORTS/ubsan"
export PYTHONMALLOC=malloc   # let ASan see every Python allocation too
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

# The package sources live under python/, so running from the repository root still imports
# the sanitized copy installed in the venv (checked by the first test below); the root on
# sys.path lets tests import "tests.helpers".
cd "$ROOT"
LD_PRELOAD="$LIBASAN:$LIBUBSAN" "$VENV/bin/python" -c 'import hypermixer, sys; assert hypermixer.__file__.startswith(sys.prefix), hypermixer.__file__'
if [[ $# -eq 0 ]]; then
    set -- "$ROOT/tests"
fi
set +e
LD_PRELOAD="$LIBASAN:$LIBUBSAN" "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
status=$?
set -e
if compgen -G "$REPORTS/*" > /dev/null; then
    echo "=== sanitizer reports ($REPORTS) ===" >&2
    cat "$REPORTS"/* >&2
    exit 1
fi
echo "sanitize.sh: no ASan/UBSan report; pytest exit status $status"
exit $status
