"""
Probing a model on held-out data, teacher-forced on fixed validation windows (docs/evaluation.md §4): its NLL
bounds, its calibration (ECE, reliability diagram) and whether it can find its own wrong tokens
(error-detection AUROC). Scoring generated text is evaluate.py.

    python probe.py bounds --ckpt out/ckpt.pt --data data/shakespeare_char
    python probe.py calibration --ckpt out/ckpt.pt --data data/shakespeare_char --out reliability.png
    python probe.py detect --ckpt out/ckpt.pt --data data/shakespeare_char --gamma_commit 10,3
"""

import argparse
import os
import sys

import numpy as np
import torch

import data
import evaluate
import figures
import noise


def windows(data_dir, n, L, seed=0):
    """The same n validation windows for every model (data.get_batch with a fixed seed)."""
    meta = data.load_meta(data_dir) if os.path.isfile(os.path.join(data_dir, 'meta.json')) else None
    if meta is None:
        raise FileNotFoundError(
            f"--data {data_dir} is not a prepared data folder (no meta.json; run data.py)"
        )
    return data.get_batch(
        data_dir, 'val', n, L, np.random.default_rng(seed), meta.get('dtype', 'uint16')
    ), meta


def check_data(m, meta, where):
    if meta['vocab_size'] != m.vocab_size:
        raise ValueError(
            f"{where}: the model's vocabulary ({m.vocab_size}) does not match the data's "
            f"({meta['vocab_size']})"
        )


def ece(conf, correct, n_bins=15):
    """Expected calibration error (Guo et al. 2017): sum_b n_b/N |acc_b - conf_b| over equal-width confidence
    bins. Returns (ece, bins: list of (lo, hi, count, mean confidence, accuracy))."""
    conf, correct = torch.as_tensor(conf, dtype=torch.float64), torch.as_tensor(correct, dtype=torch.float64)
    b = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1  # bin (k/n, (k+1)/n]; 0 goes to the first
    bins, total = [], 0.0
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            c, a = conf[sel].mean().item(), correct[sel].mean().item()
            total += sel.sum().item() / len(conf) * abs(a - c)
            bins.append((k / n_bins, (k + 1) / n_bins, int(sel.sum()), c, a))
    return total, bins


@torch.no_grad()
def corrupted_predictions(m, x, level, g):
    """Teacher-forced (confidence, correct) on corrupted windows. DSL: one shared SNR gamma = level per
    sequence (noise.localize), every position is corrupted and scored. MDLM: mask fraction t = level; only
    masked positions are scored (visible ones are copied through, trivially correct)."""
    if m.dsl:
        logits = m(z=noise.localize(m.E()[x], torch.tensor(float(level)), g))
        where = torch.ones_like(x, dtype=torch.bool)
    else:
        xt, where = noise.mdlm_corrupt(x, torch.full((len(x),), float(level)), m.mask_id, g)
        logits = m(x=xt)
    p = torch.softmax(logits[..., : m.vocab_size].double(), -1)[where]  # (N, V)
    conf, pred = p.max(-1)
    return conf, (pred == x[where]).double()


def calibration(ckpt, data_dir, levels=None, n=64, L=None, seed=0, out='', trust=False):
    """ECE at each level (DSL: SNRs, default gamma_max x {0.03, 0.1, 0.3, 1}; MDLM: mask rates {0.15, 0.5,
    0.85}) and a reliability diagram PNG (out). Returns rows. trust, here and below: as evaluate.load."""
    m, _, cfg = evaluate.load(ckpt, trust=trust)
    if m.config.get('causal'):
        raise ValueError(f"{ckpt}: calibration needs a DSL or MDLM checkpoint, not an autoregressive one")
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    gmax = m.config['gamma_max']
    levels = levels or ([gmax * f for f in (0.03, 0.1, 0.3, 1.0)] if m.dsl else [0.15, 0.5, 0.85])
    g, rows = torch.Generator().manual_seed(seed), []
    for lv in levels:
        conf, correct = corrupted_predictions(m, x, lv, g)
        e, bins = ece(conf, correct)
        rows.append(
            dict(
                level=('gamma' if m.dsl else 't'),
                value=lv,
                ece=e,
                accuracy=correct.mean().item(),
                confidence=conf.mean().item(),
                n=len(conf),
                bins=bins,
            )
        )
    if out:
        figures.reliability(rows, out, os.path.basename(ckpt))
    return rows


def auroc(scores, labels):
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2
    (Mann-Whitney U from average ranks)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        return float('nan')
    order = np.argsort(s, kind='mergesort')
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    vals, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, ranks) / counts)[inv]  # tied scores share their average rank
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# How a sampler presents a visible token to the model: name -> fn(model, ids with mask_id where hidden,
# generator) -> logits (B, L, V+1). Discrete samplers today: a DSL model sees z = gamma_max e_x (z = 0
# hidden), an MDLM model sees the ids. A commit state at a lower SNR is one more entry here.
STATES = dict(endpoint=lambda m, x, g: m(z=m.endpoint_z(x)), tokens=lambda m, x, g: m(x=x))


