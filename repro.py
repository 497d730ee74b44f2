"""
The paper's claim at small scale, end to end (Wu et al., arXiv 2602.16169, §5): DSL *fine-tuned from MDLM* against
MDLM trained on for the same steps, quality against denoiser calls, and calibration with atomic vs smoothed
endpoints. One resumable protocol per corpus:

    python repro.py --preset cpu                          # shakespeare_char, ~80 min on 2 CPU cores
    python repro.py --preset cpu --corpora speech --text a.txt,b.txt   # a GPT-2-tokenised corpus
    python repro.py --preset gpu --launcher "torchrun --standalone --nproc_per_node=8"

Stages (each skipped when finished; an interrupted training stage restarts from its checkpoint, the sweep from
its last finished cell):
  1. data      prepare the corpus
  2. train     mdlm_pre: MDLM from scratch (gpu preset: the published MDLM OWT weights instead)
               mdlm_ft:  mdlm_pre trained on as MDLM            } the same steps, batch, learning rate and
               dsl_ft:   mdlm_pre converted to DSL, fine-tuned  } schedule: the comparison at matched compute
               dsl_atomic: as dsl_ft with atomic endpoints (paper Fig. 4/5)
               ar:       an AR model of the same size, pre + ft steps: the AR row, the judge and the featurizer
  3. bounds    the three NLL bounds of every model; ECE of the DSL models at several SNRs
  4. sweep     every sampler on every model that can run it, at every step count (sweep.py)
  5. report    results/<corpus>/README.md: tables, figures, the verdict on the ~4x claim, real samples
"""
import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

import data
import evaluate
import figures
import probe
import sample
import sweep

HERE = os.path.dirname(os.path.abspath(__file__))
# the ReMDM-style rules both diffusion models run; DSL adds the rules only its denoiser can serve
BASELINE = ['mdlm', 'remdm-cap', 'remdm-loop', 'budget']
DSL_EXTRA = ['uncertainty', 'roar', 'hybrid']
CORPORA = dict(char=dict(dataset='shakespeare_char', tokenizer='char'),
               speech=dict(dataset='', tokenizer='gpt2'),       # local text files (--text), GPT-2 BPE
               owt=dict(dataset='openwebtext', tokenizer='gpt2'))
PRESETS = dict(
    # 80 min on 2 CPU cores for the character corpus (measured stage by stage in results/char/README.md)
    cpu=dict(corpora='char', preset='mini', block_size=64, batch_size=32, pre_iters=2000, ft_iters=1000,
             lr=1e-3, ft_lr=3e-4, warmup_iters=100, num_samples=256, steps='8,16,32,64,128', judge='ar',
             commit_fracs='0.33,0.1', init_from='', eval_windows=64, eval_grid=64),
    # the paper's setting (DESIGN.md §1): the published MDLM OWT model as mdlm_pre, ~10k steps at lr 3e-4 and batch
    # ~40 per GPU (per process here), L = 1024, N = 5000, gpt2-large as judge and featurizer
    gpu=dict(corpora='owt', preset='small', block_size=1024, batch_size=40, pre_iters=0, ft_iters=10000,
             lr=3e-4, ft_lr=3e-4, warmup_iters=500, num_samples=5000, steps='16,32,64,128,256,512,1024',
             judge='gpt2-large', commit_fracs='0.33', init_from='kuleshov-group/mdlm-owt', eval_windows=256, eval_grid=64),
    # the end-to-end test: tiny models, a few steps
    toy=dict(corpora='char', preset='tiny', block_size=32, batch_size=8, pre_iters=20, ft_iters=10,
             lr=1e-3, ft_lr=1e-3, warmup_iters=5, num_samples=8, steps='4,8', judge='ar', commit_fracs='',
             init_from='', eval_windows=8, eval_grid=8, samplers='mdlm,remdm-loop,uncertainty'),
)


