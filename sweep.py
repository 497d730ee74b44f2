"""
Step sweeps (DESIGN.md §6): sample every valid (checkpoint, sampler, steps) cell with sample.generate, score it
with evaluate.py's metrics (MAUVE, generative perplexity, entropy, distinct-n), and write results.csv, results.md
and a plot of quality against NFE. Resumable: finished cells are read back from results.csv, which is rewritten
atomically after each cell. Run through the evaluate CLI:

    python evaluate.py sweep --ckpt out/dsl/ckpt.pt --ckpt out/mdlm/ckpt.pt --samplers mdlm,remdm-loop,uncertainty \
        --steps 16,32,64,128 --num_samples 256 --judge out/ar/ckpt.pt
"""
import csv
import io
import json
import os
import textwrap
import time

import torch

import data
import sample
from evaluate import features, get_judge, judge_inputs, load, need, references, score, write_atomic

COLUMNS = ['model', 'ckpt', 'sampler', 'steps', 'nfe', 'n', 'L', 'seed', 'top_p', 'judge', 'mauve', 'gen_nll',
           'gen_ppl', 'entropy', 'distinct_1', 'distinct_2', 'distinct_3', 'distinct_4', 'seconds']
KEY = ('ckpt', 'sampler', 'steps', 'n', 'L', 'seed', 'top_p', 'judge')


def parse_spec(spec):
    """'uncertainty:gamma_commit=10:kappa=2' -> ('uncertainty', {'gamma_commit': 10.0, 'kappa': 2.0}): a sampler and
    its knobs (sample.KNOBS) in one sweep label (':' separates them, so a comma-separated list of labels stays one
    CLI argument). Numbers become floats (ints for T_c and commit_noise), the rest stay strings."""
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


@torch.no_grad()
def draw(m, meta, n, L, steps, sampler, top_p, seed, batch_size):
    """n samples of one cell through sample.generate, one generator seeded per cell (common random numbers)."""
    sampler, kw = parse_spec(sampler)
    g, xs, nfe = torch.Generator().manual_seed(seed), [], 0
    if m.dsl:
        m.build_endpoint_table()  # once per cell, not per batch
    try:
        for i in range(0, n, batch_size):
            x, info = sample.generate(m, min(batch_size, n - i), L, steps, sampler, top_p, generator=g, **kw)
            xs.append(x)
            nfe = info['nfe']
    finally:
        if m.dsl:
            m.drop_endpoint_table()
    x = torch.cat(xs)
    dec = data.get_tokenizer(meta)[1] if meta else None
    return x, [dec(r) if dec else None for r in x.tolist()], nfe


def label(path, m):
    kind = 'ar' if m.config.get('causal') else 'dsl' if m.dsl else 'mdlm'
    return f"{kind}:{os.path.basename(os.path.dirname(os.path.abspath(path)))}"


