"""bench_gpu.sh end to end at its CPU smoke size, and bench.py's top-k lookup error against the dense
lookup."""

import json
import os
import subprocess

import numpy as np
import torch

import bench
import model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_gpu_cpu_smoke_writes_every_number(tmp_path):
    out = tmp_path / 'bench.json'
    env = dict(os.environ, BENCH_JSON=str(out), OMP_NUM_THREADS='1')
    r = subprocess.run(
        ['bash', 'bench_gpu.sh', '--cpu-smoke'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.load(open(out))
    d = result['eager']
    assert [t['mode'] for t in d['train']] == ['mdlm', 'dsl', 'dsl-dense']
    assert all(t['tok_s'] > 0 and t['act_kb_per_token'] > 0 for t in d['train'])
    assert [(s['sampler'], s['batch']) for s in d['sample']] == [
        ('mdlm', 1),
        ('mdlm', 2),
        ('uncertainty', 1),
        ('uncertainty', 2),
    ]
    assert all(s['samples_s'] > 0 and s['nfe_s'] > 0 and 0 <= s['outside'] <= 1 for s in d['sample'])
    # the real entry points ran: train.py's last logged step and sample.py's profile line were read
    assert result['train_py']['last_step'] == 3 and result['train_py']['tok_s'] > 0
    assert result['sample_py']['samples_s'] > 0 and 0 <= result['sample_py']['outside_pct'] <= 100
    r = subprocess.run(['bash', 'bench_gpu.sh', '--fast'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count('\n') == 1


def test_lookup_error_is_zero_for_dense_and_shrinks_with_k(tmp_path, capsys):
    """bench.py --lookup_error on a tiny DSL checkpoint: the dense row is the reference, the top-k rows have a
    positive tail mass and an error that falls as k grows."""
    torch.manual_seed(0)
    V = 1500
    m = model.DiT(model.model_config('tiny', V, dsl=True))
    with torch.no_grad():  # a non-trivial head and converter temperature, as after training
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p)) if p.dim() > 1 else None
    torch.save(dict(model=m.state_dict(), model_config=m.config), tmp_path / 'ckpt.pt')
    np.random.default_rng(0).integers(0, V, 4000).astype(np.uint16).tofile(tmp_path / 'val.bin')
    json.dump(dict(vocab_size=V, dtype='uint16', tokenizer='ids'), open(tmp_path / 'meta.json', 'w'))
    rows = bench.main(
        [
            '--lookup_error',
            str(tmp_path / 'ckpt.pt'),
            '--data',
            str(tmp_path),
            '--batch',
            '4',
            '--block_size',
            '16',
            '--grid',
            '8',
            '--topk',
            '8,64,512',
        ]
    )
    assert rows[0][0] == 0 and rows[0][1:4] == (0.0, 0.0, 0.0) and rows[0][5] == 0
    tails, errs = [r[1] for r in rows[1:]], [r[3] for r in rows[1:]]
    assert (
        all(t > 0 for t in tails)
        and tails == sorted(tails, reverse=True)
        and errs == sorted(errs, reverse=True)
    )
    assert 'tail mass' in capsys.readouterr().out
