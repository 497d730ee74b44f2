"""
Sampling: one loop over per-token SNR states, many paths (docs/method.md §10-16).

    python sample.py --ckpt out/ckpt.pt --steps 128 --sampler remdm-loop --num_samples 64
    python sample.py --ckpt out/ckpt.pt --steps 48 --sampler hybrid --prompt "ROMEO:" --seed 1

State: token ids x (B, L) with mask_id where hidden; discrete samplers keep every token at an endpoint
(gamma = 0: hidden, gamma = gamma_max: x visible), which a DSL model reads through its endpoint table and
an MDLM model reads as [MASK]/token. `steps` is the number of steps T; a step whose input equals the last
one's makes no denoiser call (ReMDM's cache), so the real NFE per sample is at most T. --gamma_commit g
(DSL) shows revealed non-prompt tokens at z = g e_x instead (a second table, no extra cost), --commit_noise 1
as channel samples g e_x + sqrt(g) eps (through the converter); the returned ids are committed at gamma_max.

Remasking rules, the loop schedule and token draws live in rules.py (ReMDM, Wang et al. 2025, eqs. 8-9).
Rules choose sigma: mdlm, cap, rescale, conf, loop, budget, uncertainty (DSL). Other paths: roar (exact
counts, random order), sde (continuous localization, DSL), hybrid (sde then discrete, DSL); ar for causal models.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

import common
import data
import figures
import model as modellib
import noise
import rules

DSL_ONLY = ('uncertainty', 'sde', 'hybrid')
DISCRETE = ('mdlm', 'cap', 'rescale', 'conf', 'loop', 'budget', 'uncertainty')
SAMPLERS = DISCRETE + ('roar', 'sde', 'hybrid', 'ar')

# ---------------------------------------------------------------------------------------------
# One denoiser call


def call(model, info, out_idx=None, **state):
    """One denoiser evaluation on state x=ids (optionally commit=mask) or z=vectors, timed so that the loop's own
    overhead can be reported. Real NFE, as ReMDM's sampler (_ddpm_caching_update reuses its last output when
    torch.allclose(xs, x)): a sample whose input equals its input at the previous call needs no evaluation, so
    info['nfe_rows'] (B,) counts per sample only the calls whose input changed, and when no sample's input
    changed the blocks are not run: the kept hidden states go through the head at the new positions (the same
    logits, bit for bit). info['calls'] counts the forwards actually run for the batch."""
    key = {k: v.clone() for k, v in state.items()}  # clones: a loop may update its state in place (sde's z)
    last, keep = info.get('last'), {} if hasattr(model, 'head') else None
    B = next(iter(state.values())).shape[0]
    changed = torch.ones(B, dtype=torch.bool, device=key[next(iter(key))].device)
    if (
        last is not None
        and last[0].keys() == key.keys()
        and all(last[0][k].shape == v.shape for k, v in key.items())
    ):
        changed = torch.stack([(last[0][k] != v).reshape(B, -1).any(1) for k, v in key.items()]).any(
            0
        )  # (B,)
    info['nfe_rows'] = info['nfe_rows'] + changed.long() if 'nfe_rows' in info else changed.long()
    cuda = changed.is_cuda  # synchronise so that the timing is the forward's
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if last is not None and last[1] is not None and not changed.any():
        out, keep = model.head(*last[1], out_idx), dict(hc=last[1])
    else:
        out = (
            model(out_idx=out_idx, keep=keep, **state)
            if keep is not None
            else model(out_idx=out_idx, **state)
        )
        info['calls'] += 1
    if cuda:
        torch.cuda.synchronize()
    info['model_s'] += time.perf_counter() - t0
    info['last'] = (key, keep and keep.get('hc'))
    return out


# ---------------------------------------------------------------------------------------------
# The commit state: the SNR at which a revealed token is shown to a DSL model


def table_gamma(model, kn):
    """gamma_commit of the commit table that a discrete sampler with knobs kn reads (None: it needs none)."""
    gc = kn.get('gamma_commit')
    if not model.dsl or gc is None or gc == model.config['gamma_max'] or kn.get('commit_noise'):
        return None
    return gc


def present(model, x, commit, gamma_commit, eps=None):
    """Model input of a discrete state: hidden tokens at z = 0, prompt tokens at gamma_max e_x, and the revealed
    free tokens (commit (B, L) bool) at z = gamma_commit e_x, or with eps (B, L, d) the channel sample
    z = gamma_commit e_x + sqrt(gamma_commit) eps (docs/method.md §1). The deterministic state is a row of the
    commit table (no converter); the noisy one goes through the z path: a V-wide softmax at every position."""
    if eps is None and getattr(model, 'commit_gamma', None) == gamma_commit:
        return dict(x=x, commit=commit)
    z = model.endpoint_z(x, torch.where(commit, gamma_commit, model.config['gamma_max']))  # (B, L, d)
    if eps is not None:
        z = z + (commit * math.sqrt(gamma_commit))[..., None] * eps
    return dict(z=z)


# ---------------------------------------------------------------------------------------------
# The loops


def discrete_loop(model, x, fixed, alphas, name, knobs, top_p, g, info, traj, psi=None, exact=False):
    """x (B, L) ids, fixed (B, L) bool never remasked, alphas (T, 2, B or 1, 1): each step's (alpha_t, alpha_s),
    the revealed fraction of free tokens before and after it.
    Each step: one call, the head only at positions drawn now (plus every free one for `uncertainty`, plus
    the ones the last step must fill). Positions still hidden after the last step get that step's argmax.
    DSL models see revealed free tokens at knobs' gamma_commit (default gamma_max: the endpoint table), with
    channel noise if commit_noise (eps drawn when the token is revealed, kept while it stays). The final step
    commits at gamma_max: the returned ids are the endpoint state; every call, the last included, sees the
    state its step starts from."""
    V, mask, T = model.vocab_size, model.mask_id, alphas.shape[0]
    free = ~fixed
    n_free = free.sum(1, keepdim=True)  # (B, 1)
    psi = torch.zeros(x.shape, device=x.device) if psi is None else psi  # prob at reveal (0: unknown)
    gc, noisy = knobs.get('gamma_commit') or model.config.get('gamma_max'), bool(knobs.get('commit_noise'))
    soft = model.dsl and (noisy or gc != model.config['gamma_max'])  # else today's endpoints, bit for bit
    eps = (
        torch.randn(*x.shape, model.config['noise_dim'], generator=g, device=x.device)
        if soft and noisy
        else None
    )
    for k in range(T):
        (a_t, a_s), last = alphas[k], k == T - 1
        hidden = x == mask  # (B, L)
        eligible = ~hidden & free
        state = present(model, x, eligible, gc, eps) if soft else dict(x=x)
        u = None
        if name == 'uncertainty':  # needs p_theta(x_i | state) at every revealed token: head on all free
            lg_free = call(model, info, out_idx=free, **state)[:, :V]  # (N_free, V)
            lp = rules.token_logprobs(lg_free, x[free], eligible[free])  # (N_revealed,)
            u = torch.zeros(x.shape, device=x.device)
            u[eligible] = 1 - lp.exp()
        sigma, reveal_p = rules.step_probs(name, knobs, a_t, a_s, hidden, eligible, n_free, T, psi, u)
        if last and not model.dsl:
            sigma = torch.zeros_like(sigma)  # SUBS: an MDLM model has no prediction for a visible token
        count = None
        if exact:  # roar: reveal floor(alpha_s n_free) tokens in total, in random order
            count = (a_s * n_free + 1e-6).floor() - (n_free - hidden.sum(1, keepdim=True))
        remask, reveal = rules.draw_moves(sigma, reveal_p, hidden, eligible, g, count)
        left = (hidden & ~reveal | remask) if last else torch.zeros_like(hidden)  # filled by argmax below
        need = reveal | left
        lg = lg_free[need[free]] if name == 'uncertainty' else call(model, info, out_idx=need, **state)[:, :V]
        tok, p_tok = rules.sample_tokens(lg[reveal[need]], top_p, g, nucleus=knobs['nucleus'])
        x = x.masked_fill(remask, mask)
        x[reveal] = tok
        psi[reveal] = p_tok.float()  # ReMDM's conf: the probability under the nucleus it was drawn from
        if eps is not None:  # a newly revealed token is a fresh channel sample
            eps[reveal] = torch.randn(int(reveal.sum()), eps.shape[-1], generator=g, device=x.device)
        if last:
            x[left] = lg[left[need]].argmax(-1)
        if traj is not None:
            traj.append(x.clone())
    return x


def sde_loop(model, x, fixed, gammas, g, info, traj):
    """Continuous localization dz = xhat(z) dgamma + dW on the free tokens (prompt held at gamma_max e_x),
    Euler-Maruyama on the grid gammas (S+1,), one call per interval. Returns (argmax ids, logits (N_free, V))
    where the logits are updated by the last increment: p(v | z + dz) ∝ p(v | z) exp(<dz, e_v>) per token."""
    V, E = model.vocab_size, model.E().float()  # (V, d) unit codes
    free = ~fixed
    z = model.endpoint_z(torch.where(free, torch.full_like(x, model.mask_id), x)).float()  # (B, L, d)
    lg = None
    for k in range(len(gammas) - 1):
        dg = float(gammas[k + 1] - gammas[k])
        lg = call(model, info, z=z, out_idx=free)[:, :V].float()  # (N_free, V)
        with torch.autocast(z.device.type, enabled=False):  # the path itself stays in fp32
            xhat = torch.softmax(lg, -1) @ E  # posterior-mean embedding (N_free, d)
            dz = xhat * dg + math.sqrt(dg) * torch.randn(xhat.shape, generator=g, device=z.device)
            z[free] += dz
            lg = lg + dz @ E.t()
        if traj is not None:
            traj.append(x.masked_scatter(free, lg.argmax(-1)))
    return x.masked_scatter(free, lg.argmax(-1)), lg


def ar_loop(model, x, fixed, top_p, g, info, traj, nucleus='remdm'):
    """Left to right with a causal model, conditioned exactly as noise.ar_loss trains it: the context is a
    [MASK] start token followed by x_0..x_{i-1}, and position i is read at the last context position.
    info['token_prob'] (B, L): the probability each drawn token had under the distribution it was drawn from."""
    B, L = x.shape
    start = torch.full((B, 1), model.mask_id, dtype=x.dtype, device=x.device)
    info['token_prob'] = torch.ones(x.shape, dtype=torch.float64, device=x.device)  # prompt positions: 1
    for i in range(L):
        if fixed[:, i].all():
            continue
        inp = torch.cat([start, x[:, :i]], 1)  # (B, i + 1)
        sel = torch.zeros(inp.shape, dtype=torch.bool, device=x.device)
        sel[:, -1] = True  # head at the last position only
        tok, p = rules.sample_tokens(
            call(model, info, x=inp, out_idx=sel)[:, : model.vocab_size], top_p, g, nucleus=nucleus
        )
        x[:, i] = torch.where(fixed[:, i], x[:, i], tok)
        info['token_prob'][:, i] = torch.where(fixed[:, i], 1.0, p)
        if traj is not None:
            traj.append(x.clone())
    return x


# ---------------------------------------------------------------------------------------------
# Public API


def sampler_name(sampler):
    """'remdm-loop' -> 'loop'; an unknown name is a ValueError listing the valid ones."""
    name = sampler[len('remdm-') :] if sampler.startswith('remdm-') else sampler
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    return name


def _check(model, sampler, steps, top_p, kw):
    sampler = sampler_name(sampler)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    rules.check_options(top_p, kw)
    causal = model.config.get('causal', False)
    if causal != (sampler == 'ar'):
        raise ValueError(
            "sampler 'ar' needs a causal checkpoint"
            if not causal
            else f"this checkpoint is causal (autoregressive): use --sampler ar, not '{sampler}'"
        )
    if not model.dsl and (sampler in DSL_ONLY):
        raise ValueError(
            f"sampler '{sampler}' needs a DSL checkpoint; this one is token-mode (MDLM): "
            f"use mdlm, cap, rescale, conf, loop, budget or roar"
        )
    gc, noisy = kw.get('gamma_commit'), kw.get('commit_noise', 0)
    if gc is not None or noisy:
        if not model.dsl:
            raise ValueError(
                "gamma_commit / commit_noise set the SNR of a DSL model's revealed tokens; "
                "this checkpoint is token-mode (MDLM)"
            )
        gmax = model.config['gamma_max']
        # above gamma_max: a state no training row ever shows (endpoints sit at or below gamma_max)
        if gc is not None and (
            isinstance(gc, bool) or not isinstance(gc, (int, float)) or not 0 < gc <= gmax
        ):
            raise ValueError(f"gamma_commit must be a number in (0, gamma_max = {gmax:g}], got {gc}")
    return sampler, {**rules.KNOBS, **kw}


def _device(model):
    return next(iter(list(model.parameters()) + list(model.buffers()))).device


@torch.no_grad()
def _run(model, fn, gamma_commit=None):
    """Eval mode and (DSL) the endpoint table, with the commit table at gamma_commit if given, for the duration
    of one generation (a table the caller built is kept if it fits, and restored); info with timings."""
    tabled = model.dsl and hasattr(model, 'build_endpoint_table')
    saved = (model.table, model.commit_table, model.commit_gamma) if tabled else None
    was_training = model.training
    model.eval()
    if tabled and (model.table is None or gamma_commit is not None and model.commit_gamma != gamma_commit):
        model.build_endpoint_table(gamma_commit)  # discrete states: a row lookup instead of the converter
    info = dict(calls=0, model_s=0.0)
    t0 = time.perf_counter()
    try:
        x = fn(info)
    finally:
        if tabled:
            model.table, model.commit_table, model.commit_gamma = saved
        model.train(was_training)
    info['total_s'] = time.perf_counter() - t0
    info.pop('last', None)  # the kept hidden states
    info['nfe_rows'] = info['nfe_rows'].tolist() if 'nfe_rows' in info else [0] * len(x)
    info['nfe'] = sum(info['nfe_rows']) / len(x)  # real NFE per sample (= calls at batch 1)
    assert (x != model.mask_id).all(), "internal error: a [MASK] survived sampling"
    return x, info


def generate(
    model,
    num_samples,
    L,
    steps,
    sampler='mdlm',
    top_p=0.9,
    prompt=None,
    generator=None,
    trajectory=False,
    **kw,
):
    """Unconditional/prompted generation. prompt: None or (L,) / (B, L) int64 ids with model.mask_id where
    free (those given are revealed from the start and never remasked).
    sampler in {'mdlm','cap','rescale','conf','loop','budget','uncertainty','roar','sde','hybrid','ar'}
    ('remdm-' prefixes accepted); kw: knobs of rules.KNOBS. Returns (x (B, L) int64 without mask_id, info dict
    with 'nfe' (real denoiser calls per sample, their mean), 'nfe_rows' (per sample), 'calls' (forwards run for
    the batch), 'model_s', 'total_s' and, if trajectory, 'trajectory': one (B, L) state per call, mask_id
    where hidden (sde: the current argmax). 'ar' makes one call per free position (steps is not used).
    top_p is the nucleus of every token draw; the sde drift uses the full posterior mean."""
    sampler, kn = _check(model, sampler, steps, top_p, kw)
    dev, B, mask = _device(model), num_samples, model.mask_id
    x = torch.full((B, L), mask, dtype=torch.long, device=dev)
    if prompt is not None:
        prompt = torch.as_tensor(prompt, device=dev).long()
        if prompt.shape[-1] > L:
            raise ValueError(f"the prompt ({prompt.shape[-1]} tokens) is longer than the sequence (L = {L})")
        x[:, : prompt.shape[-1]] = prompt.expand(B, -1)
    fixed = x != mask  # (B, L)
    traj = [] if trajectory else None
    T, gmax = steps, model.config['gamma_max']

    def fn(info):
        if sampler == 'ar':
            return ar_loop(model, x, fixed, top_p, generator, info, traj, kn['nucleus'])
        if sampler in ('sde', 'hybrid'):
            g_end = kn['gamma_end'] or gmax
            if sampler == 'sde':
                grid = noise.snr_grid(g_end, T + 1, kn['gamma_first'] or g_end / 100)  # (T+1,)
                return sde_loop(model, x, fixed, grid, generator, info, traj)[0]
            T_c = min(T - 1, T // 4 if kn['T_c'] is None else kn['T_c'])
            xs, psi = x, None
            if (
                T_c > 0
            ):  # continuous phase, then commit confident positions (z = gamma_max e_argmax), hide the rest
                g_sw = kn['gamma_switch'] or gmax / 4
                xs, lg = sde_loop(
                    model,
                    x,
                    fixed,
                    noise.snr_grid(g_sw, T_c + 1, kn['gamma_first'] or g_sw / 100),
                    generator,
                    info,
                    traj,
                )
                pmax = torch.softmax(lg, -1).max(-1).values  # (N_free,)
                xs = xs.clone()
                xs[~fixed] = torch.where(pmax >= kn['commit_p'], xs[~fixed], mask)
                psi = torch.zeros(x.shape, device=dev).masked_scatter(~fixed, pmax)
            n_free = (~fixed).sum(1, keepdim=True).clamp(min=1)
            a0 = ((xs != mask) & ~fixed).sum(1, keepdim=True) / n_free  # (B, 1) committed fraction
            alphas = rules.grid_pairs(
                a0 + (1 - a0) * torch.linspace(0, 1, T - T_c + 1, device=dev)[:, None, None]
            )
            return discrete_loop(model, xs, fixed, alphas, kn['rule'], kn, top_p, generator, info, traj, psi)
        if sampler == 'loop':
            alphas = torch.tensor(rules.loop_alphas(T, kn['t_on'], kn['t_off'], kn['alpha_on']), device=dev)
        else:  # alpha_t = 1 - t on t_k = 1 - k/T
            alphas = rules.grid_pairs(torch.arange(T + 1, device=dev) / T)
        alphas = alphas.float()[:, :, None, None]  # (T, 2, 1, 1)
        name = 'mdlm' if sampler == 'roar' else sampler
        return discrete_loop(
            model, x, fixed, alphas, name, kn, top_p, generator, info, traj, exact=sampler == 'roar'
        )

    out, info = _run(model, fn, table_gamma(model, kn))
    info.update(sampler=sampler, steps=steps, top_p=top_p, knobs=dict(kw))
    if trajectory:
        info['trajectory'] = traj
    return out, info


def repair(
    model, draft, steps, sampler='uncertainty', alpha=None, top_p=1.0, generator=None, trajectory=False, **kw
):
    """Draft repair (docs/method.md §11): draft (B, L) ids, mask_id at hidden positions, the rest visible (possibly
    wrong) and remaskable. Runs the rule at frozen alpha (float or (B,); default: each draft's revealed
    fraction) for `steps` calls, then reveals what is left with the last call's argmax. Returns (x, info)."""
    sampler, kn = _check(model, sampler, steps, top_p, kw)
    if sampler not in DISCRETE:
        raise ValueError(f"repair needs a discrete rule ({', '.join(DISCRETE)}), got '{sampler}'")
    dev = _device(model)
    x = torch.as_tensor(draft, device=dev).long()
    x = x[None] if x.dim() == 1 else x.clone()
    if alpha is None:
        alpha = (x != model.mask_id).float().mean(1)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=dev).expand(x.shape[0])[:, None]  # (B, 1)
    alphas = a[None, None].expand(steps, 2, -1, -1)  # (T, 2, B, 1) frozen
    traj = [] if trajectory else None
    fixed = torch.zeros_like(x, dtype=torch.bool)
    out, info = _run(
        model,
        lambda info: discrete_loop(model, x, fixed, alphas, sampler, kn, top_p, generator, info, traj),
        table_gamma(model, kn),
    )
    info.update(sampler=sampler, steps=steps, top_p=top_p, alpha=a[:, 0].tolist(), knobs=dict(kw))
    if trajectory:
        info['trajectory'] = traj
    return out, info