def sweep(ckpts, samplers, steps, num_samples, judge, refs='', featurizer=None, out_dir='sweep', L=None, seed=0,
          top_p=0.9, batch_size=64, pool='mean', debug_kill_after=-1, keep_texts=4):
    """Sample and score every valid cell; results.csv is rewritten atomically after each cell, and cells already
    in it (same key) are read back instead of recomputed. samplers: one list for every checkpoint, or a dict
    {ckpt: list}; a sampler may carry knobs ('uncertainty:gamma_commit=10'). The first keep_texts decoded samples
    of each cell go to samples.jsonl. Adds a 'reference' row (held-out chunks vs other
    held-out chunks) and, with an AR judge, the AR model's own samples. Writes results.csv, .md, .png."""
    from tqdm import tqdm
    need('mauve', 'mauve-text', 'MAUVE', check=True)
    need('matplotlib', 'matplotlib', 'the sweep plot', check=True)
    per = samplers if isinstance(samplers, dict) else {p: samplers for p in ckpts}
    for ss in per.values():  # an unknown sampler or knob fails before any work
        for s in ss:
            name, kw = parse_spec(s)
            sample.sampler_name(name)
            sample.check_options(top_p, kw)
    models = {p: load(p) for p in ckpts}
    J = get_judge(judge, pool)
    F = J if featurizer in (None, judge) else get_judge(featurizer, pool)
    cfg0 = models[ckpts[0]][2]
    refs = refs or cfg0.get('data_dir') or ''
    L = L or cfg0.get('block_size')
    if not refs or not L:
        raise ValueError("pass --refs (a prepared data folder or a text file) and --seq_len")
    cells, notes = [], []
    for p, (m, meta, _) in models.items():
        for s in per.get(p, []):
            for T in steps:
                try:
                    name, kw = parse_spec(s)
                    sample._check(m, name, T, top_p, kw)
                    cells.append((p, s, T))
                except ValueError as e:
                    notes.append(f"skipped {label(p, m)} {s} T={T}: {e.args[0]}")
    if J['kind'] == 'ar':
        models[J['name']] = (J['model'], J['meta'], {})
        cells.append((J['name'], 'ar', L))
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
    key = lambda ck, s, T: tuple(str(v) for v in (ck, s, T, num_samples, L, seed, top_p, J['name']))
    for ck, s, T in tqdm([('reference', 'data', 0)] + cells, desc='sweep', unit='cell'):
        if key(ck, s, T) in done:
            rows.append(done.pop(key(ck, s, T)))
            continue
        t0 = time.time()
        if ck == 'reference':  # other held-out chunks than the reference set: the ceiling of every metric
            x, texts = references(refs, J, L, num_samples, seed, skip=num_samples)
            nfe, name = 0, 'reference'
        else:
            m, meta, _ = models[ck]
            x, texts, nfe = draw(m, meta, num_samples, L, T, s, top_p, seed, batch_size)
            name = label(ck, m)
        r = dict(model=name, ckpt=ck, sampler=s, steps=T, nfe=nfe, n=num_samples, L=L, seed=seed, top_p=top_p,
                 judge=J['name'])
        r.update({k: v for k, v in score(x, texts, J, F, q, f'{ck} {s}').items() if k not in r})
        r['seconds'] = round(time.time() - t0, 2)
        rows.append({k: str(r[k]) for k in COLUMNS})
        if keep_texts and texts and texts[0] is not None:  # a few decoded samples, so a reader sees the numbers
            with open(os.path.join(out_dir, 'samples.jsonl'), 'a') as f:
                f.write(json.dumps(dict(model=name, sampler=s, steps=T, nfe=nfe, texts=texts[:keep_texts])) + '\n')
        write_atomic(path, to_csv(rows + list(done.values())))  # rows of other settings are kept until the end
        computed += 1
        if computed == debug_kill_after:  # test hook: die like a killed process, right after a cell is saved
            os.kill(os.getpid(), 9)
    write_atomic(path, to_csv(rows))
    head = (f"N = {num_samples} samples per cell, L = {L}, seed {seed}, top-p {top_p}, judge {J['name']}, "
            f"featurizer {F['name']} ({F.get('pool', 'last')} state), references {refs} (seed {seed})")
    show = [c for c in COLUMNS if c not in ('ckpt', 'judge', 'n', 'L', 'seed', 'top_p')]  # those are in the header
    md = [head, '', '| ' + ' | '.join(show) + ' |', '|' + '---|' * len(show)]
    md += ['| ' + ' | '.join(fmt(r[c]) for c in show) + ' |' for r in rows]
    write_atomic(os.path.join(out_dir, 'results.md'), '\n'.join(md + [''] + notes) + '\n')
    plot(rows, os.path.join(out_dir, 'results.png'), head)
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


def plot(rows, out, title):
    """MAUVE and generative perplexity against NFE (log x), one line per model + sampler; the reference data and
    the AR model as horizontal lines."""
    plt = need('matplotlib.pyplot', 'matplotlib', 'the sweep plot')
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(dict.fromkeys(r['model'] for r in rows if r['model'] != 'reference' and r['sampler'] != 'ar'))
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    colour = lambda s: plt.cm.tab20(samplers.index(s) % 20)
    style = lambda name: ('-', '--', ':', '-.')[names.index(name) % 4]
    for ax, col in zip(axes, ('mauve', 'gen_ppl')):
        series = {}
        for r in rows:
            series.setdefault((r['model'], r['sampler']), []).append((int(r['nfe']), float(r[col])))
        for (name, s), pts in series.items():
            if name == 'reference' or s == 'ar':
                ax.axhline(pts[0][1], ls='--', lw=1, color='k' if name == 'reference' else 'gray',
                           label='reference data' if name == 'reference' else f'{name} (AR, {pts[0][0]} NFE)')
            else:
                pts.sort()  # colour = sampler, line style = model: 15 lines stay tellable apart
                ax.plot(*zip(*pts), marker='o', ms=3, color=colour(s), ls=style(name), label=f'{name} {s}')
        ax.set(xscale='log', xlabel='NFE (denoiser calls)', ylabel=col.replace('_', ' '))
        if col == 'gen_ppl':
            ax.set_yscale('log')
    axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))  # outside: many lines
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    fig.tight_layout()
    fig.savefig(out + '.tmp.png', dpi=90)
    os.replace(out + '.tmp.png', out)
    plt.close(fig)
