"""
The paper's claim at small scale, end to end (Wu et al., arXiv 2602.16169, §5): DSL *fine-tuned from MDLM*
against MDLM trained on from the same weights, generative NLL at matched diversity against real denoiser
calls, and calibration with atomic vs smoothed endpoints. One resumable protocol per corpus:

    python repro.py --preset cpu                          # shakespeare_char, ~100 min on 2 CPU cores
    python repro.py --preset cpu --recipe '' --results r  # the same, its own recipe ablation (char_recipe)
    python repro.py --preset cpu --corpora speech --text a.txt,b.txt   # a GPT-2-tokenised corpus
    python repro.py --preset cpu --corpora speech-bpe --text a.txt,b.txt   # word pieces: bpe:2048, L = 128
    python repro.py --preset gpu --launcher "torchrun --standalone --nproc_per_node=8"

Stages (each skipped when finished; an interrupted training stage restarts from its checkpoint, a sweep from
its last finished cell):
  1. data      prepare the corpus
  2. train     mdlm_pre: MDLM from scratch (gpu preset: the published MDLM OWT weights instead); ar: an AR
               model of the same size (the AR row, the judge and the featurizer)
  3. tune      the recipe ablation: every DSL and MDLM variant (DSL_GRID, MDLM_GRID) trained tune_iters steps
               from mdlm_pre, sampled on seed 1, scored by one criterion fixed in advance (choose)
  4. train     mdlm_ft, dsl_ft: each arm's winner continued until its validation NELBO stops improving
               (--patience); dsl_atomic: the DSL recipe with atomic endpoints, as many steps (paper Fig. 4/5)
  5. bounds    the NLL bounds of every model; ECE of the DSL models at several SNRs; detect: error-detection
               AUROC of uniform and plausible corruptions (one proposer for every model)
  6. sweep     every compared rule on both models at several T and top-p values, seed 0 (sweep.py)
  7. report    results/<corpus>/README.md: the verdict at matched entropy with bootstrap intervals, tables,
               figures, real samples; every number computed from the files the stages wrote
"""

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time

import torch

import checkpoint_io
import compare
import data
import evaluate
import figures
import probe
import sample
import sweep

