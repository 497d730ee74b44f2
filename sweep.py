"""
Step sweeps (docs/evaluation.md §5): sample every valid (checkpoint, sampler, steps) cell with
sample.generate, score it with evaluate.py's metrics (MAUVE, generative perplexity, entropy, distinct-n), and
write results.csv, results.md and a plot of quality against NFE. Resumable: finished cells are read back from
results.csv, which is rewritten atomically after each cell.

    python sweep.py --ckpt out/dsl/ckpt.pt --ckpt out/mdlm/ckpt.pt --samplers mdlm,remdm-loop,uncertainty \
        --steps 16,32,64,128 --num_samples 256 --judge out/ar/ckpt.pt
"""

import argparse
import csv
import io
import json
import os
import sys
import time

import torch

import common
import data
import figures
import rules
import sample
from evaluate import features, get_judge, judge_inputs, load, need, references, score, write_atomic

COLUMNS = [
    'model',
    'ckpt',
    'sampler',
    'steps',
    'nfe',
    'n',
    'L',
    'seed',
    'top_p',
    'judge',
    'mauve',
    'gen_nll',
    'gen_ppl',
    'entropy',
    'distinct_1',
    'distinct_2',
    'distinct_3',
    'distinct_4',
    'seconds',
]
KEY = ('ckpt', 'sampler', 'steps', 'n', 'L', 'seed', 'top_p', 'judge')


def parse_spec(spec):
    """'uncertainty:gamma_commit=10:kappa=2' -> ('uncertainty', {'gamma_commit': 10.0, 'kappa': 2.0}): a
    sampler and its knobs (rules.KNOBS) in one sweep label (':' separates them, so a comma-separated list of
    labels stays one CLI argument). Numbers become floats (ints for T_c and commit_noise), the rest stay
    strings."""
    name, *items = spec.split(':')
    kw = {}
    for item in filter(None, items):
        k, eq, v = item.partition('=')
        if not eq:
            raise ValueError(f"sampler '{spec}': knobs are written name:key=value:key=value")
        try:
            v = float(v)
            v = int(v) if v.is_integer() and k in ('T_c', 'commit_noise') else v
        except ValueError:
            pass
        kw[k] = v
    return name, kw


def draw(m, meta, n, L, steps, sampler, top_p, seed, batch_size):
    """n samples of one cell (sample.draw), one generator seeded per cell (common random numbers)."""
    sampler, kw = parse_spec(sampler)
    x, info = sample.draw(
        m,
        n,
        L,
        steps,
        sampler,
        top_p,
        generator=torch.Generator().manual_seed(seed),
        batch_size=batch_size,
        **kw,
    )
    dec = data.get_tokenizer(meta)[1] if meta else None
    return x, [dec(r) if dec else None for r in x.tolist()], info['nfe']


def label(path, m):
    kind = 'ar' if m.config.get('causal') else 'dsl' if m.dsl else 'mdlm'
    return f"{kind}:{os.path.basename(os.path.dirname(os.path.abspath(path)))}"


def split_top_p(spec, top_ps):
    """'hybrid:top_p=0.8,1.0' -> ('hybrid', [0.8, 1.0]): a sampler label may carry its own top-p values (a
    diversity frontier for some cells only); else the sweep's. The top_p knob is the last one when present."""
    name, sep, tp = spec.partition(':top_p=')
    if sep and ':' in tp:
        raise ValueError(f"sampler '{spec}': top_p= must be its last knob")
    return (name, [float(v) for v in tp.split(',')]) if sep else (spec, list(top_ps))