def log(msg):
    print(f"[repro {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_json(path, default=None):
    return json.load(open(path)) if os.path.isfile(path) else default


def stage(res, name, fn):
    """Run fn unless res/stages.json says it finished; record its wall time (a resumed stage adds up)."""
    path = os.path.join(res, 'stages.json')
    done = read_json(path, {})
    if done.get(name, {}).get('done'):
        log(f"{name}: done earlier ({done[name]['seconds']:.0f} s), skipped")
        return
    t0 = time.time()
    fn()
    done = read_json(path, {})
    done[name] = dict(done=True, seconds=round(done.get(name, {}).get('seconds', 0) + time.time() - t0, 1))
    evaluate.write_atomic(path, json.dumps(done, indent=1))


def train(out_dir, args, max_iters, launcher, log_path):
    """train.py in a child process: a fresh start, or --init_from resume when an unfinished checkpoint exists."""
    ck = os.path.join(out_dir, 'ckpt.pt')
    if os.path.isfile(ck):
        step = torch.load(ck, map_location='cpu', weights_only=False, mmap=True)['step']
        if step >= max_iters:
            return
        log(f"{out_dir}: resuming at step {step} of {max_iters}")
        args = ['--init_from', 'resume', '--out_dir', out_dir, '--max_iters', str(max_iters)]
    cmd = shlex.split(launcher) + [os.path.join(HERE, 'train.py')] + args
    log(' '.join(shlex.quote(c) for c in cmd))
    with open(log_path, 'a') as f:  # the child's log goes to the terminal and to a file
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            f.write(line)
            f.flush()
        if p.wait():
            # the child printed its own error or traceback above: this process only says where and how to resume
            raise SystemExit(f"repro.py: training stage {out_dir} failed (exit {p.returncode}); see {log_path}. "
                             f"Rerun the same command to resume")


def run_corpus(corpus, P, res, runs, text='', launcher=''):
    os.makedirs(res, exist_ok=True)
    c = CORPORA[corpus]
    if corpus == 'speech' and not text:
        raise ValueError("--corpora speech needs --text: comma-separated local .txt files (GPT-2-tokenised)")
    # --text: the speech corpus's files, or local files instead of a download (char, owt)
    dd, meta = data.ensure(c['dataset'] or 'shakespeare_char', text, c['tokenizer'])
    log(f"{corpus}: data {dd} ({meta['tokenizer']}, V = {meta['vocab_size']})")
    launcher = launcher or shlex.quote(sys.executable)
    d = {k: os.path.join(runs, k) for k in ('mdlm_pre', 'mdlm_ft', 'dsl_ft', 'dsl_atomic', 'ar')}
    ck = {k: os.path.join(v, 'ckpt.pt') for k, v in d.items()}
    common = ['--data_dir', dd, '--preset', P['preset'], '--block_size', str(P['block_size']),
              '--batch_size', str(P['batch_size']), '--eval_windows', str(P['eval_windows']),
              '--eval_grid', str(P['eval_grid']),
              '--eval_interval', '500', '--ckpt_interval', '250', '--log_interval', '100']
    pre = P['init_from'] or ck['mdlm_pre']  # gpu: the published weights are the pre-training
    ft = ['--init_from', pre, '--lr', str(P['ft_lr']), '--warmup_iters', str(P['warmup_iters']),
          '--max_iters', str(P['ft_iters'])]
    jobs = [('ar', ['--objective', 'ar', '--lr', str(P['lr']), '--warmup_iters', str(P['warmup_iters']),
                    '--max_iters', str(P['pre_iters'] + P['ft_iters'])], P['pre_iters'] + P['ft_iters']),
            ('mdlm_ft', ['--objective', 'mdlm'] + ft, P['ft_iters']),
            ('dsl_ft', ['--objective', 'dsl', '--smooth_endpoints', 'True'] + ft, P['ft_iters']),
            ('dsl_atomic', ['--objective', 'dsl', '--smooth_endpoints', 'False'] + ft, P['ft_iters'])]
    if not P['init_from']:
        jobs.insert(0, ('mdlm_pre', ['--objective', 'mdlm', '--lr', str(P['lr']), '--warmup_iters',
                                     str(P['warmup_iters']), '--max_iters', str(P['pre_iters'])], P['pre_iters']))
    if P['judge'] != 'ar':
        jobs = [j for j in jobs if j[0] != 'ar']
    for name, args, iters in jobs:
        stage(res, f'train_{name}', lambda: train(d[name], common + args + ['--out_dir', d[name]], iters,
                                                  launcher, os.path.join(res, f'train_{name}.log')))
    models = [k for k in ('mdlm_pre', 'mdlm_ft', 'dsl_ft', 'dsl_atomic', 'ar') if os.path.isfile(ck[k])]

    def bounds():
        out = {}
        for k in models:
            log(f"bounds of {k}")
            out[k] = probe.bounds(ck[k], dd, P['eval_windows'], P['block_size'], grid=P['eval_grid'])
        evaluate.write_atomic(os.path.join(res, 'bounds.json'), json.dumps(out, indent=1))
        cal = {}
        for k in ('dsl_ft', 'dsl_atomic'):
            log(f"calibration of {k}")
            rows = probe.calibration(ck[k], dd, None, P['eval_windows'], P['block_size'],
                                        out=os.path.join(res, f'reliability_{k}.png'))
            cal[k] = [{kk: v for kk, v in r.items() if kk != 'bins'} for r in rows]
        evaluate.write_atomic(os.path.join(res, 'calibration.json'), json.dumps(cal, indent=1))
    stage(res, 'bounds', bounds)

    gmax = torch.load(ck['dsl_ft'], map_location='cpu', weights_only=False, mmap=True)['model_config']['gamma_max']
    commit = [f"uncertainty:gamma_commit={float(f) * gmax:g}" for f in P['commit_fracs'].split(',') if f]
    keep = lambda ss: [s for s in ss if not P.get('samplers') or s.split(':')[0] in P['samplers'].split(',')]
    samplers = {ck['mdlm_ft']: keep(BASELINE), ck['dsl_ft']: keep(BASELINE + DSL_EXTRA + commit),
                ck['dsl_atomic']: keep(['remdm-loop', 'uncertainty', 'hybrid'])}
    steps = [int(s) for s in P['steps'].split(',')]
    judge = ck['ar'] if P['judge'] == 'ar' else P['judge']
    stage(res, 'sweep', lambda: sweep.sweep(list(samplers), samplers, steps, P['num_samples'], judge, dd,
                                            out_dir=res, L=P['block_size']))
    trajectories(res, ck, min(steps, key=lambda T: abs(T - 32)), dd)
    report(corpus, P, res, steps)


def trajectories(res, ck, T, dd):
    """The refinement of one real sample (seed 0): DSL with uncertainty-guided remasking, MDLM with ReMDM-loop."""
    dec = data.get_tokenizer(data.load_meta(dd))[1]
    for name, k, s in (('dsl_uncertainty', 'dsl_ft', 'uncertainty'), ('mdlm_loop', 'mdlm_ft', 'remdm-loop')):
        m, _, cfg = evaluate.load(ck[k])
        _, info = sample.generate(m, 1, cfg['block_size'], T, s, 0.9, generator=torch.Generator().manual_seed(0),
                                  trajectory=True)
        figures.trajectory([t[0] for t in info['trajectory']], m.mask_id, lambda i: dec([i]),
                           os.path.join(res, f'trajectory_{name}.png'), f"{k}, {s}, T = {T}, seed 0")


# ---------------------------------------------------------------------------------------------
# Report: the verdict is computed from results.csv, never written by hand

def rows_of(res):
    with open(os.path.join(res, 'results.csv')) as f:
        return list(csv.DictReader(f))


ENTROPY_FLOOR = 0.9  # a cell below 90% of the data's entropy buys its generative NLL with repetition


def best(rows, model, samplers, T, by='mauve', floor=0.0):
    """The best cell among samplers on model at T steps: highest MAUVE, or lowest generative NLL among cells whose
    entropy is >= floor (None if there is none)."""
    cells = [r for r in rows if r['model'] == model and r['sampler'] in samplers and int(r['steps']) == T
             and float(r['entropy']) >= floor]
    if by == 'mauve':
        return max(cells, key=lambda r: float(r['mauve']), default=None)
    return min(cells, key=lambda r: float(r['gen_nll']), default=None)


def models_of(rows):
    mdlm = next(r['model'] for r in rows if r['model'].endswith(':mdlm_ft'))
    dsl = next(r['model'] for r in rows if r['model'].endswith(':dsl_ft'))
    return mdlm, dsl


def verdict(rows, steps, ref_entropy):
    """Per T: the DSL model's best cell at T (over all its samplers) against the MDLM model's best MDLM+ReMDM
    cell at T and at 4T, by MAUVE (the paper's metric) and by generative NLL under the judge at an entropy of at
    least ENTROPY_FLOOR x the data's. Returns (markdown lines, one-sentence summary, comparisons)."""
    mdlm, dsl = models_of(rows)
    dsl_rules = sorted({r['sampler'] for r in rows if r['model'] == dsl})
    mdlm_rules = sorted({r['sampler'] for r in rows if r['model'] == mdlm} & set(BASELINE))
    floor = ENTROPY_FLOOR * ref_entropy
    cell = lambda r, col: (f"{float(r[col]):.3f} ({r['sampler']}, H {float(r['entropy']):.2f}, "
                           f"NFE {float(r['nfe']):.3g})" if r else 'none')
    lines = ['| DSL T | MDLM+ReMDM T | MAUVE, DSL | MAUVE, MDLM+ReMDM | DSL >=? | gen NLL, DSL | '
             'gen NLL, MDLM+ReMDM | DSL <=? |', '|' + '---|' * 8]
    out = []
    for T in steps:
        for k in (1, 4):
            if k * T not in steps:
                continue
            am, bm = best(rows, dsl, dsl_rules, T), best(rows, mdlm, BASELINE, k * T)
            an, bn = best(rows, dsl, dsl_rules, T, 'nll', floor), best(rows, mdlm, BASELINE, k * T, 'nll', floor)
            v = dict(T=T, vs=k * T, mauve=bool(am and bm and float(am['mauve']) >= float(bm['mauve'])),
                     nll=bool(an and bn and float(an['gen_nll']) <= float(bn['gen_nll'])))
            out.append(v)
            lines.append(f"| {T} | {k * T} | {cell(am, 'mauve')} | {cell(bm, 'mauve')} | {'yes' if v['mauve'] else 'no'} "
                         f"| {cell(an, 'gen_nll')} | {cell(bn, 'gen_nll')} | {'yes' if v['nll'] else 'no'} |")
    count = lambda k, key: f"{sum(v[key] for v in out if v['vs'] == k * v['T'])} of {sum(v['vs'] == k * v['T'] for v in out)}"
    say = (f"DSL at T steps matched or beat the best MDLM+ReMDM cell at 4T in {count(4, 'mauve')} comparisons by "
           f"MAUVE and {count(4, 'nll')} by generative NLL; at equal T in {count(1, 'mauve')} by MAUVE and "
           f"{count(1, 'nll')} by generative NLL. Generative NLL is compared only among cells whose entropy is at "
           f"least {ENTROPY_FLOOR:g} x the data's ({ref_entropy:.2f}), so repetition cannot win. The DSL model picks "
           f"its best of {len(dsl_rules)} samplers, MDLM its best of {len(mdlm_rules)}.")
    return lines, say, out


def same_rule(rows, steps):
    """ReMDM's rules on both models at equal T: what fine-tuning with DSL did to the same sampler."""
    mdlm, dsl = models_of(rows)
    lines = ['| rule | T | gen NLL, MDLM | gen NLL, DSL | entropy, MDLM | entropy, DSL | MAUVE, MDLM | MAUVE, DSL |',
             '|' + '---|' * 8]
    for s in BASELINE:
        for T in steps:
            a, b = best(rows, mdlm, [s], T, 'nll'), best(rows, dsl, [s], T, 'nll')
            if a and b:
                lines.append(f"| {s} | {T} | " + ' | '.join(f"{float(r[c]):.3f}" for c in ('gen_nll', 'entropy', 'mauve')
                                                             for r in (a, b)) + ' |')
    return lines


def report(corpus, P, res, steps):
    rows = rows_of(res)
    ref = next(r for r in rows if r['model'] == 'reference')
    st = read_json(os.path.join(res, 'stages.json'), {})
    bd = read_json(os.path.join(res, 'bounds.json'), {})
    cal = read_json(os.path.join(res, 'calibration.json'), {})
    hw = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}" + \
        (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else '')
    md = [f"# Results at small scale: {corpus}", '',
          f"Preset `{P['name']}`: {P['preset']} models, L = {P['block_size']}, batch {P['batch_size']}, "
          f"pre-training {P['pre_iters'] or P['init_from']} steps, then {P['ft_iters']} steps for each "
          f"continuation (lr {P['ft_lr']}, warmup {P['warmup_iters']}), N = {P['num_samples']} samples per cell, "
          f"top-p 0.9. Hardware: {hw}.", '',
          '| stage | wall time |', '|---|---|']
    md += [f"| {k} | {v['seconds'] / 60:.1f} min |" for k, v in st.items()]
    md += ['', '## NLL bounds (nats/token, held-out windows)', '', '| model | bound | nats | ppl |', '|---|---|---|---|']
    md += [f"| {k} | {b} | {r['nats']:.4f} | {r['ppl']:.2f} |" for k, v in bd.items() for b, r in v.items()]
    md += ['', '## Calibration: atomic vs smoothed endpoints (ECE, 15 bins)', '',
           '| model | SNR gamma | ECE | accuracy | confidence |', '|---|---|---|---|---|']
    md += [f"| {k} | {r['value']:g} | {r['ece']:.4f} | {r['accuracy']:.3f} | {r['confidence']:.3f} |"
           for k, v in cal.items() for r in v]
    md += ['', '![reliability, smoothed](reliability_dsl_ft.png) ![reliability, atomic](reliability_dsl_atomic.png)',
           '', '## Quality against denoiser calls', '', '![sweep](results.png)', '',
           'Every cell: [results.md](results.md) and results.csv.', '', '## Verdict: DSL at T vs MDLM+ReMDM at T and 4T', '']
    lines, say, _ = verdict(rows, steps, float(ref['entropy']))
    md += lines + ['', say, '', "## ReMDM's rules on both models (same rule, same T)", ''] + same_rule(rows, steps)
    md += ['', '## One sample being refined (rows = denoiser calls)', '',
           '![DSL, uncertainty](trajectory_dsl_uncertainty.png)', '', '![MDLM, ReMDM-loop](trajectory_mdlm_loop.png)']
    md += ['', '## Samples (the first of each cell, T = 64 or the nearest)', '']
    seen = {}
    if os.path.isfile(os.path.join(res, 'samples.jsonl')):
        for line in open(os.path.join(res, 'samples.jsonl')):
            r = json.loads(line)
            seen[(r['model'], r['sampler'], int(r['steps']))] = r['texts']
    T64 = min(steps, key=lambda T: abs(T - 64))
    for (m, s, T), texts in sorted(seen.items()):
        if T == T64 and s in ('remdm-loop', 'uncertainty', 'hybrid') and not m.endswith('dsl_atomic') or \
                s in ('ar', 'data'):
            md += [f"**{m} {s}, T = {T}**", '', '```', texts[0].strip()[:600], '```', '']
    evaluate.write_atomic(os.path.join(res, 'README.md'), '\n'.join(md) + '\n')
    log(f"wrote {os.path.join(res, 'README.md')}")
    print('\n'.join(lines + ['', say]))


