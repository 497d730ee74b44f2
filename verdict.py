"""
The small-scale verdict at equal training compute, over training seeds, with one comparison fixed before the
test cells are drawn (docs/evaluation.md §7). repro.py runs the paper's whole protocol once per arm; this
file asks one question of several training runs per arm:

    python verdict.py --corpus char --text input.txt           # ~100 min on 2 CPU cores
    python verdict.py --corpus speech-bpe --text a.txt,b.txt

Stages (each skipped when finished, as in repro.py; the runs resume from their checkpoints):
  1. pretrain  the MDLM pre-train (train.py's seed 1337) and the AR judge, as repro.py
  2. train     each arm's recipe (an earlier recipe ablation's tuning.json: its learning rate from the same
               grid for both arms) continued from the one pre-train with seeds 0..seeds-1, for the same
               number of steps (the two step costs are within 10%: results/speed/README.md), the learning
               rate decaying on a cosine to lr/10 over that fixed budget (nanoGPT), no early stop
  3. knobs     DSL's kappa and ReMDM's eta from grids of the same size, on the seed-0 models and sampling
               seed 1, chosen by the pre-registered criterion (choose_knob); MDLM's rule (mdlm or
               remdm-loop) chosen the same way
  4. sweep     refuses to run until results/<corpus>/preregistered.md exists; then every model of both arms
               on the same sampling seed 0 (common random numbers), N = num_samples
  5. report    results/<corpus>/README.md: the primary comparison with a hierarchical, paired bootstrap
               interval (compare.hierarchical), its call under the pre-registered rule and over 20 bootstrap
               seeds, then the secondary comparisons, the curves and the knob grids
"""

import argparse
import json
import os
import shlex
import sys

import checkpoint_io
import data
import repro

# what this protocol adds to repro.py's preset of the same name
PROTOCOL = dict(
    cpu=dict(
        seeds=3,
        ft_iters=3000,
        ft_eval=100,
        tune_n=128,
        kappa='0.5,1,2,4',
        eta='0.01,0.02,0.04,0.08',
        primary_T=32,
        baseline_T=128,
        # the diversity frontier of every compared curve: top-p below 1, temperature above 1
        top_ps='0.9,0.95,1.0',
        temperatures='1.1,1.2',
    ),
    toy=dict(
        seeds=2,
        ft_iters=6,
        ft_eval=2,
        tune_n=8,
        kappa='1,2',
        eta='0.02,0.04',
        primary_T=2,
        baseline_T=8,
        top_ps='0.9,1.0',
        temperatures='1.2',
    ),
)
ARMS = ('mdlm', 'dsl')


def config(preset, corpus, **given):
    """repro.py's preset for the corpus, this protocol's keys on top, then the caller's."""
    if preset not in PROTOCOL:
        raise ValueError(f"unknown preset '{preset}': choose {', '.join(PROTOCOL)}")
    if corpus not in repro.CORPORA:
        raise ValueError(f"unknown corpus '{corpus}': choose {', '.join(repro.CORPORA)}")
    c = repro.CORPORA[corpus]
    own = {**{k: v for k, v in c.items() if k in repro.PRESETS[preset]}, **c.get(preset, {})}
    own.pop('ft_iters', None)  # the corpus's plateau budget belongs to repro.py's protocol
    given = {k: v for k, v in given.items() if v is not None}
    return {**repro.PRESETS[preset], **own, **PROTOCOL[preset], **given, 'name': preset}


def continuation(arm, seed):
    return f"{arm}_s{seed}"


def run(corpus, P, res, runs, text='', launcher=''):
    os.makedirs(res, exist_ok=True)
    c = repro.CORPORA[corpus]
    if corpus.startswith('speech') and not text:
        raise ValueError(f"--corpus {corpus} needs --text: comma-separated local .txt files")
    if not os.path.isfile(P['recipe']):
        raise FileNotFoundError(f"--recipe {P['recipe']}: no such file (a tuning.json that repro.py wrote)")
    dd, meta = data.ensure(c['dataset'] or 'shakespeare_char', text, P.get('tokenizer') or c['tokenizer'])
    repro.log(f"{corpus}: data {dd} ({meta['tokenizer']}, V = {meta['vocab_size']})")
    launcher = launcher or shlex.quote(sys.executable)
    common = repro.train_args(P, dd)
    ck = lambda name: os.path.join(runs, name, 'ckpt.pt')

    # 1. the one pre-train and the judge
    for name, obj, iters in (('mdlm_pre', 'mdlm', P['pre_iters']), ('ar', 'ar', P['ar_iters'])):
        args = common + repro.scratch_args(P, obj, iters) + ['--out_dir', os.path.dirname(ck(name))]
        log_path = os.path.join(res, f'train_{name}.log')
        repro.stage(
            res,
            f'train_{name}',
            lambda: repro.train(os.path.dirname(ck(name)), args, iters, launcher, log_path),
        )

    # 2. the continuations: seed by seed, so that an interrupted protocol has whole pairs
    recipe = repro.read_json(P['recipe'])
    for seed in range(P['seeds']):
        for arm in ARMS:
            name = continuation(arm, seed)
            args = list(recipe[arm]['args'])
            lr = float(args[args.index('--lr') + 1])
            args += [
                '--init_from',
                ck('mdlm_pre'),
                '--warmup_iters',
                str(P['warmup_iters']),
                '--lr_decay',
                'cosine',
                '--min_lr',
                f'{lr / 10:g}',
                '--eval_bound',
                'mdlm',
                '--eval_interval',
                str(P['ft_eval']),
                '--seed',
                str(seed),
                '--max_iters',
                str(P['ft_iters']),
                '--out_dir',
                os.path.dirname(ck(name)),
            ]
            log_path = os.path.join(res, f'train_{name}.log')
            repro.stage(
                res,
                f'train_{name}',
                lambda: repro.train(
                    os.path.dirname(ck(name)), common + args, P['ft_iters'], launcher, log_path
                ),
            )
    return dd, ck


def parse_args(argv):
    ap = argparse.ArgumentParser(description='the verdict at equal training compute over training seeds')
    ap.error = lambda msg: repro.die(msg)
    ap.add_argument('--preset', default='cpu', help=' | '.join(PROTOCOL))
    ap.add_argument('--corpus', default='char', help=', '.join(repro.CORPORA))
    ap.add_argument('--text', default='', help='comma-separated local .txt files')
    ap.add_argument(
        '--launcher', default='', help='how to start train.py, e.g. "torchrun --nproc_per_node=8"'
    )
    ap.add_argument('--results', default='results', help='the folder that gets <corpus>/')
    ap.add_argument('--runs', default='out/verdict', help='checkpoints and sweep state')
    ap.add_argument('--seeds', type=int, default=None, help="continuations per arm; default: the preset's")
    ap.add_argument('--ft_iters', type=int, default=None, help="each continuation's steps")
    ap.add_argument('--recipe', default=None, help="the tuning.json each arm's recipe comes from")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        P = config(a.preset, a.corpus, seeds=a.seeds, ft_iters=a.ft_iters, recipe=a.recipe)
        name = a.corpus.replace('-', '_')
        run(a.corpus, P, os.path.join(a.results, name), os.path.join(a.runs, name), a.text, a.launcher)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as e:
        repro.die(e.args[0] if e.args and isinstance(e.args[0], str) else str(e) or type(e).__name__)


if __name__ == '__main__':
    main()