# ---------------------------------------------------------------------------------------------
# Batches, for the CLI and the sweep


@torch.no_grad()
def draw(
    model,
    n,
    L,
    steps,
    sampler='mdlm',
    top_p=0.9,
    prompt=None,
    generator=None,
    batch_size=64,
    bar=None,
    trajectory=False,
    **kw,
):
    """n samples through generate in batches of batch_size, one generator for all; a DSL model's endpoint tables
    are built once, not per batch. Returns (x (n, L), info of the first batch with 'nfe_rows' of all samples, 'nfe'
    their mean, and 'calls' and the timings summed over batches)."""
    if model.dsl:
        model.eval().build_endpoint_table(table_gamma(model, kw))
    xs, info = [], None
    try:
        for i in range(0, n, batch_size):
            x, inf = generate(
                model,
                min(batch_size, n - i),
                L,
                steps,
                sampler,
                top_p,
                prompt,
                generator,
                trajectory=trajectory and not xs,
                **kw,
            )
            xs.append(x)
            if info is None:
                info = dict(inf, nfe_rows=[], calls=0, model_s=0.0, total_s=0.0)
            for k in ('nfe_rows', 'calls', 'model_s', 'total_s'):
                info[k] += inf[k]
            if bar is not None:
                bar.update(len(x))
    finally:
        if model.dsl:
            model.drop_endpoint_table()
    nfe = sum(info['nfe_rows']) / n
    info.update(nfe=int(nfe) if nfe == int(nfe) else round(nfe, 3), batches=len(xs))
    return torch.cat(xs), info


