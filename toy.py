"""
The cyclic toy (docs/method.md §17): vocabulary A..G, L = 7, the data are the 7 cyclic shifts of ABCDEFG.

    python toy.py                 # about a minute on a laptop CPU (one thread), no data, no GPU
    python toy.py --no_plot --steps_train 600 --seeds 50 --seed 1   # quicker, another training seed

The self-correction experiment of Wu et al. 2026 (arXiv 2602.16169, Fig. 3) with the rule separated from the
model: two tiny DiTs are trained with the same budget, one with the MDLM objective and one with the DSL mixed
objective; each of them and the exact oracle then repairs the draft `__CDBFF` (two hidden tokens, two
visible-but-wrong ones: E -> B, G -> F) and random drafts of the same shape in at most 10 denoiser calls,
with every remasking rule the model supports (`uncertainty` needs a posterior at visible positions, so DSL
models only). A separate measurement asks whether the model itself can doubt a visible token: the AUROC of
u = 1 - p(x_i | draft) for telling wrong visible tokens from right ones.

With fixed unit embeddings E the exact Bayes denoiser is a sum over the 7 sequences:
    p(x | z) = exp(sum_i <z_i, e_{x_i}>) / sum_{x' in S} exp(sum_i <z_i, e_{x'_i}>)
`Oracle` wraps it with the model's call signature; it is the reference row of every table here.
"""

import argparse
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import data
import figures
import model as modellib
import noise
import sample

ALPHABET = 'ABCDEFG'
V = L = 7
DRAFT, TARGET = '__CDBFF', 'ABCDEFG'

# SNR mixture of the DSL arm: the char-vocabulary defaults of docs/method.md §5, unchanged (p_end 0.25,
# smoothed endpoints, no jitter). With orthonormal codes a token at gamma_max = 30 is unambiguous, and
# LogNormal(1.4, 0.55) puts intermediate sequences around gamma ~ 4, where single tokens are often misread
# and only the context can fix them: those are the states that teach the model to doubt a visible token.
TOY_SNR = dict(gamma_max=30.0, log_snr_mean=1.4, log_snr_std=0.55, jitter=0.0)


def shifts():
    """(7, 7) int64: row j is ABCDEFG rotated left by j."""
    return (torch.arange(L)[None, :] + torch.arange(V)[:, None]) % V


def encode(s):
    """'__CDBFF' -> ids, '_' = [MASK] (id V)."""
    return torch.tensor([V if ch == '_' else ALPHABET.index(ch) for ch in s])


def decode(ids):
    return ''.join('_' if int(i) == V else ALPHABET[int(i)] for i in ids)


