"""The sampler's step time outside the model forward on a trained V = 2048 DSL model, before and after the
token draws that sort only the head of each row and the uncertainty rule's log-probabilities in row chunks
(issue #26 item 5). 'before' is rules.py and sample.py as of commit a7d043f (a full float64 sort of every
drawn row, one log-softmax over every free position), read from git; 'after' is the code next to this
script. Both run interleaved in one process at the same seed, best of --reps rounds each, and must draw the
same samples. Also the nucleus draw alone, on the rows the uncertainty rule drew, at temperature 1 and 1/2
(the logits doubled: a stand-in for a better-trained model, whose nuclei are short).

    python results/speed/nucleus_v2048.py --ckpt /tmp/nuc_v2048/ckpt.pt --threads 2
"""

import argparse
import os
import subprocess
import sys
import time
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import model as modellib  # noqa: E402
import rules  # noqa: E402
import sample  # noqa: E402

BEFORE = 'a7d043f'


def git(*args):
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def module_at(commit, name):
    """The module `name`.py as it was at `commit`, loaded under another name."""
    mod = types.ModuleType(f'{name}_{commit}')
    mod.__file__ = os.path.join(ROOT, f'{name}.py')
    exec(compile(git('show', f'{commit}:{name}.py'), f'{commit}:{name}.py', 'exec'), mod.__dict__)
    return mod


def drawn_rows(m, args, sampler, top_p):
    """One untimed run: the logits of the rows the sampler draws, one (n, V) tensor per step."""
    rows = []
    draw = rules.sample_tokens

    def record(logits, *a, **k):
        rows.append(logits.detach().clone())
        return draw(logits, *a, **k)

    rules.sample_tokens = record
    try:
        sample.generate(
            m,
            args.batch,
            args.seq_len,
            args.steps,
            sampler,
            top_p,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        rules.sample_tokens = draw
    return rows


def nucleus_sizes(rows, top_p):
    """10/50/90% quantiles of the nucleus size (remdm) over all rows."""
    ps = torch.softmax(torch.cat(rows).double(), -1).sort(dim=-1, descending=True).values
    size = (ps.cumsum(-1) <= top_p).sum(-1).clamp(min=1).float()
    return size.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()


def time_draws(draws, rows, top_p, reps, clock):
    """ms per step of each draw function over the recorded steps, interleaved, best of reps."""
    best = {}
    for _ in range(reps):
        for name, draw in draws.items():
            total = 0.0
            for lg in rows:
                g = torch.Generator().manual_seed(0)
                t0 = clock()
                draw(lg, top_p, g)
                total += clock() - t0
            best[name] = min(best.get(name, float('inf')), 1e3 * total / len(rows))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--ckpt', required=True)
    ap.add_argument('--samplers', default='uncertainty,mdlm')
    ap.add_argument('--top_p', default='0.9,1.0')
    ap.add_argument('--batch', type=int, default=64)
    ap.add_argument('--seq_len', type=int, default=128)
    ap.add_argument('--steps', type=int, default=32)
    ap.add_argument('--reps', type=int, default=2)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument(
        '--clock',
        default='wall',
        choices=['wall', 'cpu'],
        help="cpu: this thread's CPU time (with --threads 1), which other jobs barely move",
    )
    args = ap.parse_args()
    if args.clock == 'cpu' and args.threads != 1:
        ap.error('--clock cpu counts the calling thread only: use it with --threads 1')
    torch.set_num_threads(args.threads)
    old_sample = module_at(BEFORE, 'sample')
    old_rules = module_at(BEFORE, 'rules')
    old_sample.rules = old_rules  # the old loop draws with the old rules
    clock = time.perf_counter
    if args.clock == 'cpu':  # both loops time their steps and forwards with time.perf_counter
        clock = time.thread_time
        sample.time = types.SimpleNamespace(perf_counter=clock)
        old_sample.time = sample.time
    m = modellib.load_mdlm(args.ckpt).eval()
    ck = torch.load(args.ckpt, map_location='cpu', weights_only=False)
    head = git('rev-parse', '--short', 'HEAD').strip()
    changed = git('status', '--porcelain', '--untracked-files=no').strip()
    dirty = ' (with uncommitted changes)' if changed else ''
    print(
        f"# python results/speed/nucleus_v2048.py --ckpt {args.ckpt} --threads {args.threads} "
        f"--reps {args.reps} --clock {args.clock} --samplers {args.samplers} --top_p {args.top_p}"
    )
    print(
        f"# {time.strftime('%d %b %Y')}, cpu ({os.cpu_count()} cores shared with other jobs, "
        f"{torch.get_num_threads()} threads, {args.clock} clock), torch {torch.__version__}, fp32 eager; "
        f"before = {BEFORE}, after = {head}{dirty}"
    )
    evals = ', '.join(f'{s} {v:.3f}' for s, v in ck['evals'])
    print(
        f"# model: {args.ckpt}, V = {m.vocab_size}, dsl = {m.dsl}, trained {ck['step']} steps "
        f"(val diffusion bound by step: {evals} nats/token)"
    )
    print(
        f"# sampling: batch {args.batch} x L = {args.seq_len}, T = {args.steps}, seed 0; "
        f"best of {args.reps} interleaved rounds"
    )
    top_p = min(float(p) for p in args.top_p.split(','))
    for s in args.samplers.split(','):
        rows = drawn_rows(m, args, s, top_p)
        q = nucleus_sizes(rows, top_p)
        print(
            f"# {s}: {len(torch.cat(rows)) / len(rows):.0f} rows drawn per step; their nucleus at top_p "
            f"{top_p}: 10/50/90% quantiles {q[0]:.0f} / {q[1]:.0f} / {q[2]:.0f} tokens of {m.vocab_size}"
        )
        if s != 'uncertainty':
            continue
        draws = dict(before=old_rules.sample_tokens, after=rules.sample_tokens)
        for scale in (1, 2):
            doubled = [scale * lg for lg in rows]
            q = nucleus_sizes(doubled, top_p)
            ms = time_draws(draws, doubled, top_p, args.reps, clock)
            print(
                f"#   the draw alone on these rows at temperature 1/{scale} (nucleus median {q[1]:.0f}): "
                f"{ms['before']:.1f} ms/step before, {ms['after']:.1f} after"
            )
    print(
        f"{'sampler':<12} {'top_p':>5} {'version':>7} {'ms/step':>8} {'forward':>8} {'outside':>8} "
        f"{'outside %':>9} {'same samples':>12}"
    )
    versions = dict(before=old_sample.generate, after=sample.generate)
    for s in args.samplers.split(','):
        for top_p in [float(p) for p in args.top_p.split(',')]:
            best, xs = {}, {}
            for _ in range(args.reps):
                for name, generate in versions.items():
                    g = torch.Generator().manual_seed(0)
                    x, info = generate(m, args.batch, args.seq_len, args.steps, s, top_p, generator=g)
                    xs[name] = x
                    if name not in best or info['total_s'] < best[name]['total_s']:
                        best[name] = info
            same = int((xs['before'] == xs['after']).all(1).sum())
            for name, info in best.items():
                step = 1e3 * info['total_s'] / info['calls']
                fwd = 1e3 * info['model_s'] / info['calls']
                print(
                    f"{s:<12} {top_p:>5} {name:>7} {step:>8.1f} {fwd:>8.1f} {step - fwd:>8.1f} "
                    f"{100 * (1 - fwd / step):>8.1f}% {f'{same}/{args.batch}':>12}",
                    flush=True,
                )


if __name__ == '__main__':
    main()
