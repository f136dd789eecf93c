#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU: build the `cuda` feature, replay every committed parity
# case on CUDA, run the backend tests there, then bench the S model and a CogVideoX-2b-shaped model (random
# weights) against diffusers on the same GPU with the same weights, inputs and strategies. One table out.
#
#     tools/gpu/check.sh OUT_DIR
#
# Environment (all optional):
#   DITCACHE_BIN   a `ditcache` built with `--features cuda` (default: built here with cargo)
#   BACKEND_TEST   the `backend` test binary built with `--features cuda` (default: built here with cargo)
#   BATCH_TEST     the `batch` test binary built with `--features cuda` (default: built here with cargo)
#   PYTHON         a Python with torch (CUDA) and diffusers 0.42 (default: python3)
#   LATENT_2B      latent size of the 2b-shaped run, FRAMES,HEIGHT,WIDTH (default 4,30,44: 1 546 tokens)
#   STEPS_2B       its denoising steps (default 10)
#   BENCH_2B       0 skips the 2b-shaped run (default 1)
# A machine without Rust can take binaries built elsewhere: build them with CUDARC_CUDA_VERSION set to the
# machine's CUDA (e.g. 13000) so that cudarc binds the driver's API version.
set -uo pipefail
out=${1:?usage: tools/gpu/check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
root=$PWD
py=${PYTHON:-python3}
work=$(mktemp -d)
fail=0
note() { echo "== $*" | tee -a "$out/summary.md"; }

# cubecl compiles kernels with NVRTC, loaded at run time, and includes CUDA's headers.
if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
    lib=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null | head -n 1)
    [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
fi
export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
# The test binary finds tests/cases through the crate directory.
export CARGO_MANIFEST_DIR="$root/benches"
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
note "GPU: ${gpu:-none found}"

cuda=(--release -p benches --no-default-features --features cuda --target-dir target/cuda)
if [ -z "${DITCACHE_BIN:-}" ]; then
    cargo build "${cuda[@]}" --bin ditcache || exit 1
    DITCACHE_BIN=target/cuda/release/ditcache
fi
test_binary() {
    cargo test "${cuda[@]}" --test "$1" --no-run --message-format=json \
        | "$py" -c 'import json,sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable")][-1])'
}
[ -n "${BACKEND_TEST:-}" ] || BACKEND_TEST=$(test_binary backend) || exit 1
[ -n "${BATCH_TEST:-}" ] || BATCH_TEST=$(test_binary batch) || exit 1

note "parity: every committed case on CUDA"
timeout 600 "$DITCACHE_BIN" parity tests/cases >"$out/parity.jsonl" 2>"$work/parity.err" || fail=1
tail -n 20 "$work/parity.err" | tee -a "$out/summary.md"
"$py" - "$out/parity.jsonl" <<'EOF' | tee -a "$out/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
strict = sum(1 for r in rows if r.get("rel_l2") is not None and r["rel_l2"] <= r["tolerance"] and r["decisions_match"] is not False)
worst = max((r["rel_l2"] for r in rows if r.get("rel_l2") is not None), default=None)
print(f"within the cases' own float32 tolerances: {strict} of {len(rows)}; largest rel_l2 {worst}; "
      f"decisions match on every case that has them: {all(r['decisions_match'] is not False for r in rows)}")
EOF

# backend.rs includes attention at odd lengths on strided batch-2 inputs: the accelerated kernels offset each
# (batch, head) by stride(1), so a permuted view could read another batch's rows (read in cubek-attention 0.2,
# unverified on a GPU).
note "backend tests on CUDA (batch-1 = batch-2 rows; batch-1 generations = diffusers; attention at odd lengths)"
timeout 600 "$BACKEND_TEST" --test-threads 1 --nocapture >"$out/backend.txt" 2>&1 || fail=1
grep -E '^test result|rel_l2' "$out/backend.txt" | tee -a "$out/summary.md"

note "batch tests on CUDA (each video of a batch = its batch-1 run; pooled vs per-sample FBC)"
timeout 600 "$BATCH_TEST" --test-threads 1 >"$out/batch.txt" 2>&1 || fail=1
grep -E '^test |^test result' "$out/batch.txt" | tee -a "$out/summary.md"

# One model: ours (`bench --export` writes what diffusers needs), then diffusers on the same GPU, with TF32
# allowed as burn's CUDA matmuls use it (docs/backends.md).
bench() {
    local name=$1; shift
    note "bench $name"
    timeout 900 "$DITCACHE_BIN" bench "$@" --export "$work/$name" --json "$out/$name-ours.json" \
        >"$work/$name-ours.txt" 2>"$work/$name-ours.err" || { tail -n 5 "$work/$name-ours.err"; fail=1; return; }
    local repeats
    repeats=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["repeats"])' "$out/$name-ours.json")
    timeout 900 "$py" tools/reference/peer_timing.py "$work/$name" --device cuda --tf32 --repeats "$repeats" \
        --out "$out/$name-diffusers.json" >"$work/$name-diffusers.txt" 2>&1 || { tail -n 5 "$work/$name-diffusers.txt"; fail=1; return; }
    "$py" tools/gpu/table.py "$out/$name-ours.json" "$out/$name-diffusers.json" "$gpu" | tee -a "$out/summary.md"
}
bench s --model s --steps 20 --repeats 3
# The 2b-shaped run takes the S run's PAB and FasterCache settings (as written by its export).
mkdir -p "$work/strategies"
"$py" - "$work/s/bench.json" "$work/strategies" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
for s in spec["strategies"]:
    if s["strategy"] in ("pab(s2)", "fastercache"):
        json.dump(s["cache"], open(f"{sys.argv[2]}/{s['strategy']}.json", "w"))
EOF
[ "${BENCH_2B:-1}" = 0 ] || bench 2b --model 2b --latent-size "${LATENT_2B:-4,30,44}" --steps "${STEPS_2B:-10}" --repeats 1 \
    --strategy "$work/strategies/pab(s2).json" --strategy "$work/strategies/fastercache.json"

# Batched generation: time per video on the trained model at batch 1, 2 and 4 (one loop, one model call per
# step for every video), uncached and with one engine.
note "batched generation, trained model, 20 steps: time per video"
echo '{"type": "first_block_cache", "threshold": 0.2}' >"$work/fbc(0.2).json"
for b in 1 2 4; do
    timeout 600 "$DITCACHE_BIN" bench --batch "$b" --repeats 3 --strategy "$work/fbc(0.2).json" --json "$out/batch$b.json" \
        >"$work/batch$b.txt" 2>"$work/batch$b.err" || { tail -n 5 "$work/batch$b.err"; fail=1; continue; }
    grep -E '^\| (strategy|baseline|fbc)' "$work/batch$b.txt" | sed "s/^/batch $b /" | tee -a "$out/summary.md"
done

rm -rf "$work"
note "done: $([ $fail = 0 ] && echo 'all steps passed' || echo 'SOME STEPS FAILED')"
exit $fail