def sweep(
    ckpts,
    samplers,
    steps,
    num_samples,
    judge,
    refs='',
    featurizer=None,
    out_dir='sweep',
    L=None,
    seed=0,
    top_p=0.9,
    batch_size=64,
    pool='mean',
    debug_kill_after=-1,
    keep_texts=4,
    compile=False,
    trust=False,
):
    """Sample and score every valid cell; results.csv is rewritten atomically after each cell, and cells
    already in it (same key) are read back instead of recomputed. samplers: one list for every checkpoint, or
    a dict {ckpt: list}; a sampler may carry knobs ('uncertainty:gamma_commit=10') and its own top-p values,
    last ('hybrid:top_p=0.8,0.9,1.0'; else top_p, a float or a list). steps: one list, or a dict {ckpt: list}.
    The first keep_texts decoded samples of each cell go to samples.jsonl; every cell's per-sample judge NLL,
    token count and entropy go to per_sample.jsonl (for a bootstrap). Adds a 'reference' row (held-out chunks
    vs other held-out chunks) and, with an AR judge, the AR model's own samples. Writes results.csv, .md,
    .png. compile: torch.compile each diffusion model's forward (dynamic shapes: the batch of a chunk and the
    head's rows change). trust: unpickle the checkpoints (the judge's too) in full, as evaluate.load."""
    from tqdm import tqdm

    need('mauve', 'mauve-text', 'MAUVE', check=True)
    figures.check()
    per = samplers if isinstance(samplers, dict) else {p: samplers for p in ckpts}
    top_ps = top_p if isinstance(top_p, (list, tuple)) else [top_p]
    for ss in per.values():  # an unknown sampler or knob fails before any work
        for s in ss:
            s, tps = split_top_p(s, top_ps)
            name, kw = parse_spec(s)
            sample.sampler_name(name)
            for tp in tps:
                rules.check_options(tp, kw)
    models = {p: load(p, trust=trust) for p in ckpts}
    for p, (m, meta, cfg) in models.items() if compile else ():
        if not m.config.get('causal'):  # the AR model's own samples are one cell: not worth a compile
            common.compile_forward(
                m, lambda m: sample.generate(m, 2, L or cfg.get('block_size'), 2, 'mdlm'), dynamic=True
            )
    J = get_judge(judge, pool, trust)
    F = J if featurizer in (None, judge) else get_judge(featurizer, pool, trust)
    cfg0 = models[ckpts[0]][2]
    refs = refs or cfg0.get('data_dir') or ''
    L = L or cfg0.get('block_size')
    if not refs or not L:
        raise ValueError("pass --refs (a prepared data folder or a text file) and --seq_len")
    cells, notes = [], []
    for p, (m, meta, _) in models.items():
        for spec in per.get(p, []):
            s, tps = split_top_p(spec, top_ps)
            for T in steps.get(p, []) if isinstance(steps, dict) else steps:
                try:
                    name, kw = parse_spec(s)
                    sample._check(m, name, T, tps[0], kw)
                    cells += [(p, s, T, tp) for tp in tps]
                except ValueError as e:
                    notes.append(f"skipped {label(p, m)} {s} T={T}: {e.args[0]}")
    if J['kind'] == 'ar':
        models[J['name']] = (J['model'], J['meta'], {})
        cells.append((J['name'], 'ar', L, top_ps[0]))
    rx, rt = references(refs, J, L, num_samples, seed)
    q = features(F, judge_inputs(F, rx, rt, f'--refs {refs}'))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, 'results.csv')
    done = {}
    if os.path.isfile(path):
        with open(path) as f:
            for r in csv.DictReader(f):
                done[tuple(r[k] for k in KEY)] = r
    rows, computed = [], 0
    key = lambda ck, s, T, tp: tuple(str(v) for v in (ck, s, T, num_samples, L, seed, tp, J['name']))
    for ck, s, T, tp in tqdm([('reference', 'data', 0, top_ps[0])] + cells, desc='sweep', unit='cell'):
        if key(ck, s, T, tp) in done:
            rows.append(done.pop(key(ck, s, T, tp)))
            continue
        t0 = time.time()
        if ck == 'reference':  # other held-out chunks than the reference set: the ceiling of every metric
            x, texts = references(refs, J, L, num_samples, seed, skip=num_samples)
            nfe, name = 0, 'reference'
        else:
            m, meta, _ = models[ck]
            x, texts, nfe = draw(m, meta, num_samples, L, T, s, tp, seed, batch_size)
            name = label(ck, m)
        r = dict(
            model=name,
            ckpt=ck,
            sampler=s,
            steps=T,
            nfe=nfe,
            n=num_samples,
            L=L,
            seed=seed,
            top_p=tp,
            judge=J['name'],
        )
        r.update(
            {k: v for k, v in score(x, texts, J, F, q, f'{ck} {s}', per_sample=True).items() if k not in r}
        )
        r['seconds'] = round(time.time() - t0, 2)
        with open(
            os.path.join(out_dir, 'per_sample.jsonl'), 'a'
        ) as f:  # before the CSV: a resumed cell has both
            f.write(json.dumps(dict(zip(KEY, key(ck, s, T, tp)), **r.pop('per_sample'))) + '\n')
        rows.append({k: str(r[k]) for k in COLUMNS})
        if (
            keep_texts and texts and texts[0] is not None
        ):  # a few decoded samples, so a reader sees the numbers
            with open(os.path.join(out_dir, 'samples.jsonl'), 'a') as f:
                f.write(
                    json.dumps(
                        dict(model=name, sampler=s, steps=T, top_p=tp, nfe=nfe, texts=texts[:keep_texts])
                    )
                    + '\n'
                )
        write_atomic(
            path, to_csv(rows + list(done.values()))
        )  # rows of other settings are kept until the end
        computed += 1
        if computed == debug_kill_after:  # test hook: die like a killed process, right after a cell is saved
            os.kill(os.getpid(), 9)
    write_atomic(path, to_csv(rows))
    head = (
        f"N = {num_samples} samples per cell, L = {L}, seed {seed}, judge {J['name']}, "
        f"featurizer {F['name']} ({F.get('pool', 'last')} state), references {refs} (seed {seed})"
    )
    show = [c for c in COLUMNS if c not in ('ckpt', 'judge', 'n', 'L', 'seed')]  # those are in the header
    md = [head, '', '| ' + ' | '.join(show) + ' |', '|' + '---|' * len(show)]
    md += ['| ' + ' | '.join(fmt(r[c]) for c in show) + ' |' for r in rows]
    write_atomic(os.path.join(out_dir, 'results.md'), '\n'.join(md + [''] + notes) + '\n')
    figures.sweep(rows, os.path.join(out_dir, 'results.png'), head)
    return rows, notes