class Oracle(nn.Module):
    """Exact Bayes denoiser of the cyclic toy. Orthonormal codes (V <= d) make distinct tokens
    exactly distinguishable; token input x is read as the endpoint state z = gamma_max e_x (0 at [MASK])."""

    def __init__(self, d=16, gamma_max=30.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        self.register_buffer('codes', q[:V].contiguous())  # (V, d), orthonormal rows
        self.register_buffer('S', shifts())
        self.vocab_size, self.mask_id, self.dsl = V, V, True
        self.config = dict(vocab_size=V, noise_dim=d, gamma_max=gamma_max, dsl=True)

    def E(self):
        return self.codes

    def endpoint_z(self, x, gamma=None):  # z = gamma e_x (default gamma_max), 0 at [MASK], as DiT.endpoint_z
        gamma = self.config['gamma_max'] if gamma is None else gamma
        return self.codes[x.clamp(max=V - 1)] * (torch.as_tensor(gamma) * (x != self.mask_id))[..., None]

    def forward(self, x=None, z=None, out_idx=None):
        if z is None:
            z = self.endpoint_z(x)
        zv = z.double() @ self.codes.double().t()  # (B, L, V): <z_i, e_v>
        # score of each of the 7 sequences: sum_i <z_i, e_{S[s, i]}>  -> (B, 7)
        seq = zv[:, torch.arange(L)[None, :], self.S].sum(-1)
        post = torch.softmax(seq, dim=-1)  # p(sequence | z), (B, 7)
        # marginal per position: p(x_i = v | z) = sum_{s: S[s, i] = v} p(s | z)
        onehot = F.one_hot(self.S, V).double().reshape(V, L * V)  # (7, L*V)
        logits = torch.log((post @ onehot).clamp_min(1e-300)).reshape(-1, L, V)  # (B, L, V)
        logits = torch.cat([logits, torch.full_like(logits[..., :1], -float('inf'))], dim=-1).float()
        return logits[out_idx] if out_idx is not None else logits


# ---------------------------------------------------------------------------------------------
# Training: two tiny DiTs, same architecture, data, optimiser and step budget; only the objective differs


def train_toy(objective, steps=1500, batch=64, lr=2e-3, seed=0):
    """A 'tiny' DiT (2 layers, 64 wide) trained on uniform draws of the 7 shifts. The DSL arm uses the
    oracle's orthonormal codes, frozen, so the oracle is the exact Bayes denoiser of its own channel."""
    torch.manual_seed(seed)
    dsl = objective == 'dsl'
    cfg = modellib.model_config(
        'tiny', V, dsl=dsl, noise_dim=16, gamma_max=TOY_SNR['gamma_max'], freeze_noise=dsl
    )
    m = modellib.DiT(cfg)
    if dsl:
        with torch.no_grad():
            m.converter.noise_embed.copy_(Oracle(16, TOY_SNR['gamma_max']).codes)
    snr = noise.snr_config(V, **TOY_SNR)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    # cosine decay to 0: the last steps average out the noise of 64-sequence batches. At a constant lr the
    # final weights are a random draw around the optimum, and in our runs 1 of 4 training seeds then
    # recovered __CDBFF only 70% of the time; with the decay 10 of 10 seeds (600 and 1500 steps) reach >= 94%.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    g = torch.Generator().manual_seed(seed)
    data = shifts()
    m.train()
    for _ in range(steps):
        x = data[torch.randint(0, V, (batch,), generator=g)]  # (batch, L)
        loss = noise.loss_fn(objective, m, x, snr, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return m.eval()


# ---------------------------------------------------------------------------------------------
# Experiments. Every refinement goes through sample.py's one loop (`repair`, `generate`).

# Every rule on every model: rows oracle / DSL / MDLM, columns the rules, each at its default knobs and
# applied through the same sample.repair / sample.generate call, so a column differs between rows only by the
# model. `uncertainty` needs p(x_i | state) at visible tokens, which only DSL-capable models (the oracle, DSL)
# give. At frozen alpha ReMDM's reveal probability (eq. 9) of a hidden token is sigma * alpha / (1 - alpha): 0
# under conf (hidden tokens have weight 0), ~0.02 under cap, 0.05 under loop, 0.25 under budget (eta = 1/T),
# so with conf hidden tokens wait for the final call's argmax whatever the model. `uncertainty` instead
# reveals, in expectation, as many tokens as it remasked (docs/method.md §12).
MODELS = dict(oracle='oracle', dsl='DSL', mdlm='MDLM')
RULES = ('uncertainty', 'conf', 'cap', 'loop', 'budget')
FIG_ARMS = [
    ('oracle', 'conf'),
    ('dsl', 'uncertainty'),
    ('dsl', 'conf'),
    ('mdlm', 'conf'),
    ('dsl', 'budget'),
    ('mdlm', 'budget'),
]  # the trajectories printed and plotted


def arm_label(key, rule):
    return f'{MODELS[key]} + {rule}'


def corrupt(n, n_hidden=2, n_wrong=2, generator=None):
    """n drafts shaped like __CDBFF: a random shift with n_hidden positions masked and n_wrong others
    replaced by a random wrong letter. The true shift keeps L - n_hidden - n_wrong matches and every other
    shift at most n_wrong (two shifts never agree anywhere), so it stays the Bayes answer when
    n_wrong < L - n_hidden - n_wrong. Returns (drafts, targets), both (n, L)."""
    targets = shifts()[torch.randint(0, V, (n,), generator=generator)]
    order = torch.rand(n, L, generator=generator).argsort(1)  # random positions per row
    hide, wrong = order[:, :n_hidden], order[:, n_hidden : n_hidden + n_wrong]
    drafts = targets.clone()
    bad = (drafts.gather(1, wrong) + torch.randint(1, V, wrong.shape, generator=generator)) % V
    drafts.scatter_(1, wrong, bad)
    drafts.scatter_(1, hide, V)
    return drafts, targets


def is_valid(x):
    """(B,) bool: the row is one of the 7 shifts."""
    return (x[:, None, :] == shifts()[None]).all(-1).any(-1)


def recovery(m, drafts, targets, sampler, steps=10, seed=0):
    """Fraction of drafts repaired to their target in `steps` denoiser calls; each row is an independent
    chain (its own random numbers), so B rows = B seeds. Also returns the trajectories (steps+1, B, L)."""
    g = torch.Generator().manual_seed(seed)
    x, info = sample.repair(m, drafts, steps, sampler=sampler, top_p=1.0, generator=g, trajectory=True)
    traj = torch.stack([drafts] + info['trajectory'])
    return (x == targets).all(1).float().mean().item(), traj


def validity(m, T, sampler, n=200, seed=0):
    """Unconditional generation in T calls: fraction of samples that are one of the 7 shifts. At T < L an
    MDLM sampler must reveal several tokens per call independently, which breaks the cycle."""
    g = torch.Generator().manual_seed(seed)
    x, _ = sample.generate(m, n, L, T, sampler=sampler, top_p=1.0, generator=g)
    return is_valid(x).float().mean().item()


def auroc(score, positive):
    """Area under the ROC curve of `score` for telling positive from negative entries: the Mann-Whitney
    statistic from ranks, ties sharing their average rank, i.e. P(s_pos > s_neg) + P(s_pos = s_neg) / 2."""
    score, positive = score.flatten().double(), positive.flatten().bool()
    n_pos, n_neg = positive.sum().item(), (~positive).sum().item()
    _, inv, counts = torch.unique(score, return_inverse=True, return_counts=True)  # sorted distinct values
    end = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    rank = (end - (counts - 1) / 2)[inv]  # average rank within the tie group
    return (rank[positive].sum().item() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@torch.no_grad()
def doubt(m, drafts, targets):
    """u_i = 1 - p(x_i | draft) at the visible tokens, from one call on the drafts as the samplers present
    them (DSL: endpoint states z = gamma_max e_x). For a token-mode (MDLM) model this is the raw network
    output at a visible position, which its training never scores (the MDLM loss counts masked positions only)
    and which its sampling never reads (SUBS copies visible tokens). Returns (AUROC of u for wrong vs right
    visible tokens, mean u on wrong, mean u on right)."""
    m.eval()
    p = torch.softmax(m(x=drafts)[..., :V].double(), -1)  # (B, L, V)
    u = 1 - p.gather(-1, drafts.clamp(max=V - 1)[..., None])[..., 0]  # (B, L)
    vis = drafts != V
    wrong = (drafts != targets)[vis]
    return auroc(u[vis], wrong), u[vis][wrong].mean().item(), u[vis][~wrong].mean().item()


def run(steps_train=1500, seeds=100, seed=0, Ts=(3, 7), verbose=True):
    """Train both models, then apply every rule to every model that supports it. Returns (results
    {model: {rule: {column: rate}}}, detection {model: (AUROC, mean u wrong, mean u right)}, trajectories of
    the __CDBFF repair {arm label: (11, seeds, L)}, the models)."""
    say = print if verbose else (lambda *a, **k: None)
    models = {'oracle': Oracle(16, TOY_SNR['gamma_max'])}
    for obj in ('dsl', 'mdlm'):
        t0 = time.time()
        models[obj] = train_toy(obj, steps_train, seed=seed)
        say(
            f"trained {obj.upper():4s} tiny DiT ({models[obj].num_params() / 1e3:.0f}k params), "
            f"{steps_train} steps, batch 64: {time.time() - t0:.1f}s"
        )
    draft, target = encode(DRAFT)[None].repeat(seeds, 1), encode(TARGET)[None].repeat(seeds, 1)
    rand_drafts, rand_targets = corrupt(seeds, generator=torch.Generator().manual_seed(seed + 1))
    # error detection on more drafts than the repair uses: 500 drafts = 1000 wrong and 1500 right visible
    # tokens
    det_drafts, det_targets = corrupt(500, generator=torch.Generator().manual_seed(seed + 2))
    results, detect, trajs = {}, {}, {}
    for key, m in models.items():
        detect[key] = doubt(m, det_drafts, det_targets)
        results[key] = {}
        for rule in RULES:
            if rule in sample.DSL_ONLY and not m.dsl:
                continue
            r = {}
            r[DRAFT], trajs[arm_label(key, rule)] = recovery(m, draft, target, rule, seed=seed)
            r['random'], _ = recovery(m, rand_drafts, rand_targets, rule, seed=seed)
            for T in Ts:
                r[f'valid T={T}'] = validity(m, T, rule, seed=seed)
            results[key][rule] = r
    return results, detect, trajs, models


# ---------------------------------------------------------------------------------------------
# Reporting


def mark(ids, target):
    """Draft as text: wrong tokens in lower case, hidden as '_'."""
    return ''.join(c if c == '_' or c == t else c.lower() for c, t in zip(decode(ids), target))


def fig_labels(trajs):
    return [arm_label(k, r) for k, r in FIG_ARMS if arm_label(k, r) in trajs]


def print_trajectories(trajs, row=0, labels=None):
    labels = labels or fig_labels(trajs)
    print(
        f"\n{DRAFT} -> {TARGET}, chain {row} (lower case: wrong token, _: hidden; one line per denoiser call)"
    )
    print('step  ' + ''.join(f'{lab:<20s}' for lab in labels))
    for k in range(trajs[labels[0]].shape[0]):
        print(f'{k:>4d}  ' + ''.join(f'{mark(trajs[lab][k, row], TARGET):<20s}' for lab in labels))


def print_table(results, detect, seeds):
    """One block per column of `run` (rows = models, columns = rules; '-': the model cannot run the rule),
    then the error-detection AUROC of u per model."""
    cols = list(results['oracle']['conf'])
    names = {DRAFT: f'{DRAFT} repaired in 10 calls', 'random': 'random 2+2 drafts repaired in 10 calls'}
    for c in cols:
        what = names.get(c, f'{c}: unconditional samples that are one of the 7 shifts (% of 200 samples)')
        print(f"\n{what}" + (f" (% of {seeds} chains)" if c in names else ''))
        print(f"{'':8s}" + ''.join(f'{r:>13s}' for r in RULES))
        for key, res in results.items():
            print(
                f'{MODELS[key]:8s}'
                + ''.join(f'{100 * res[r][c]:>12.0f}%' if r in res else f'{"-":>13s}' for r in RULES)
            )
    print("\nwrong vs right visible tokens of 500 random 2+2 drafts, u = 1 - p(x_i | draft)")
    print(f"{'':8s}{'AUROC':>8s}{'mean u wrong':>15s}{'mean u right':>15s}")
    for key, (a, uw, ur) in detect.items():
        print(f'{MODELS[key]:8s}{a:>8.3f}{uw:>15.3f}{ur:>15.3f}')


def plot(trajs, path, results=None, row=0, labels=None):
    """Tokens by step for each arm (Fig. 3 style, the arms of FIG_ARMS): rows = denoiser calls, columns =
    positions; black = correct, red on pink = wrong, grey '_' = hidden. Titles carry the recovery rate when
    results are given. Returns the path, or None (with one line) when matplotlib is missing."""
    labels = labels or fig_labels(trajs)
    rates = {arm_label(k, r): v[DRAFT] for k, res in (results or {}).items() for r, v in res.items()}
    panels = []
    for lab in labels:
        t = trajs[lab][:, row]  # (steps, L)
        cells = [
            [
                ('_', figures.GREY, False, True)
                if int(v) == V
                else (
                    ALPHABET[int(v)],
                    'black' if int(v) == ALPHABET.index(TARGET[i]) else figures.RED,
                    int(v) != ALPHABET.index(TARGET[i]),
                    True,
                )
                for i, v in enumerate(tk)
            ]
            for tk in t
        ]
        panels.append((lab + (f"\n{100 * rates[lab]:.0f}% recovered" if results else ''), cells))
    try:
        return figures.toy_repair(
            panels, path, f'repairing {DRAFT} (target {TARGET}), chain {row}: red = wrong, grey _ = hidden'
        )
    except ImportError as e:
        print(f"toy.py: {e.args[0]} (or pass --no_plot)")
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description='the cyclic toy: DSL self-correction (Wu et al. 2026, Fig. 3)')
    ap.add_argument('--steps_train', type=int, default=1500, help='training steps of each model')
    ap.add_argument('--seeds', type=int, default=100, help='independent repair/sampling chains per arm')
    ap.add_argument('--seed', type=int, default=0, help='training and sampling seed')
    ap.add_argument('--out_dir', default='out', help='where the figure goes')
    ap.add_argument('--no_plot', action='store_true', help='skip the figure (no matplotlib needed)')
    ap.error = lambda msg: ap.exit(2, f"toy.py: error: {msg}\n")  # one line, no usage dump
    args = ap.parse_args(argv)
    # checked before the training (~30 s): a mistake fails at once and writes nothing
    for k in ('steps_train', 'seeds'):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1, got {getattr(args, k)}")
    if not args.no_plot and (err := data.folder_error(args.out_dir)):
        ap.error(err)
    # one thread: at L = 7 and 64 wide, intra-op parallelism costs more in synchronisation than it gains
    # (2 threads on a busy 2-core machine were 5-10x slower per step)
    torch.set_num_threads(1)
    t0 = time.time()
    results, detect, trajs, _ = run(args.steps_train, args.seeds, args.seed)
    print_trajectories(trajs)
    print_table(results, detect, args.seeds)
    if not args.no_plot:
        path = plot(trajs, os.path.join(args.out_dir, 'toy_fig3.png'), results)
        if path:
            print(f"\nsaved the refinement trajectories to {path}")
    print(f"wall time {time.time() - t0:.1f}s")


if __name__ == '__main__':
    main()
