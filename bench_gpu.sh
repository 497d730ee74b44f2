#!/usr/bin/env bash
# The whole GPU measurement in one go, written as one JSON file, bench_gpu.json (or $BENCH_JSON):
#  1. bench.py: training tokens/s, MFU, peak memory and activation bytes per token of the MDLM and DSL objectives
#     (DSL with the ROAR term at its default weight, in the same forward) on `small`, GPT-2 vocabulary, L = 1024,
#     bf16, eager and torch.compile'd side by side; sampling samples/s and NFE/s at batch 1 and 64 for `mdlm` and
#     `uncertainty`, with the share of the step time outside the model forward;
#  2. the real entry points: `torchrun train.py` (DSL, `small`, L = 1024, bf16, compiled) for a few minutes on
#     generated token ids, then `sample.py` on its checkpoint; their ms/step, tokens/s, peak memory and samples/s.
#   bash bench_gpu.sh               # on a CUDA machine (about 10 minutes on one H100-class GPU)
#   bash bench_gpu.sh --cpu-smoke   # the same script end to end on the CPU: tiny model, V = 3000 (still the
#                                   # top-k lookup), eager only, 3 training steps (what the tests run)
set -euo pipefail
cd "$(dirname "$0")"
out="${BENCH_JSON:-bench_gpu.json}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if [ "${1:-}" = "--cpu-smoke" ]; then
    size="--device cpu --preset tiny --vocab 3000 --block_size 32 --batch 2 --iters 1 --warmup 1 --reps 1 --steps 2 --sample_batches 1,2"
    train="--device cpu --preset tiny --block_size 32 --batch_size 2 --max_iters 3 --compile False"
    tokens=20000 vocab=3000
    runs=("eager")  # torch.compile on the CPU costs minutes of C++ builds; the GPU run covers it
elif [ -n "${1:-}" ]; then
    echo "bench_gpu.sh: unknown option '$1' (use --cpu-smoke or nothing)" >&2; exit 2
else
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "bench_gpu.sh: no CUDA device here; run it on a GPU machine, or pass --cpu-smoke" >&2; exit 2; }
    size="--device cuda --preset small --vocab 50257 --block_size 1024 --batch 16 --iters 10 --warmup 3 --reps 3 --steps 32 --sample_batches 1,64"
    train="--preset small --block_size 1024 --batch_size 32 --max_iters 300 --compile True"
    tokens=50000000 vocab=50257
    runs=("compiled")  # bench.py --compile times every row eager and compiled
fi
for run in "${runs[@]}"; do
    flag=""; [ "$run" = "compiled" ] && flag="--compile"
    echo "== $run" >&2
    python bench.py $size $flag --modes mdlm,dsl,dsl-dense --samplers mdlm,uncertainty --memory \
        --roar_weight 1.44 --json "$tmp/$run.json"
done
# the real entry points on generated token ids (uniform over the vocabulary: speed and memory, not quality)
echo "== train.py and sample.py" >&2
python - "$tmp/data" "$tokens" "$vocab" <<'PY'
import json, os, sys
import numpy as np
folder, n, V = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(folder)
rng = np.random.default_rng(0)
for split, size in (('train', n), ('val', max(n // 100, 20000))):
    rng.integers(0, V, size).astype(np.uint16).tofile(os.path.join(folder, f'{split}.bin'))
# a character vocabulary of V made-up symbols, so that sample.py can decode what it draws
chars = [chr(0x100 + i) for i in range(V)]
meta = dict(vocab_size=V, dtype='uint16', tokenizer='char', chars=chars, train_tokens=n)
json.dump(meta, open(f'{folder}/meta.json', 'w'))
PY
start=$(date +%s)
torchrun --standalone --nproc_per_node=1 train.py $train --data_dir "$tmp/data" --out_dir "$tmp/run" \
    --eval_interval 100000 --log_interval 25 --ckpt_interval 100000 --eval_windows 4 > "$tmp/train.log" 2>&1 \
    || { tail -20 "$tmp/train.log" >&2; exit 1; }
train_s=$(( $(date +%s) - start ))
python sample.py --ckpt "$tmp/run/ckpt.pt" --steps 32 --num_samples 16 --batch_size 16 --quiet --profile \
    --out "$tmp/samples.jsonl" > "$tmp/sample.log" 2>&1 || { tail -20 "$tmp/sample.log" >&2; exit 1; }
python - "$out" "$tmp" "$train_s" "${runs[@]}" <<'PY'
import json, re, sys
out, tmp, train_s, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
result = {run: json.load(open(f'{tmp}/{run}.json')) for run in runs}
log = open(f'{tmp}/train.log').read()
steps = re.findall(r'step (\d+) \| loss ([\d.]+) .*?\| ([\d.]+) ms/step \| ([\d,]+) tok/s', log)
peak = re.findall(r'peak memory ([\d.]+) GiB', log)
prof = re.search(r'profile: ([\d.]+) samples/s .*?([\d.]+) ms per denoiser call, ([\d.]+)%', open(f'{tmp}/sample.log').read())
result['train_py'] = dict(wall_s=train_s, last_step=int(steps[-1][0]), loss=float(steps[-1][1]),
                          ms_step=float(steps[-1][2]), tok_s=int(steps[-1][3].replace(',', '')),
                          peak_gib=float(peak[-1]) if peak else None, log=log.splitlines()[-12:])
result['sample_py'] = dict(samples_s=float(prof[1]), ms_call=float(prof[2]), outside_pct=float(prof[3]))
json.dump(result, open(out, 'w'), indent=1)
print(f'wrote {out}', file=sys.stderr)
PY