def commit_states(gammas):
    """The commit states of sample.py's --gamma_commit g (DSL): every visible token at z = g e_x,
    deterministic ('commit@g') or as a channel sample z = g e_x + sqrt(g) eps ('commit@g+noise',
    --commit_noise 1)."""

    def state(gc, noisy):
        def fn(m, x, g):
            z = m.endpoint_z(x, gc)  # (B, L, d), 0 where hidden
            if noisy:
                vis = (x != m.mask_id)[..., None]
                z = z + vis * gc**0.5 * torch.randn(z.shape, generator=g, device=z.device)
            return m(z=z)

        return fn

    return [
        (f"commit@{gc:g}{'+noise' if noisy else ''}", state(gc, noisy)) for gc in gammas for noisy in (0, 1)
    ]


@torch.no_grad()
def corrupt(x, hide, frac, how, V, mask_id, g, proposer=None):
    """Hide a fraction `hide` of positions, replace a fraction `frac` of the visible ones by a wrong token:
    'uniform' over the V-1 others, or 'plausible': drawn from the proposer's prediction at that position with
    it (and every other corrupted or hidden position) hidden, the true token excluded.
    Returns (state ids with mask_id where hidden, hidden (B, L), corrupted (B, L))."""
    hidden = torch.rand(x.shape, generator=g) < hide
    wrong = ~hidden & (torch.rand(x.shape, generator=g) < frac)
    if how == 'uniform':
        y = (x + torch.randint(1, V, x.shape, generator=g)) % V  # never x itself
    elif how == 'plausible':
        logits = proposer(x=x.masked_fill(hidden | wrong, mask_id))  # (B, L, V+1)
        p = torch.softmax(logits[..., :V].double(), -1).scatter(-1, x[..., None], 0.0) + 1e-30
        p = p.scatter(-1, x[..., None], 0.0)  # the true token excluded, other probabilities renormalised
        y = x.clone()
        if wrong.any():
            y[wrong] = torch.multinomial(p[wrong], 1, generator=g)[:, 0]
    else:
        raise ValueError(f"unknown corruption '{how}': choose uniform or plausible")
    return torch.where(wrong, y, x).masked_fill(hidden, mask_id), hidden, wrong


@torch.no_grad()
def detect_auroc(m, x, states, hows=('uniform', 'plausible'), hide=0.25, frac=0.1, proposer=None, seed=0):
    """AUROC of u_i = 1 - p(x_i | state) for corrupted vs true visible tokens, per (state, corruption).
    The same corruptions (fixed seed) for every state; proposer defaults to the model itself."""
    rows = []
    for how in hows:
        g = torch.Generator().manual_seed(seed)
        xs, hidden, wrong = corrupt(x, hide, frac, how, m.vocab_size, m.mask_id, g, proposer or m)
        for name in states:
            logits = STATES[name](m, xs, g) if isinstance(name, str) else name[1](m, xs, g)
            p = torch.softmax(logits[..., : m.vocab_size].double(), -1)
            u = 1 - p.gather(-1, xs.clamp(max=m.vocab_size - 1)[..., None])[..., 0]  # (B, L)
            vis = ~hidden
            rows.append(
                dict(
                    state=name if isinstance(name, str) else name[0],
                    corruption=how,
                    auroc=auroc(u[vis], wrong[vis]),
                    u_wrong=u[wrong].mean().item(),
                    u_true=u[vis & ~wrong].mean().item(),
                    n_wrong=int(wrong.sum()),
                    n_true=int((vis & ~wrong).sum()),
                )
            )
    return rows


def detect(
    ckpt, data_dir, n=64, L=None, hide=0.25, frac=0.1, proposer='', seed=0, gamma_commit=None, trust=False
):
    """Error-detection AUROC for every state a sampler can present visible tokens in: DSL models at the
    endpoint and at the commit states of gamma_commit (default gamma_max / 3 and / 10), MDLM models as ids."""
    m, _, cfg = evaluate.load(ckpt, trust=trust)
    if m.config.get('causal'):
        raise ValueError(f"{ckpt}: detect needs a DSL or MDLM checkpoint, not an autoregressive one")
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    prop = evaluate.load(proposer, trust=trust)[0] if proposer else m
    if prop.config.get('causal') or prop.vocab_size != m.vocab_size:
        raise ValueError(
            f"--proposer {proposer} must be a DSL or MDLM checkpoint with the model's vocabulary"
        )
    gmax = m.config['gamma_max']
    gammas = [gmax / 3, gmax / 10] if gamma_commit is None else gamma_commit
    if m.dsl and not all(0 < gc <= gmax for gc in gammas):
        raise ValueError(f"--gamma_commit values must lie in (0, gamma_max = {gmax:g}], got {gammas}")
    states = ['endpoint'] + commit_states(gammas) if m.dsl else ['tokens']
    return detect_auroc(m, x, states, hide=hide, frac=frac, proposer=prop, seed=seed)