# ---------------------------------------------------------------------------------------------
# CLI


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description='sample from a DSL / MDLM / AR checkpoint (docs/method.md §10-16)'
    )
    ap.error = lambda msg: _die(msg)  # one line, no usage dump
    add = ap.add_argument
    add('--ckpt', required=True, help='train.py checkpoint, MDLM .ckpt/.safetensors or hub id')
    add(
        '--trust_checkpoint',
        action='store_true',
        help='unpickle in full: only for files from a source you trust',
    )
    add(
        '--sampler',
        default='',
        help=', '.join(SAMPLERS) + " ('remdm-' prefix accepted); '' = uncertainty for DSL "
        "models (the best measured, results/quickstart/README.md), mdlm for MDLM, ar for AR",
    )
    add(
        '--steps', type=int, default=128, help='sampler steps T (the denoiser calls per sample are at most T)'
    )
    add('--num_samples', type=int, default=16)
    add('--batch_size', type=int, default=16)
    add('--seq_len', type=int, default=0, help="L; 0 = the checkpoint's block_size")
    add('--top_p', type=float, default=0.9)
    add('--seed', type=int, default=0)
    add('--prompt', default='', help='text at the start of every sample, never remasked')
    add('--suffix', default='', help='text at the end (with --prompt: infilling)')
    add(
        '--out',
        default='',
        help='JSONL file (default: samples_<sampler>_T<steps>_s<seed>.jsonl next to the checkpoint)',
    )
    add('--meta', default='', help="meta.json for decoding (default: the checkpoint's data)")
    add('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    add('--dtype', default='bfloat16', choices=['bfloat16', 'float32'], help='autocast on CUDA')
    add('--no_ema', action='store_true', help='use the raw weights instead of the EMA')
    add('--profile', action='store_true', help='report samples/s and the time outside the forward')
    add('--quiet', action='store_true', help='do not print the samples')
    add('--trajectory', default='', help='PNG: the refinement of the first sample, one row per call')
    for k, v in rules.KNOBS.items():
        add(
            f'--{k}',
            type=str if k in ('rule', 'nucleus') else int if k in ('T_c', 'commit_noise') else float,
            default=None,
            help=f'rule knob (default {v})' if v is not None else 'rule knob',
        )
    return ap.parse_args(argv)


def _die(msg):
    print(f"sample.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, KeyError, OSError) as e:  # user errors: one line, no traceback
        _die(e.args[0] if len(e.args) == 1 else str(e))  # str: OSError(errno, text, path) names the path


def check_cli(args, sampler, kw):
    """Everything that needs no model, checked first: a mistake fails at once and nothing is written.
    Returns the output path."""
    if args.steps < 1 or args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--steps, --num_samples and --batch_size must be >= 1")
    rules.check_options(args.top_p, kw)
    if args.seq_len < 0:
        raise ValueError(f"--seq_len must be >= 0 (0 = the checkpoint's block_size), got {args.seq_len}")
    if err := common.device_error(args.device):
        raise ValueError(err)
    if os.path.isdir(args.ckpt):
        raise ValueError(
            f"--ckpt {args.ckpt} is a folder: pass a file, e.g. {os.path.join(args.ckpt, 'ckpt.pt')}"
        )
    if args.meta and not os.path.isfile(args.meta):
        raise ValueError(f"--meta {args.meta}: no such file (pass the meta.json of the prepared data folder)")
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(args.ckpt)), f'samples_{sampler}_T{args.steps}_s{args.seed}.jsonl'
    )
    if args.trajectory and (not args.trajectory.endswith('.png') or os.path.isdir(args.trajectory)):
        raise ValueError(f"--trajectory {args.trajectory}: pass a .png file name")
    if os.path.isdir(out):
        raise ValueError(
            f"--out {out} is a folder: pass a file name, e.g. {os.path.join(out, 'samples.jsonl')}"
        )
    if err := data.folder_error(os.path.dirname(os.path.abspath(out)), '--out'):
        raise ValueError(err)
    return out