def to_csv(rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator='\n')
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def fmt(v):
    try:
        return v if v.lstrip('-').isdigit() else f"{float(v):.4g}"
    except ValueError:
        return v


def parse_args(argv):
    ap = argparse.ArgumentParser(description='sample and score every valid (checkpoint, sampler, steps) cell')
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    ap.add_argument('--ckpt', action='append', required=True, help='repeat for several models')
    ap.add_argument(
        '--samplers',
        default='mdlm,remdm-cap,remdm-loop,uncertainty',
        help="comma-separated; knobs after ':' (uncertainty:gamma_commit=10)",
    )
    ap.add_argument('--steps', default='16,32,64,128')
    ap.add_argument('--num_samples', type=int, default=64)
    ap.add_argument('--judge', required=True, help="an AR checkpoint or 'gpt2-large'")
    ap.add_argument('--featurizer', default=None)
    ap.add_argument(
        '--pool', default='mean', choices=['mean', 'last'], help='AR featurizer: mean or last hidden state'
    )
    ap.add_argument('--refs', default='', help="default: the first checkpoint's data folder")
    ap.add_argument('--seq_len', type=int, default=0)
    ap.add_argument(
        '--top_p', default='0.9', help='comma-separated: every cell at each (a diversity frontier)'
    )
    ap.add_argument('--batch_size', type=int, default=64)
    ap.add_argument('--out_dir', default='sweep')
    ap.add_argument('--seed', type=int, default=0, help='references and samples')
    ap.add_argument('--compile', action='store_true', help="torch.compile the models' forward (sampling)")
    ap.add_argument(
        '--trust_checkpoint',
        action='store_true',
        help='unpickle checkpoints in full, which can run code in them: only for files from a source '
        'you trust',
    )
    ap.add_argument('--debug_kill_after', type=int, default=-1, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def die(msg):
    print(f"sweep.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    a = parse_args(argv)
    try:
        steps = [int(s) for s in a.steps.split(',') if s]
        sweep(
            a.ckpt,
            [s for s in a.samplers.split(',') if s],
            steps,
            a.num_samples,
            a.judge,
            a.refs,
            a.featurizer,
            a.out_dir,
            a.seq_len,
            a.seed,
            [float(v) for v in a.top_p.split(',') if v],
            a.batch_size,
            a.pool,
            a.debug_kill_after,
            compile=a.compile,
            trust=a.trust_checkpoint,
        )
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
        ImportError,
    ) as e:  # user errors: one line; bugs keep tracebacks
        die(str(e.args[0]) if e.args else type(e).__name__)
    print(open(os.path.join(a.out_dir, 'results.md')).read())


if __name__ == '__main__':
    main()
