#!/usr/bin/env bash
# The whole GPU measurement in one go (under 8 minutes on one H100), written as JSON to bench_gpu.json
# (or $BENCH_JSON): training tokens/s, MFU and peak memory of the MDLM and DSL objectives on `small`,
# GPT-2 vocabulary, L = 1024, bf16, eager and torch.compile'd (timed side by side in one bench.py run); sampling samples/s and NFE/s at batch 1 and 64
# for `mdlm` and `uncertainty`, with the share of the step time spent outside the model forward.
#   bash bench_gpu.sh               # on a CUDA machine
#   bash bench_gpu.sh --cpu-smoke   # the same script end to end on the CPU: tiny model, V = 3000 (still the
#                                   # top-k lookup), eager only (what the tests run)
set -euo pipefail
cd "$(dirname "$0")"
out="${BENCH_JSON:-bench_gpu.json}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ "${1:-}" = "--cpu-smoke" ]; then
    size="--device cpu --preset tiny --vocab 3000 --block_size 32 --batch 2 --iters 1 --warmup 1 --reps 1 --steps 2 --sample_batches 1,2"
    runs=("eager")  # torch.compile on the CPU costs minutes of C++ builds; the GPU run covers it
elif [ -n "${1:-}" ]; then
    echo "bench_gpu.sh: unknown option '$1' (use --cpu-smoke or nothing)" >&2; exit 2
else
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "bench_gpu.sh: no CUDA device here; run it on a GPU machine, or pass --cpu-smoke" >&2; exit 2; }
    size="--device cuda --preset small --vocab 50257 --block_size 1024 --batch 16 --iters 10 --warmup 3 --reps 3 --steps 32 --sample_batches 1,64"
    runs=("compiled")  # bench.py --compile times every row eager and compiled
fi
for run in "${runs[@]}"; do
    flag=""; [ "$run" = "compiled" ] && flag="--compile"
    echo "== $run" >&2
    python bench.py $size $flag --modes mdlm,dsl,dsl-dense --samplers mdlm,uncertainty --memory \
        --json "$tmp/$run.json"
done
python - "$out" "$tmp" "${runs[@]}" <<'PY'
import json, sys
out, tmp, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
json.dump({run: json.load(open(f'{tmp}/{run}.json')) for run in runs}, open(out, 'w'), indent=1)
print(f'wrote {out}', file=sys.stderr)
PY