@torch.no_grad()
def bounds(ckpt, data_dir, n=64, L=None, seed=0, batch_size=16, grid=64, trust=False):
    """NLL bounds on fixed windows, nats/token: MDLM NELBO and any-order AR for every diffusion model, the
    diffusion (I-MMSE) bound for DSL models; an AR model's exact NLL. Each with bits and perplexity."""
    m, _, cfg = evaluate.load(ckpt, trust=trust)
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    xs, out = x.split(batch_size), {}
    mean = lambda f: (
        sum(f(xb, torch.Generator().manual_seed(seed + i)) * len(xb) for i, xb in enumerate(xs)) / n
    )
    if m.config.get('causal'):
        out['ar_nll'] = mean(lambda xb, g: noise.ar_loss(m, xb).item())
    else:
        out['mdlm_bound'] = mean(lambda xb, g: noise.mdlm_bound(m, xb, generator=g))
        out['roar_bound'] = mean(lambda xb, g: noise.roar_bound(m, xb, generator=g))
    if m.dsl:  # as train.py's eval: the min over the cut-off g* after averaging over all windows
        gr = noise.snr_grid(4 * m.config['gamma_max'], grid)
        per = torch.cat(
            [
                sum(noise.path_integral(m, xb, gr, torch.Generator().manual_seed(seed + i)))
                for i, xb in enumerate(xs)
            ],
            dim=1,
        )  # (S, N)
        out['diffusion_bound'] = per.mean(1).min().item() / x.shape[1]
    return {k: noise.bound_report(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv):
    ap = argparse.ArgumentParser(description='bounds, calibration and error detection on held-out windows')
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    sub = ap.add_subparsers(dest='cmd', required=True)
    for name in ('bounds', 'calibration', 'detect'):
        p = sub.add_parser(name)
        p.error = ap.error
        p.add_argument('--ckpt', required=True)
        p.add_argument('--data', required=True, help='prepared data folder; its val split')
        p.add_argument('--num_windows', type=int, default=64)
        p.add_argument('--seq_len', type=int, default=0, help="0 = the checkpoint's block_size")
        p.add_argument('--seed', type=int, default=0, help='windows and corruptions')
        p.add_argument(
            '--trust_checkpoint',
            action='store_true',
            help='unpickle checkpoints in full, which can run code in them: only for files from a '
            'source you trust',
        )
        if name == 'calibration':
            p.add_argument('--levels', default='', help='comma-separated SNRs (DSL) or mask rates (MDLM)')
            p.add_argument('--out', default='reliability.png')
        if name == 'detect':
            p.add_argument('--hide', type=float, default=0.25, help='fraction of positions hidden')
            p.add_argument('--frac', type=float, default=0.1, help='fraction of visible tokens corrupted')
            p.add_argument(
                '--proposer',
                default='',
                help='checkpoint proposing plausible corruptions (default: the model)',
            )
            p.add_argument(
                '--gamma_commit',
                default='',
                help='DSL commit SNRs to test, comma-separated (default gamma_max/3, gamma_max/10)',
            )
    return ap.parse_args(argv)


def die(msg):
    print(f"probe.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def floats(s, flag):
    try:
        return [float(v) for v in s.split(',') if v]
    except ValueError:
        raise ValueError(f"{flag} expects comma-separated numbers, got '{s}'") from None


def run(a):
    if a.cmd == 'calibration':
        levels = floats(a.levels, '--levels')
        rows = calibration(
            a.ckpt, a.data, levels, a.num_windows, a.seq_len, a.seed, a.out, a.trust_checkpoint
        )
        print(evaluate.table(rows, ['level', 'value', 'ece', 'accuracy', 'confidence', 'n']))
        print(f"wrote {a.out}", file=sys.stderr)
    elif a.cmd == 'detect':
        rows = detect(
            a.ckpt,
            a.data,
            a.num_windows,
            a.seq_len,
            a.hide,
            a.frac,
            a.proposer,
            a.seed,
            floats(a.gamma_commit, '--gamma_commit') or None,
            trust=a.trust_checkpoint,
        )
        print(
            evaluate.table(rows, ['state', 'corruption', 'auroc', 'u_wrong', 'u_true', 'n_wrong', 'n_true'])
        )
    else:
        for k, r in bounds(
            a.ckpt, a.data, a.num_windows, a.seq_len, a.seed, trust=a.trust_checkpoint
        ).items():
            print(
                f"{k:>16}: {r['nats']:.4f} nats/token, {r['bits']:.4f} bits/token, perplexity {r['ppl']:.2f}"
            )


def main(argv=None):
    a = parse_args(argv)
    try:
        run(a)
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
        ImportError,
    ) as e:  # user errors: one line; bugs keep tracebacks
        die(str(e.args[0]) if e.args else type(e).__name__)


if __name__ == '__main__':
    main()