def run(args):
    sampler = (
        sampler_name(args.sampler) if args.sampler else None
    )  # checked before loading a large checkpoint
    kw = {k: getattr(args, k) for k in rules.KNOBS if getattr(args, k) is not None}
    out = check_cli(args, sampler or 'auto', kw)
    try:
        model = modellib.load_mdlm(args.ckpt, use_ema=not args.no_ema, trust=args.trust_checkpoint)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
    ):  # not found, or keys/shapes that do not fit: clear already
        raise
    except Exception as e:  # torch.load of a truncated file, a text file, a pickle of something else
        raise ValueError(
            f"cannot read --ckpt {args.ckpt}: truncated, corrupt or not a checkpoint ({type(e).__name__}); "
            f"pass a train.py checkpoint, an MDLM .ckpt/.safetensors file or a hub id"
        )
    model = model.to(args.device)
    if sampler is None:  # the default: the model's own best rule
        sampler = 'ar' if model.config.get('causal') else 'uncertainty' if model.dsl else 'mdlm'
        out = args.out or out.replace('samples_auto_', f'samples_{sampler}_')
    _check(model, sampler, args.steps, args.top_p, kw)
    encode, decode, train_cfg = data.checkpoint_codec(
        args.ckpt, model.vocab_size, args.meta, args.trust_checkpoint
    )
    L = args.seq_len or train_cfg.get('block_size') or (1024 if model.vocab_size == 50257 else 0)
    if not L:
        raise ValueError("sequence length unknown: pass --seq_len")
    prompt = data.prompt_ids(encode, args.prompt, args.suffix, L, model.mask_id)
    if decode is None:
        print("sample.py: no tokenizer found for this checkpoint: writing token ids only", file=sys.stderr)
    if sampler == 'ar' and args.steps != L - len(encode(args.prompt) if args.prompt else []):
        print(
            f"sample.py: note: 'ar' makes one call per generated token; --steps {args.steps} is not used",
            file=sys.stderr,
        )
    amp = torch.autocast(
        'cuda', dtype=torch.bfloat16, enabled=args.device.startswith('cuda') and args.dtype == 'bfloat16'
    )
    from tqdm import tqdm

    bar = tqdm(total=args.num_samples, desc=f'{sampler} T={args.steps}', unit='sample', disable=args.quiet)
    with amp:
        x, info = draw(
            model,
            args.num_samples,
            L,
            args.steps,
            sampler,
            args.top_p,
            prompt,
            torch.Generator(args.device).manual_seed(args.seed),
            args.batch_size,
            bar,
            trajectory=bool(args.trajectory),
            **kw,
        )
    bar.close()
    if 'trajectory' in info:
        figures.trajectory(
            [t[0] for t in info['trajectory']],
            model.mask_id,
            (lambda i: decode([i])) if decode else str,
            args.trajectory,
            f"{sampler}, T = {args.steps}, seed {args.seed}: {os.path.relpath(args.ckpt)}",
        )
        print(f"wrote the refinement of sample 0 to {args.trajectory}", file=sys.stderr)
    records = [
        dict(
            index=i,
            text=decode(row) if decode else None,
            ids=row,
            sampler=sampler,
            steps=args.steps,
            nfe=info['nfe_rows'][i],
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
            seq_len=L,
            prompt=args.prompt,
            suffix=args.suffix,
            knobs=kw,
            ckpt=args.ckpt,
        )
        for i, row in enumerate(x.tolist())
    ]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    if not args.quiet:
        for r in records:
            print(f"--- sample {r['index']}\n{r['text'] if decode else r['ids']}")
    print(
        f"wrote {len(records)} samples ({sampler}, T = {args.steps}, {info['nfe']:g} NFE per sample, top_p {args.top_p}, "
        f"seed {args.seed}) to {out}",
        file=sys.stderr,
    )
    if args.profile:
        t = info['total_s']
        print(
            f"profile: {len(records) / t:.2f} samples/s at batch {min(args.batch_size, args.num_samples)}, "
            f"{1e3 * t / max(1, info['calls']):.1f} ms per denoiser call, "
            f"{100 * (1 - info['model_s'] / t):.1f}% of the step time outside the model forward",
            file=sys.stderr,
        )


if __name__ == '__main__':
    main()