def repro(preset='cpu', corpora=None, text='', launcher='', results='results', runs='out/repro', **overrides):
    """The whole protocol for each corpus of the preset (overrides: any PRESETS key)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': choose {', '.join(PRESETS)}")
    P = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}, 'name': preset}
    for corpus in (corpora or P['corpora']).split(','):
        if corpus not in CORPORA:
            raise ValueError(f"unknown corpus '{corpus}': choose {', '.join(CORPORA)}")
        run_corpus(corpus, P, os.path.join(results, corpus), os.path.join(runs, corpus), text, launcher)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="the paper's protocol at small scale: train, bounds, sweep, verdict")
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    ap.add_argument('--preset', default='cpu', help=f"{' | '.join(PRESETS)} (cpu: ~80 min on 2 cores)")
    ap.add_argument('--corpora', default='', help="comma-separated: char, speech (needs --text), owt; '' = the preset's")
    ap.add_argument('--text', default='', help='the speech corpus: comma-separated local .txt files, GPT-2 BPE')
    ap.add_argument('--launcher', default='', help='how to start train.py, e.g. "torchrun --nproc_per_node=8"')
    ap.add_argument('--results', default='results', help='tables, figures, README per corpus')
    ap.add_argument('--runs', default='out/repro', help='checkpoints and sweep state')
    for k in ('pre_iters', 'ft_iters', 'num_samples', 'block_size', 'batch_size'):
        ap.add_argument(f'--{k}', type=int, default=None, help="default: the preset's")
    ap.add_argument('--steps', default=None, help="comma-separated; default: the preset's")
    ap.add_argument('--ft_lr', type=float, default=None, help="both continuations' learning rate; default: the preset's")
    return ap.parse_args(argv)


def die(msg):
    print(f"repro.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    a = parse_args(argv)
    try:
        repro(a.preset, a.corpora, a.text, a.launcher, a.results, a.runs, pre_iters=a.pre_iters, ft_iters=a.ft_iters,
              num_samples=a.num_samples, block_size=a.block_size, batch_size=a.batch_size, steps=a.steps,
              ft_lr=a.ft_lr)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:  # user errors: one line; bugs keep tracebacks
        die(str(e.args[0]) if e.args else type(e).__name__)


if __name__ == '__main__':
    main()