HERE = os.path.dirname(os.path.abspath(__file__))
# a corpus may set preset keys of its own, for every preset or under a preset's name (a command-line override
# wins) char, cpu: the recipe ablation of results/char_recipe (ten 500-step runs, 2 Dec) is reused, so that
# the budget goes to continuations run to a plateau of the NELBO (min_delta over patience evals from step
# patience_from)
CORPORA = {
    'char': dict(
        dataset='shakespeare_char',
        tokenizer='char',
        cpu=dict(recipe=os.path.join(HERE, 'results', 'char_recipe', 'tuning.json')),
    ),
    'speech': dict(dataset='', tokenizer='gpt2'),  # local text files (--text), GPT-2 BPE
    # word pieces at near-character cost: a byte-level BPE of 2048 tokens trained on the training split. Here
    # a train.py step takes 160 ms (MDLM) and 420-434 ms (DSL + ROAR), a DSL eval 11 s (results/speed/
    # bpe2048_train_pilot.txt): shorter stages and N = 128 keep the cpu preset at 100 min
    # (results/speech_bpe_plateau)
    'speech-bpe': dict(
        dataset='',
        tokenizer='bpe:2048',
        block_size=128,
        batch_size=16,
        # the protocol results/speech_bpe_plateau ran: DSL stopped on its diffusion bound
        cpu=dict(
            pre_iters=4000,
            ar_iters=3000,
            tune_iters=300,
            ft_iters=2000,
            num_samples=128,
            stop_bound='own',
            min_delta=0.0,
            patience_from=0,
        ),
    ),
    'owt': dict(dataset='openwebtext', tokenizer='gpt2'),
}
# The recipe ablation (issue: DSL2's lever is the ROAR weight, its fine-tuning EMA starts at the loaded
# weights): DSL around a base recipe, one knob changed at a time (lr 'alt' = the preset's alt_lr); MDLM over
# learning rate and EMA mode. Every variant trains tune_iters steps from the same pre-train; the winner is
# continued.
DSL_BASE = dict(roar_weight=1.44, p_end=0.25, ema_warmup=False)
DSL_GRID = [
    {},
    dict(roar_weight=0.0),
    dict(roar_weight=0.5),
    dict(p_end=0.5),
    dict(ema_warmup=True),
    dict(lr='alt'),
]
MDLM_GRID = [
    dict(ema_warmup=False),
    dict(ema_warmup=False, lr='alt'),
    dict(ema_warmup=True),
    dict(ema_warmup=True, lr='alt'),
]
PRESETS = dict(
    # ~100 min on 2 CPU cores for the character corpus (measured stage by stage in
    # results/char_plateau/README.md)
    cpu=dict(
        corpora='char',
        preset='mini',
        block_size=64,
        batch_size=32,
        pre_iters=6000,
        ar_iters=4000,
        lr=1e-3,
        ft_lr=1e-3,
        alt_lr=3e-4,
        warmup_iters=100,
        tune_iters=500,
        ft_iters=5000,
        ft_eval=100,
        patience=5,
        stop_bound='mdlm',
        min_delta=0.005,
        patience_from=1000,
        recipe='',
        dsl_grid=DSL_GRID,
        mdlm_grid=MDLM_GRID,
        tune_T=32,
        tune_n=128,
        tune_top_p='0.9,1.0',
        num_samples=256,
        steps='8,16,32,64,128',
        dsl_steps='8,16,32',
        top_ps='0.8,0.9,0.95,1.0',
        judge='ar',
        init_from='',
        eval_windows=64,
        val_windows=32,
        eval_grid=64,
        bootstrap=1000,
        compile=True,
    ),
    # the paper's setting (Wu et al. 2026 §5; docs/method.md §18): the published MDLM OWT model as mdlm_pre,
    # ~10k steps at lr 3e-4 and batch ~40 per GPU (per process here), L = 1024, N = 5000, gpt2-large as judge
    # and featurizer; no tuning runs
    gpu=dict(
        corpora='owt',
        preset='small',
        block_size=1024,
        batch_size=40,
        pre_iters=0,
        ar_iters=0,
        lr=3e-4,
        ft_lr=3e-4,
        alt_lr=1e-4,
        warmup_iters=500,
        tune_iters=0,
        ft_iters=10000,
        ft_eval=500,
        patience=0,
        stop_bound='mdlm',
        min_delta=0.0,
        patience_from=0,
        recipe='',
        dsl_grid=[{}],
        mdlm_grid=[{}],
        tune_T=0,
        tune_n=0,
        tune_top_p='',
        num_samples=5000,
        steps='16,32,64,128,256,512,1024',
        dsl_steps='16,32,64,128,256',
        top_ps='0.8,0.9,0.95,1.0',
        judge='gpt2-large',
        init_from='kuleshov-group/mdlm-owt',
        eval_windows=256,
        val_windows=256,
        eval_grid=64,
        bootstrap=1000,
        compile=True,
    ),
    # the end-to-end test: tiny models, a few steps, two DSL variants and one MDLM variant
    toy=dict(
        corpora='char',
        preset='tiny',
        block_size=32,
        batch_size=8,
        pre_iters=20,
        ar_iters=30,
        lr=1e-3,
        ft_lr=1e-3,
        alt_lr=3e-4,
        warmup_iters=5,
        tune_iters=4,
        ft_iters=10,
        ft_eval=2,
        patience=2,
        stop_bound='mdlm',
        min_delta=0.0,
        patience_from=0,
        recipe='',
        dsl_grid=[{}, dict(roar_weight=0.0)],
        mdlm_grid=[{}],
        tune_T=4,
        tune_n=8,
        tune_top_p='0.9,1.0',
        num_samples=8,
        steps='2,8',
        dsl_steps='2,8',
        top_ps='0.9,1.0',
        judge='ar',
        init_from='',
        eval_windows=8,
        val_windows=8,
        eval_grid=8,
        bootstrap=50,
        compile=False,
    ),
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


def train(out_dir, args, max_iters, launcher, log_path, resume_args=()):
    """train.py in a child process: a fresh start, or --init_from resume (with resume_args) when an unfinished
    checkpoint exists. A run that stopped early (--patience: its stored max_iters is its last step) is
    finished."""
    ck = os.path.join(out_dir, 'ckpt.pt')
    if os.path.isfile(ck):
        c = checkpoint_io.load(ck, mmap=True)
        stored = c.get('config', {})
        if (
            c['step'] >= max_iters
            or stored.get('patience')
            and c['step'] >= stored.get('max_iters', max_iters)
        ):
            return
        log(f"{out_dir}: resuming at step {c['step']} of {max_iters}")
        args = ['--init_from', 'resume', '--out_dir', out_dir, '--max_iters', str(max_iters)] + list(
            resume_args
        )
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
            # the child printed its own error or traceback above: this process only says where and how to
            # resume
            raise SystemExit(
                f"repro.py: training stage {out_dir} failed (exit {p.returncode}); see {log_path}. "
                f"Rerun the same command to resume"
            )


def variant(kind, knobs, P):
    """(name, train.py args) of one recipe variant: DSL_BASE (DSL) plus knobs, at the preset's ft_lr or
    alt_lr."""
    knobs = {**(DSL_BASE if kind == 'dsl' else {}), **knobs}
    lr = P['alt_lr'] if knobs.pop('lr', None) == 'alt' else P['ft_lr']
    name = f"{kind}_lr{lr:g}" + ''.join(
        f"_{k}{v:g}" if not isinstance(v, bool) else f"_{k}{int(v)}" for k, v in sorted(knobs.items())
    )
    args = ['--objective', kind, '--lr', str(lr)] + [a for k, v in knobs.items() for a in (f'--{k}', str(v))]
    return name, args + (['--smooth_endpoints', 'True'] if kind == 'dsl' else [])


def train_args(P, dd):
    """train.py arguments every run of a protocol shares. The training loop's evals follow a trend on fixed
    windows: val_windows (results/speed/README.md); bounds use eval_windows."""
    return [
        '--data_dir',
        dd,
        '--preset',
        P['preset'],
        '--block_size',
        str(P['block_size']),
        '--batch_size',
        str(P['batch_size']),
        '--eval_windows',
        str(P['val_windows']),
        '--eval_grid',
        str(P['eval_grid']),
        '--ckpt_interval',
        '250',
        '--log_interval',
        '100',
        '--compile',
        str(P['compile']),
    ]


def scratch_args(P, obj, iters):
    """A run from scratch (the pre-train, the AR judge) at the preset's learning rate."""
    return [
        '--objective',
        obj,
        '--lr',
        str(P['lr']),
        '--warmup_iters',
        str(P['warmup_iters']),
        '--max_iters',
        str(iters),
        '--eval_interval',
        '500',
    ]


def run_corpus(corpus, P, res, runs, text='', launcher=''):
    os.makedirs(res, exist_ok=True)
    c = CORPORA[corpus]
    if corpus.startswith('speech') and not text:
        raise ValueError(f"--corpora {corpus} needs --text: comma-separated local .txt files")
    recipe = P['recipe']  # an earlier run's tuning.json: its winners are continued, no tuning runs here
    tune = P['tune_iters'] and not recipe
    if recipe and not os.path.isfile(recipe):
        raise FileNotFoundError(f"--recipe {recipe}: no such file (a tuning.json that repro.py wrote)")
    # --text: the speech corpus's files, or local files instead of a download (char, owt)
    dd, meta = data.ensure(c['dataset'] or 'shakespeare_char', text, P.get('tokenizer') or c['tokenizer'])
    log(f"{corpus}: data {dd} ({meta['tokenizer']}, V = {meta['vocab_size']})")
    launcher = launcher or shlex.quote(sys.executable)
    d = {k: os.path.join(runs, k) for k in ('mdlm_pre', 'mdlm_ft', 'dsl_ft', 'dsl_atomic', 'ar')}
    ck = {k: os.path.join(v, 'ckpt.pt') for k, v in d.items()}
    common = train_args(P, dd)
    scratch = lambda obj, iters: scratch_args(P, obj, iters)
    jobs = [] if P['init_from'] else [('mdlm_pre', scratch('mdlm', P['pre_iters']), P['pre_iters'])]
    jobs += [('ar', scratch('ar', P['ar_iters']), P['ar_iters'])] if P['judge'] == 'ar' else []
    for name, args, iters in jobs:
        stage(
            res,
            f'train_{name}',
            lambda: train(
                d[name],
                common + args + ['--out_dir', d[name]],
                iters,
                launcher,
                os.path.join(res, f'train_{name}.log'),
            ),
        )
    pre = P['init_from'] or ck['mdlm_pre']  # gpu: the published weights are the pre-training
    # every continuation starts from the pre-train; the tuning runs record the MDLM NELBO (one yardstick)
    ft = [
        '--init_from',
        pre,
        '--warmup_iters',
        str(P['warmup_iters']),
        '--eval_bound',
        'mdlm',
        '--eval_interval',
        str(P['ft_eval']),
    ]
    # the winners run until a val bound stops improving by min_delta for patience evals (counted from step
    # patience_from: an EMA that starts at the loaded weights lags). stop_bound 'mdlm': both on the NELBO, the
    # bound of the endpoint states every discrete sampler visits; 'own': DSL on its diffusion bound
    stop = [
        '--patience',
        str(P['patience']),
        '--min_delta',
        str(P['min_delta']),
        '--patience_from',
        str(P['patience_from']),
    ]
    own = dict(
        mdlm=['--eval_bound', 'mdlm'] + stop,
        dsl=['--eval_bound', 'mdlm' if P['stop_bound'] == 'mdlm' else ''] + stop,
    )
    judge = ck['ar'] if P['judge'] == 'ar' else P['judge']
    chosen = read_json(recipe or os.path.join(res, 'tuning.json'), {})
    grids = dict(
        mdlm=[variant('mdlm', k, P) for k in P['mdlm_grid']],
        dsl=[variant('dsl', k, P) for k in P['dsl_grid']],
    )
    if tune:  # 1. the recipe ablation: equal, short runs; 2. its winner is continued
        tdir = lambda name: os.path.join(runs, 'tune', name)
        os.makedirs(os.path.join(res, 'tuning'), exist_ok=True)
        for kind, vs in grids.items():
            for name, args in vs:
                stage(
                    res,
                    f'tune_{name}',
                    lambda: train(
                        tdir(name),
                        common + ft + args + ['--max_iters', str(P['tune_iters']), '--out_dir', tdir(name)],
                        P['tune_iters'],
                        launcher,
                        os.path.join(res, 'tuning', f'train_{name}.log'),
                    ),
                )
        samplers = {
            os.path.join(tdir(n), 'ckpt.pt'): [
                f"{'hybrid' if kind == 'dsl' else 'remdm-loop'}:top_p={P['tune_top_p']}"
            ]
            for kind, vs in grids.items()
            for n, _ in vs
        }
        stage(
            res,
            'tune_sweep',
            lambda: sweep.sweep(
                list(samplers),
                samplers,
                [P['tune_T']],
                P['tune_n'],
                judge,
                dd,
                out_dir=os.path.join(res, 'tuning'),
                L=P['block_size'],
                seed=1,
                compile=P['compile'],
            ),
        )
        if not chosen:
            rows = compare.rows_of(os.path.join(res, 'tuning'))
            ref = float(next(r for r in rows if r['model'] == 'reference')['entropy'])
            for kind, vs in grids.items():
                win, H, at = compare.choose(
                    rows,
                    [f"{kind}:{n}" for n, _ in vs],
                    'hybrid' if kind == 'dsl' else 'remdm-loop',
                    P['tune_T'],
                    ref,
                )
                chosen[kind] = dict(
                    winner=win.split(':')[1],
                    H=H,
                    gen_nll=at,
                    ref_entropy=ref,
                    args=dict(vs)[win.split(':')[1]],
                )
            evaluate.write_atomic(os.path.join(res, 'tuning.json'), json.dumps(chosen, indent=1))
    elif not recipe:
        chosen = {kind: dict(winner=vs[0][0], args=vs[0][1]) for kind, vs in grids.items()}
    for k, kind in (('mdlm_ft', 'mdlm'), ('dsl_ft', 'dsl')):
        src = os.path.join(runs, 'tune', chosen[kind]['winner'], 'ckpt.pt')
        if tune and not os.path.isfile(ck[k]):  # the winner's run goes on: the same run, continued
            os.makedirs(d[k], exist_ok=True)
            shutil.copyfile(src, ck[k])
        stage(
            res,
            f'train_{k}',
            lambda: train(
                d[k],
                common
                + ft
                + chosen[kind]['args']
                + own[kind]
                + ['--max_iters', str(P['ft_iters']), '--out_dir', d[k]],
                P['ft_iters'],
                launcher,
                os.path.join(res, f'train_{k}.log'),
                own[kind],
            ),
        )
    # atomic endpoints (paper Fig. 4/5): the chosen DSL recipe, as many steps as dsl_ft took (no patience:
    # fewer evals)
    steps_dsl = checkpoint_io.load(ck['dsl_ft'], mmap=True)['step']
    stage(
        res,
        'train_dsl_atomic',
        lambda: train(
            d['dsl_atomic'],
            common
            + ft
            + chosen['dsl']['args']
            + [
                '--eval_bound',
                own['dsl'][1],
                '--eval_interval',
                '500',
                '--smooth_endpoints',
                'False',
                '--max_iters',
                str(steps_dsl),
                '--out_dir',
                d['dsl_atomic'],
            ],
            steps_dsl,
            launcher,
            os.path.join(res, 'train_dsl_atomic.log'),
        ),
    )
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
            rows = probe.calibration(
                ck[k],
                dd,
                None,
                P['eval_windows'],
                P['block_size'],
                out=os.path.join(res, f'reliability_{k}.png'),
            )
            cal[k] = [{kk: v for kk, v in r.items() if kk != 'bins'} for r in rows]
        evaluate.write_atomic(os.path.join(res, 'calibration.json'), json.dumps(cal, indent=1))

    stage(res, 'bounds', bounds)

    # can a model find wrong visible tokens? the same corruptions for every model (one proposer)
    def detect():
        prop = ck['mdlm_pre'] if os.path.isfile(ck['mdlm_pre']) else ck['mdlm_ft']
        out = {}
        for k in ('mdlm_ft', 'dsl_ft', 'dsl_atomic'):
            log(f"error detection of {k}")
            out[k] = probe.detect(ck[k], dd, P['eval_windows'], P['block_size'], proposer=prop)
        evaluate.write_atomic(
            os.path.join(res, 'detect.json'), json.dumps(dict(proposer=prop, rows=out), indent=1)
        )

    stage(res, 'detect', detect)

    # the test sweep (seed 0): every compared rule over the top-p frontier; DSL's T up to dsl_steps (its 4T
    # comparison partners are MDLM's larger T); the atomic model at top-p 0.9 only, for the record
    fr = lambda ss: [f"{s}:top_p={P['top_ps']}" for s in ss]
    steps = [int(s) for s in P['steps'].split(',')]
    dsl_steps = [int(s) for s in P['dsl_steps'].split(',')]
    samplers = {
        ck['mdlm_ft']: fr(compare.BASELINE),
        ck['dsl_ft']: fr(compare.BASELINE + compare.DSL_EXTRA),
        ck['dsl_atomic']: ['hybrid'],
    }
    stage(
        res,
        'sweep',
        lambda: sweep.sweep(
            list(samplers),
            samplers,
            {ck['mdlm_ft']: steps, ck['dsl_ft']: dsl_steps, ck['dsl_atomic']: dsl_steps},
            P['num_samples'],
            judge,
            dd,
            out_dir=res,
            L=P['block_size'],
            top_p=0.9,
            compile=P['compile'],
        ),
    )
    ev = {k: checkpoint_io.load(ck[k], mmap=True).get('evals', []) for k in ck}
    panels = {
        'MDLM continuation: val MDLM NELBO': {'mdlm_ft': ev['mdlm_ft']},
        'DSL continuations: val diffusion bound': {k: ev[k] for k in ('dsl_ft', 'dsl_atomic')},
    }
    if P['stop_bound'] == 'mdlm':  # one yardstick: one panel
        panels = {'continuations: val MDLM NELBO': {k: ev[k] for k in ('mdlm_ft', 'dsl_ft', 'dsl_atomic')}}
    figures.curves(
        panels,
        os.path.join(res, 'curves.png'),
        f"the stopping bound ({P['val_windows']} fixed windows, "
        f"every {P['ft_eval']} steps; --patience {P['patience']} --min_delta {P['min_delta']:g} "
        f"--patience_from {P['patience_from']})",
    )
    trajectories(res, ck, min(dsl_steps, key=lambda T: abs(T - 32)), dd)
    report(corpus, P, res, runs, steps, dsl_steps, chosen, recipe)


def trajectories(res, ck, T, dd):
    """The refinement of one real sample (seed 0): DSL with uncertainty-guided remasking, MDLM with
    ReMDM-loop."""
    dec = data.get_tokenizer(data.load_meta(dd))[1]
    for name, k, s in (('dsl_uncertainty', 'dsl_ft', 'uncertainty'), ('mdlm_loop', 'mdlm_ft', 'remdm-loop')):
        m, _, cfg = evaluate.load(ck[k])
        _, info = sample.generate(
            m, 1, cfg['block_size'], T, s, 0.9, generator=torch.Generator().manual_seed(0), trajectory=True
        )
        figures.trajectory(
            [t[0] for t in info['trajectory']],
            m.mask_id,
            lambda i: dec([i]),
            os.path.join(res, f'trajectory_{name}.png'),
            f"{k}, {s}, T = {T}, seed 0",
        )


# ---------------------------------------------------------------------------------------------
# Report: the verdict is computed from results.csv, never written by hand


def frontier_figure(rows, res, steps, ref_entropy, marks=()):
    curves = {}
    for r in rows:
        if (
            r['model'] not in ('reference',)
            and r['sampler'] != 'ar'
            and not r['model'].endswith('dsl_atomic')
        ):
            curves.setdefault(int(r['steps']), {}).setdefault(f"{r['model']} {r['sampler']}", []).append(
                (float(r['entropy']), float(r['gen_nll']), float(r['top_p']))
            )
    curves = {T: {k: v for k, v in c.items() if len(v) > 1} for T, c in curves.items() if T in steps}
    figures.frontier(
        curves,
        os.path.join(res, 'frontier.png'),
        'generative NLL against entropy over top-p '
        '(labels); x: the matched-entropy estimate of each verdict row',
        ref_entropy,
        marks,
    )


def hardware():
    """Where a result was measured, in one line."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ''
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}{gpu}"


def report(corpus, P, res, runs, steps, dsl_steps, chosen, recipe=''):
    rows = compare.rows_of(res)
    per = compare.per_sample_of(res)
    ref = next(r for r in rows if r['model'] == 'reference')
    H_data = float(ref['entropy'])
    st = read_json(os.path.join(res, 'stages.json'), {})
    bd = read_json(os.path.join(res, 'bounds.json'), {})
    cal = read_json(os.path.join(res, 'calibration.json'), {})
    hw = hardware()
    ft_steps = {
        k: checkpoint_io.load(os.path.join(runs, k, 'ckpt.pt'), mmap=True)['step']
        for k in ('mdlm_ft', 'dsl_ft')
    }
    md = [
        f"# Results at small scale: {corpus}",
        '',
        f"Preset `{P['name']}`: {P['preset']} models, L = {P['block_size']}, batch {P['batch_size']}; MDLM "
        f"pre-training {P['pre_iters'] or P['init_from']} steps; each continuation from it at most "
        f"{P['ft_iters']} steps, stopped once its validation "
        f"{'MDLM NELBO' if P['stop_bound'] == 'mdlm' else 'bound (MDLM: NELBO, DSL: diffusion bound)'} had "
        "not "
        f"improved by more than {P['min_delta']:g} nats for {P['patience']} evals "
        f"({P['patience'] * P['ft_eval']} "
        f"steps), counted from step {P['patience_from']}: MDLM {ft_steps['mdlm_ft']}, DSL "
        f"{ft_steps['dsl_ft']} steps. "
        f"N = {P['num_samples']} samples per cell, top-p {P['top_ps']}, judge: an AR model of the same size "
        f"({P['ar_iters']} steps). Hardware: {hw}.",
        '',
        '| stage | wall time |',
        '|---|---|',
    ]
    md += [f"| {k} | {v['seconds'] / 60:.1f} min |" for k, v in st.items()]
    md += ['', f"Total: {sum(v['seconds'] for v in st.values()) / 60:.0f} min."]
    if recipe:
        rel = os.path.relpath(os.path.dirname(recipe), res)
        md += [
            '',
            '## Recipe',
            '',
            f"Reused from an earlier ablation run, [{rel}]({rel}/README.md) (its criterion: "
            f"generative NLL at matched entropy, sample seed 1). The winners, continued here from this run's "
            f"pre-train: "
            + '; '.join(f"**{k.upper()}** `{chosen[k]['winner']}`" for k in ('mdlm', 'dsl'))
            + '.',
        ]
    elif P['tune_iters']:
        md += [
            '',
            '## Recipe ablation',
            '',
            f"Every variant: {P['tune_iters']} steps from the same pre-train. "
            f"Criterion, fixed before the test sweep: generative NLL at the entropy every variant's curve "
            "reaches (the data's, clipped), sampled with hybrid (DSL) or remdm-loop (MDLM) at T = "
            f"{P['tune_T']}, "
            f"N = {P['tune_n']}, top-p {P['tune_top_p']}, sample seed 1 (the test sweep uses seed 0).",
            '',
            '| variant | val MDLM NELBO at the end | gen NLL at H | H | chosen |',
            '|---|---|---|---|---|',
        ]
        for kind in ('mdlm', 'dsl'):
            c = chosen[kind]
            for m, g in c['gen_nll'].items():
                n = m.split(':')[1]
                ev = checkpoint_io.load(os.path.join(runs, 'tune', n, 'ckpt.pt'), mmap=True).get('evals', [])
                H = f"{c['H']:.3f}" if c['H'] is not None else 'nearest'
                md.append(
                    f"| {n} | {ev[-1][1]:.4f} | {g:.3f} | {H} | {'**yes**' if n == c['winner'] else ''} |"
                )
        md += [
            '',
            "H 'nearest': the variants' curves share no entropy, so each is read at its point nearest the "
            "data's "
            "entropy. [tuning/results.md](tuning/results.md) has every tuning cell.",
        ]
    md += [
        '',
        '## Convergence',
        '',
        '![validation curves](curves.png)',
        '',
        '## NLL bounds (nats/token, held-out windows)',
        '',
        '| model | bound | nats | ppl |',
        '|---|---|---|---|',
    ]
    md += [f"| {k} | {b} | {r['nats']:.4f} | {r['ppl']:.2f} |" for k, v in bd.items() for b, r in v.items()]
    md += [
        '',
        '## Calibration: atomic vs smoothed endpoints (ECE, 15 bins)',
        '',
        '| model | SNR gamma | ECE | accuracy | confidence |',
        '|---|---|---|---|---|',
    ]
    md += [
        f"| {k} | {r['value']:g} | {r['ece']:.4f} | {r['accuracy']:.3f} | {r['confidence']:.3f} |"
        for k, v in cal.items()
        for r in v
    ]
    md += [
        '',
        '![reliability, smoothed](reliability_dsl_ft.png) ![reliability, atomic](reliability_dsl_atomic.png)',
    ]
    det = read_json(os.path.join(res, 'detect.json'))
    if det:
        who = os.path.basename(os.path.dirname(det['proposer']))  # mdlm_pre, the pre-train
        md += [
            '',
            '## Error detection: AUROC of u = 1 - p(x_i | state) for corrupted vs true visible tokens',
            '',
            f"{P['eval_windows']} validation windows; 25% of positions hidden, 10% of the visible ones "
            "replaced: "
            f"'uniform' by a random token, 'plausible' by a draw from {who} given"
            f" the rest. 0.5 = chance. A DSL model reads visible tokens at its endpoint and at the commit "
            f"states of sample.py's --gamma_commit; an MDLM model reads them as ids.",
            '',
            '| model | state | corruption | AUROC | mean u, wrong | mean u, true |',
            '|---|---|---|---|---|---|',
        ]
        md += [
            f"| {k} | {r['state']} | {r['corruption']} | {r['auroc']:.3f} | {r['u_wrong']:.3f} | "
            f"{r['u_true']:.3f} |"
            for k, v in det['rows'].items()
            for r in v
        ]
    lines, say, out = compare.verdict(rows, per, steps, dsl_steps, H_data, P['bootstrap'])
    md += [
        '',
        '## Verdict: generative NLL at matched entropy, DSL at T vs MDLM + ReMDM at T and 4T',
        '',
        f"Data entropy {H_data:.3f} nats (held-out windows). NFE = real denoiser calls per sample (a step "
        "that "
        f"changes nothing is not a call). {P['bootstrap']} bootstrap resamples of each cell's samples.",
        '',
    ] + lines
    md += [
        '',
        say,
        '',
        '![frontier](frontier.png)',
        '',
        "## ReMDM's rules on both models (same rule, same T, matched entropy)",
        '',
    ]
    md += compare.same_rule(rows, per, dsl_steps, H_data, P['bootstrap'])
    md += [
        '',
        "## DSL's own rules, each alone, against MDLM + ReMDM (at the entropy nearest the data's both reach)",
        '',
    ]
    md += compare.own_rules(rows, per, steps, dsl_steps, H_data, P['bootstrap'])
    md += [
        '',
        "## The same, against each of ReMDM's rules alone",
        '',
        "A best-of-rules arm drops a rule whose top-p "
        "curve stops short of the compared entropy, however little. Here each MDLM rule alone is read at "
        "the entropy"
        " nearest the data's that it and the DSL rule both reach.",
        '',
    ]
    md += compare.own_rules(rows, per, steps, dsl_steps, H_data, P['bootstrap'], each=True)
    frontier_figure(
        rows,
        res,
        steps,
        H_data,
        [(v['T'], v['H'], v['a'][0], 'dsl') for v in out]
        + [(v['vs'], v['H'], v['b'][0], 'mdlm') for v in out],
    )
    md += [
        '',
        '## MAUVE at top-p 0.9',
        '',
        '| model | rule | T | NFE | MAUVE | gen NLL | entropy |',
        '|---|---|---|---|---|---|---|',
    ]
    md += [
        f"| {r['model']} | {r['sampler']} | {r['steps']} | {float(r['nfe']):.1f} | {float(r['mauve']):.3f} | "
        f"{float(r['gen_nll']):.3f} | {float(r['entropy']):.3f} |"
        for r in rows
        if r['top_p'] == '0.9'
    ]
    md += [
        '',
        '![sweep](results.png)',
        '',
        'Every cell: [results.md](results.md) and results.csv.',
        '',
        '## One sample being refined (rows = denoiser calls)',
        '',
        '![DSL, uncertainty](trajectory_dsl_uncertainty.png)',
        '',
        '![MDLM, ReMDM-loop](trajectory_mdlm_loop.png)',
    ]
    md += ['', '## Samples (the first of each cell at top-p 0.9)', '']
    seen = {}
    if os.path.isfile(os.path.join(res, 'samples.jsonl')):
        for line in open(os.path.join(res, 'samples.jsonl')):
            r = json.loads(line)
            seen[(r['model'], r['sampler'], int(r['steps']), r.get('top_p'))] = r['texts']
    show = {min(dsl_steps), min(dsl_steps, key=lambda T: abs(T - 32))}
    for (m, s, T, tp), texts in sorted(seen.items(), key=str):
        if (
            T in show
            and tp == 0.9
            and s in ('remdm-loop', 'hybrid', 'uncertainty')
            and not m.endswith('atomic')
        ) or s in ('ar', 'data'):
            md += [f"**{m} {s}, T = {T}**", '', '```', texts[0].strip()[:600], '```', '']
    evaluate.write_atomic(os.path.join(res, 'README.md'), '\n'.join(md) + '\n')
    log(f"wrote {os.path.join(res, 'README.md')}")
    print('\n'.join(lines + ['', say]))
    return out


def repro(preset='cpu', corpora=None, text='', launcher='', results='results', runs='out/repro', **overrides):
    """The whole protocol for each corpus of the preset (overrides: any PRESETS key)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}': choose {', '.join(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for corpus in (corpora or PRESETS[preset]['corpora']).split(','):
        if corpus not in CORPORA:
            raise ValueError(f"unknown corpus '{corpus}': choose {', '.join(CORPORA)}")
        c = CORPORA[corpus]  # the corpus's own L and batch, and its own budget for this preset
        own = {**{k: v for k, v in c.items() if k in PRESETS[preset]}, **c.get(preset, {})}
        P = {**PRESETS[preset], **own, **given, 'name': preset}
        # results/char_plateau: the continuations stop on a plateau (verdict.py writes results/char)
        name = corpus.replace('-', '_') + '_plateau'
        run_corpus(corpus, P, os.path.join(results, name), os.path.join(runs, name), text, launcher)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description="the paper's protocol at small scale: train, bounds, sweep, verdict"
    )
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    ap.add_argument('--preset', default='cpu', help=f"{' | '.join(PRESETS)} (cpu: ~100 min on 2 cores)")
    ap.add_argument(
        '--corpora',
        default='',
        help="comma-separated: char, speech or speech-bpe (need --text), owt; '' = the preset's",
    )
    ap.add_argument('--text', default='', help='the speech corpora: comma-separated local .txt files')
    ap.add_argument('--tokenizer', default=None, help="instead of the corpus's tokenizer (char, gpt2, bpe:N)")
    ap.add_argument(
        '--launcher', default='', help='how to start train.py, e.g. "torchrun --nproc_per_node=8"'
    )
    ap.add_argument('--results', default='results', help='tables, figures, README per corpus')
    ap.add_argument('--runs', default='out/repro', help='checkpoints and sweep state')
    for k in ('pre_iters', 'ft_iters', 'num_samples', 'block_size', 'batch_size'):
        ap.add_argument(f'--{k}', type=int, default=None, help="default: the preset's")
    ap.add_argument('--steps', default=None, help="comma-separated; default: the preset's")
    ap.add_argument(
        '--ft_lr',
        type=float,
        default=None,
        help="the tuning grid's base learning rate; default: the preset's",
    )
    ap.add_argument(
        '--recipe',
        default=None,
        help="a tuning.json of an earlier run: its winners, no tuning runs; "
        "'' = tune here; default: the preset's",
    )
    return ap.parse_args(argv)


def die(msg):
    print(f"repro.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    a = parse_args(argv)
    try:
        repro(
            a.preset,
            a.corpora,
            a.text,
            a.launcher,
            a.results,
            a.runs,
            pre_iters=a.pre_iters,
            ft_iters=a.ft_iters,
            num_samples=a.num_samples,
            block_size=a.block_size,
            batch_size=a.batch_size,
            steps=a.steps,
            ft_lr=a.ft_lr,
            tokenizer=a.tokenizer,
            recipe=a.recipe,
        )
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
        ImportError,
    ) as e:  # user errors: one line; bugs keep tracebacks
        die(
            e.args[0] if e.args and isinstance(e.args[0], str) else str(e) or type(e).__name__
        )  # OSError: errno first


if __name__ == '__main__':
    main()
