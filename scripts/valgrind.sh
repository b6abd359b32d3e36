#!/usr/bin/env bash
# valgrind memcheck of a short compiled forward/backward: HyperMixerBlock (bidirectional and
# causal, padded batch), TransformerBlock and the LM head with the loss. Prints valgrind's
# ERROR SUMMARY and exits non-zero if memcheck reported any error.
#
#   scripts/valgrind.sh            # uses the python on PATH (the editable install)
#   PYTHON=/path/to/python scripts/valgrind.sh
#
# PYTHONMALLOC=malloc sends CPython's small objects through malloc so that memcheck sees
# them instead of flagging pymalloc's arena tricks; leak checking is off because CPython
# keeps module state alive at exit by design.
set -euo pipefail

# the interpreter itself, not a wrapper script (pyenv shims) that valgrind would trace instead
PYTHON="$("${PYTHON:-python}" -c 'import sys; print(sys.executable)')"
LOG="${LOG:-/tmp/hypermixer-valgrind.log}"

read -r -d '' SNIPPET <<'PY' || true
import numpy as np
import hypermixer as hm

hm.set_num_threads(int(__import__("os").environ.get("HM_THREADS", "2")))
rng = np.random.default_rng(0)
x = rng.normal(size=(3, 10, 16))
g = rng.normal(size=(3, 10, 16))
lengths = np.array([10, 4, 1])
for dtype in (np.float32, np.float64):
    for causal in (False, True):
        block = hm.HyperMixerBlock(16, 24, 12, causal=causal, seed=1, dtype=dtype)
        for _ in range(2):
            block.forward(x, lengths)
            block.backward(g, 1e-3)
        block.forward(x[0])
        block.backward(g[0], 1e-3)
    tb = hm.TransformerBlock(16, 24, 12, seed=1, dtype=dtype)
    for _ in range(2):
        tb.forward(x, lengths)
        tb.backward(g, 1e-3)
    emb = hm.Embeddings(50, 12, 16, seed=1, dtype=dtype)
    out = hm.OutputProjection(16, 50, seed=1, dtype=dtype)
    ids = rng.integers(0, 50, size=(3, 10))
    logits = out.forward(tb.forward(emb.forward(ids, lengths), lengths), lengths)
    loss, gl = hm.softmax_cross_entropy(logits, ids, lengths)
    emb.backward(tb.backward(out.backward(gl, 1e-3), 1e-3), 1e-3)
print("valgrind workload done")
PY

set +e
PYTHONMALLOC=malloc valgrind --tool=memcheck --error-exitcode=99 --leak-check=no \
    --track-origins=yes --num-callers=30 --log-file="$LOG" \
    "$PYTHON" -c "$SNIPPET"
status=$?
grep "ERROR SUMMARY" "$LOG" | tail -1
# CPython itself and the dynamic loader produce a fixed set of reports under memcheck
# (uninitialised reads in the interpreter's fast paths, ld.so's strncmp); what matters here is
# whether any reported stack passes through the compiled module.
ours=$(awk '
    /^==[0-9]+== [A-Z]/ && !in_block { in_block = 1; hit = 0; next }
    /^==[0-9]+== $/ { if (in_block && hit) n++; in_block = 0; next }
    in_block && /(at|by) 0x/ && /_kernels|csrc\// { hit = 1 }
    END { print n + 0 }' "$LOG")
echo "error contexts whose stack passes through hypermixer's compiled code: $ours (log: $LOG)"
if [[ $status -ne 0 && $status -ne 99 ]]; then
    echo "valgrind or the workload failed (exit $status)" >&2
    exit $status
fi
[[ $ours -eq 0 ]]
