"""
Sampling: one loop over per-token SNR states, many paths (DESIGN.md §5).

    python sample.py --ckpt out/ckpt.pt --steps 128 --sampler remdm-loop --num_samples 64
    python sample.py --ckpt out/ckpt.pt --steps 48 --sampler hybrid --prompt "ROMEO:" --seed 1

State: token ids x (B, L) with mask_id where hidden; discrete samplers keep every token at an endpoint
(gamma = 0: hidden, gamma = gamma_max: x visible), which a DSL model reads through its endpoint table and
an MDLM model reads as [MASK]/token. `steps` is always the number of denoiser calls (NFE). --gamma_commit g
(DSL) shows revealed non-prompt tokens at z = g e_x instead (a second table, no extra cost), --commit_noise 1
as channel samples g e_x + sqrt(g) eps (through the converter); the returned ids are committed at gamma_max.

Discrete step t -> s on alpha_t (alpha_t = 1 - t for MDLM; ReMDM, Wang et al. 2025, eqs. 8-9):
  revealed (non-prompt) token -> hidden with prob sigma_i,   sigma_max = min(1, (1 - alpha_s) / alpha_t)
  hidden token -> revealed with prob (alpha_s - (1 - sigma_i) alpha_t) / (1 - alpha_t), value ~ top-p(p_theta)
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

import model as modellib
import noise

DSL_ONLY = ('uncertainty', 'sde', 'hybrid')
DISCRETE = ('mdlm', 'cap', 'rescale', 'conf', 'loop', 'budget', 'uncertainty')
SAMPLERS = DISCRETE + ('roar', 'sde', 'hybrid', 'ar')
# rule knobs (None: the rule's own default). eta: cap 0.008, rescale 0.015, loop 0.02 (ReMDM's defaults)
KNOBS = dict(eta=None, rho=1.0, kappa=1.0, t_on=0.55, t_off=0.05, alpha_on=0.9,
             gamma_end=None,      # sde: final SNR (default gamma_max)
             gamma_first=None,    # sde/hybrid: first nonzero SNR of the log grid (default gamma_end / 100)
             gamma_switch=None,   # hybrid: SNR at which the continuous phase stops (default gamma_max / 4)
             T_c=None,            # hybrid: continuous steps (default T // 4)
             commit_p=0.9,        # hybrid: commit positions whose posterior max >= commit_p, hide the rest
             rule='uncertainty',  # hybrid: the rule of the discrete phase (it can undo a bad commit)
             nucleus='remdm',     # top-p convention: remdm (ReMDM's code, the default) | hf (Hugging Face)
             gamma_commit=None,   # DSL discrete samplers: SNR of revealed non-prompt tokens (default gamma_max)
             commit_noise=0)      # 1: show them as channel samples gamma_commit e_x + sqrt(gamma_commit) eps
HYBRID_RULES = tuple(r for r in DISCRETE if r != 'loop')  # hybrid's discrete phase has no frozen-alpha stretch
INF = math.inf
# valid knob values, in interval notation: '[' and ']' include the bound, '(' and ')' exclude it; t_off <= t_on
KNOB_RANGES = dict(eta=(0, 1, '[]'), rho=(0, INF, '[)'), kappa=(0, INF, '[)'), t_on=(0, 1, '()'),
                   t_off=(0, 1, '[)'), alpha_on=(0, 1, '[]'), gamma_end=(0, INF, '()'), gamma_first=(0, INF, '()'),
                   gamma_switch=(0, INF, '()'), T_c=(0, INF, '[)'), commit_p=(0, 1, '[]'))


# ---------------------------------------------------------------------------------------------
# Remasking rules: pure functions of the step (alpha_t, alpha_s (B, 1)) and the state; sigma (B, L) or (B, 1)

def sigma_max(a_t, a_s):
    """Largest remasking probability that keeps the reveal probability <= 1 (ReMDM eq. 8)."""
    return torch.where(a_t > 0, (1 - a_s) / a_t.clamp(min=1e-12), torch.ones_like(a_t)).clamp(0, 1)


def mdlm(a_t, a_s, **_):
    return torch.zeros_like(a_t)


def cap(a_t, a_s, eta=0.008, **_):
    return sigma_max(a_t, a_s).clamp(max=eta)


def rescale(a_t, a_s, eta=0.015, **_):
    return eta * sigma_max(a_t, a_s)


def conf(a_t, a_s, psi, eligible, **_):
    """sigma_i = sigma_max * softmax_i(-psi_i) over revealed positions, psi = prob at reveal time."""
    w = torch.softmax((-psi).masked_fill(~eligible, -math.inf), dim=1).nan_to_num(0.0)  # rows w/o eligible: 0
    return sigma_max(a_t, a_s) * w


def loop(a_t, a_s, eta=0.02, **_):
    """Remask at constant eta only while alpha is frozen (phase 2 of ReMDM-loop, or draft repair)."""
    return torch.where(a_t == a_s, eta * torch.ones_like(a_t), torch.zeros_like(a_t)).clamp(max=sigma_max(a_t, a_s))


def budget(a_t, a_s, T, rho=1.0, **_):
    """Step-budget-aware cap: eta = rho / T, so E[#remask events per token] does not depend on T."""
    return cap(a_t, a_s, eta=rho / T)


def uncertainty(a_t, a_s, u, kappa=1.0, **_):
    """DSL: remask each revealed token with prob min(1, kappa * u_i), u_i = 1 - p_theta(x_i | state)."""
    return (kappa * u).clamp(0, 1)


RULES = dict(mdlm=mdlm, cap=cap, rescale=rescale, conf=conf, loop=loop, budget=budget, uncertainty=uncertainty)


def loop_alphas(T, t_on=0.55, t_off=0.05, alpha_on=0.9, eps=1e-5):
    """ReMDM-loop's (alpha_t, alpha_s) for each of the T steps t -> s = t - dt on ReMDM's grid
    t_k = 1 - k dt, dt = (1 - eps) / T. As in ReMDM's code the phase is chosen from t alone: t > t_on, alpha
    rises linearly to alpha_on (MDLM); t_off < t <= t_on, alpha is frozen at alpha_on (remasking); t <= t_off,
    alpha rises from alpha_on towards 1 (MDLM). At T = 128 that is 58 / 64 / 6 steps, at T = 1024
    461 / 512 / 51. A step that straddles a phase boundary uses its own phase's formula at both ends (so
    alpha_s may pass alpha_on slightly), as ReMDM does; what the last step leaves hidden (a fraction ~eps)
    takes the argmax, as ReMDM's final noise removal does."""
    def rise(t):
        return alpha_on * (1 - t) / (1 - t_on)

    def final(t):
        return 1 - t * (1 - alpha_on) / t_off
    dt, out = (1 - eps) / T, []
    for k in range(T):
        t = 1 - k * dt
        out.append((rise(t), rise(t - dt)) if t > t_on else (final(t), final(t - dt)) if t <= t_off
                   else (alpha_on, alpha_on))
    return out


def grid_pairs(alphas):
    """A grid of revealed fractions (T+1, ...) -> the steps' (alpha_t, alpha_s) pairs (T, 2, ...)."""
    return torch.stack([alphas[:-1], alphas[1:]], 1)


def step_probs(name, knobs, a_t, a_s, hidden, eligible, n_free, T, psi=None, u=None):
    """Per-position probabilities of one step: (sigma (B, L) remask where eligible, reveal (B, L) where hidden)."""
    kn = {k: v for k, v in knobs.items() if v is not None}
    raw = RULES[name](a_t, a_s, T=T, psi=psi, eligible=eligible, u=u, **kn).expand(hidden.shape)  # (B, L)
    sigma = (raw * eligible).float()  # prompt and hidden positions are never remasked
    if name == 'uncertainty':  # reveal so that E[#revealed free tokens after the step] = alpha_s * n_free
        kept = ((1 - sigma) * eligible).sum(1, keepdim=True)
        r = (a_s * n_free - kept) / hidden.sum(1, keepdim=True).clamp(min=1)
    else:  # ReMDM eq. 9 per token; under conf a hidden token's sigma is 0 (weight 0), else the row's sigma
        r = (a_s - (1 - raw) * a_t) / (1 - a_t).clamp(min=1e-12)
    return sigma, (r.clamp(0, 1) * hidden).float()


def draw_moves(sigma, reveal_p, hidden, eligible, g, exact_count=None):
    """Bernoulli draws of one step: (remask (B, L), reveal (B, L)); a single uniform per position (the sets are
    disjoint). exact_count (B, 1): reveal exactly that many hidden positions, uniformly (roar)."""
    r = torch.rand(hidden.shape, generator=g, device=hidden.device)
    if exact_count is not None:  # rank of each hidden position in a random order
        rank = r.masked_fill(~hidden, 2.0).argsort(1).argsort(1)
        return torch.zeros_like(hidden), hidden & (rank < exact_count)
    return eligible & (r < sigma), hidden & (r < reveal_p)


# ---------------------------------------------------------------------------------------------
# Token draws: nucleus in float64 on the rows being sampled only, in row chunks

def sample_tokens(logits, top_p, g, chunk=1 << 22, nucleus='remdm'):
    """logits (N, V) over real tokens -> (tokens (N,), their probability under the distribution they were drawn
    from (N,), i.e. the renormalised nucleus). float64: float32 sampling over large vocabularies truncates the
    tail (Zheng et al. 2024). nucleus='remdm' (default, ReMDM's and MDLM's code): sort, keep tokens while the
    cumulative probability is <= top_p, the top token always. 'hf' (Hugging Face): the smallest prefix with
    mass >= top_p, i.e. also the token that crosses top_p; less greedy, and not what published numbers used."""
    N, V = logits.shape
    u = torch.rand(N, 1, generator=g, device=logits.device, dtype=torch.float64)
    tok, prob, rows = [], [], max(1, chunk // V)
    for i in range(0, N, rows):
        p = torch.softmax(logits[i:i + rows].double(), dim=-1)  # (n, V)
        ui = u[i:i + len(p)]
        if top_p < 1:
            ps, idx = p.sort(dim=-1, descending=True)
            c = ps.cumsum(-1)
            before = c if nucleus == 'remdm' else c - ps  # remdm: c_j <= p; hf: c_{j-1} < p
            keep = (before <= top_p if nucleus == 'remdm' else before < top_p).sum(-1, keepdim=True).clamp(min=1)
            mass = c.gather(-1, keep - 1)  # (n, 1) nucleus mass
            j = torch.searchsorted(c, ui * mass).clamp(max=keep - 1)
            t, q = idx.gather(-1, j), ps.gather(-1, j) / mass
        else:
            c = p.cumsum(-1)
            t = torch.searchsorted(c, ui * c[:, -1:]).clamp(max=V - 1)
            q = p.gather(-1, t)
        tok.append(t[:, 0])
        prob.append(q[:, 0])
    if not tok:
        return logits.new_zeros(0, dtype=torch.long), logits.new_zeros(0, dtype=torch.float64)
    return torch.cat(tok), torch.cat(prob)


def call(model, info, out_idx=None, **state):
    """One denoiser evaluation (one NFE) on state x=ids (optionally commit=mask) or z=vectors, timed so that
    the loop's own overhead can be reported."""
    cuda = next(iter(state.values())).is_cuda  # synchronise so that the timing is the forward's
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(out_idx=out_idx, **state)
    if cuda:
        torch.cuda.synchronize()
    info['model_s'] += time.perf_counter() - t0
    info['nfe'] += 1
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
    z = gamma_commit e_x + sqrt(gamma_commit) eps (DESIGN.md §1). The deterministic state is a row of the
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
    eps = torch.randn(*x.shape, model.config['noise_dim'], generator=g, device=x.device) if soft and noisy else None
    for k in range(T):
        (a_t, a_s), last = alphas[k], k == T - 1
        hidden = x == mask  # (B, L)
        eligible = ~hidden & free
        state = present(model, x, eligible, gc, eps) if soft else dict(x=x)
        u = None
        if name == 'uncertainty':  # needs p_theta(x_i | state) at every revealed token: head on all free
            lg_free = call(model, info, out_idx=free, **state)[:, :V]  # (N_free, V)
            lp = torch.log_softmax(lg_free.float(), -1).gather(-1, x[free].clamp(max=V - 1)[:, None])[:, 0]
            u = torch.zeros(x.shape, device=x.device)
            u[free] = 1 - lp.exp()
        sigma, reveal_p = step_probs(name, knobs, a_t, a_s, hidden, eligible, n_free, T, psi, u)
        if last and not model.dsl:
            sigma = torch.zeros_like(sigma)  # SUBS: an MDLM model has no prediction for a visible token
        count = None
        if exact:  # roar: reveal floor(alpha_s n_free) tokens in total, in random order
            count = (a_s * n_free + 1e-6).floor() - (n_free - hidden.sum(1, keepdim=True))
        remask, reveal = draw_moves(sigma, reveal_p, hidden, eligible, g, count)
        left = (hidden & ~reveal | remask) if last else torch.zeros_like(hidden)  # filled by argmax below
        need = reveal | left
        lg = lg_free[need[free]] if name == 'uncertainty' else call(model, info, out_idx=need, **state)[:, :V]
        tok, p_tok = sample_tokens(lg[reveal[need]], top_p, g, nucleus=knobs['nucleus'])
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
        tok, p = sample_tokens(call(model, info, x=inp, out_idx=sel)[:, :model.vocab_size], top_p, g,
                               nucleus=nucleus)
        x[:, i] = torch.where(fixed[:, i], x[:, i], tok)
        info['token_prob'][:, i] = torch.where(fixed[:, i], 1.0, p)
        if traj is not None:
            traj.append(x.clone())
    return x


# ---------------------------------------------------------------------------------------------
# Public API

def sampler_name(sampler):
    """'remdm-loop' -> 'loop'; an unknown name is a ValueError listing the valid ones."""
    name = sampler[len('remdm-'):] if sampler.startswith('remdm-') else sampler
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    return name


def check_options(top_p, kw):
    """top_p and the knobs in their valid ranges (ValueError naming the range); needs no model, so the CLI
    calls it before loading one. NaN fails every range."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    bad = sorted(set(kw) - set(KNOBS))
    if bad:
        raise ValueError(f"unknown sampler option(s) {bad}: valid ones are {sorted(KNOBS)}")
    for k, v in kw.items():
        if k in KNOB_RANGES and v is not None:
            lo, hi, br = KNOB_RANGES[k]
            if not ((lo <= v if br[0] == '[' else lo < v) and (v <= hi if br[1] == ']' else v < hi)):
                raise ValueError(f"{k} must lie in {br[0]}{lo}, {hi}{br[1]}, got {v}")
    kn = {**KNOBS, **{k: v for k, v in kw.items() if v is not None}}
    if kn['t_off'] > kn['t_on']:  # the loop schedule's phases would overlap
        raise ValueError(f"t_off must lie in [0, t_on] (t_on = {kn['t_on']}), got {kn['t_off']}")


def _check(model, sampler, steps, top_p, kw):
    sampler = sampler_name(sampler)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    check_options(top_p, kw)
    causal = model.config.get('causal', False)
    if causal != (sampler == 'ar'):
        raise ValueError("sampler 'ar' needs a causal checkpoint" if not causal else
                         f"this checkpoint is causal (autoregressive): use --sampler ar, not '{sampler}'")
    inner = kw.get('rule') or KNOBS['rule']
    if sampler == 'hybrid' and inner not in HYBRID_RULES:  # loop would never remask on a rising schedule
        raise ValueError(f"hybrid rule '{inner}' must be one of {', '.join(HYBRID_RULES)} (its discrete phase "
                         f"follows a rising schedule, so 'loop' would never remask)")
    if kw.get('nucleus', 'remdm') not in ('remdm', 'hf'):
        raise ValueError(f"nucleus must be 'remdm' (ReMDM's top-p) or 'hf' (Hugging Face's), got '{kw['nucleus']}'")
    if not model.dsl and (sampler in DSL_ONLY):
        raise ValueError(f"sampler '{sampler}' needs a DSL checkpoint; this one is token-mode (MDLM): "
                         f"use mdlm, cap, rescale, conf, loop, budget or roar")
    gc, noisy = kw.get('gamma_commit'), kw.get('commit_noise', 0)
    if noisy not in (0, 1):  # also False / True
        raise ValueError(f"commit_noise must be 0 (deterministic commit state) or 1 (channel noise), got {noisy}")
    if gc is not None or noisy:
        if not model.dsl:
            raise ValueError("gamma_commit / commit_noise set the SNR of a DSL model's revealed tokens; "
                             "this checkpoint is token-mode (MDLM)")
        gmax = model.config['gamma_max']
        # above gamma_max: a state no training row ever shows (endpoints sit at or below gamma_max)
        if gc is not None and (isinstance(gc, bool) or not isinstance(gc, (int, float)) or not 0 < gc <= gmax):
            raise ValueError(f"gamma_commit must be a number in (0, gamma_max = {gmax:g}], got {gc}")
    return sampler, {**KNOBS, **kw}


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
    info = dict(nfe=0, model_s=0.0)
    t0 = time.perf_counter()
    try:
        x = fn(info)
    finally:
        if tabled:
            model.table, model.commit_table, model.commit_gamma = saved
        model.train(was_training)
    info['total_s'] = time.perf_counter() - t0
    assert (x != model.mask_id).all(), "internal error: a [MASK] survived sampling"
    return x, info


def generate(model, num_samples, L, steps, sampler='mdlm', top_p=0.9, prompt=None, generator=None,
             trajectory=False, **kw):
    """Unconditional/prompted generation. prompt: None or (L,) / (B, L) int64 ids with model.mask_id where
    free (those given are revealed from the start and never remasked).
    sampler in {'mdlm','cap','rescale','conf','loop','budget','uncertainty','roar','sde','hybrid','ar'}
    ('remdm-' prefixes accepted); kw: knobs of KNOBS. Returns (x (B, L) int64 without mask_id, info dict
    with 'nfe', 'model_s', 'total_s' and, if trajectory, 'trajectory': one (B, L) state per call, mask_id
    where hidden (sde: the current argmax). 'ar' makes one call per free position (steps is not used).
    top_p is the nucleus of every token draw; the sde drift uses the full posterior mean."""
    sampler, kn = _check(model, sampler, steps, top_p, kw)
    dev, B, mask = _device(model), num_samples, model.mask_id
    x = torch.full((B, L), mask, dtype=torch.long, device=dev)
    if prompt is not None:
        prompt = torch.as_tensor(prompt, device=dev).long()
        if prompt.shape[-1] > L:
            raise ValueError(f"the prompt ({prompt.shape[-1]} tokens) is longer than the sequence (L = {L})")
        x[:, :prompt.shape[-1]] = prompt.expand(B, -1)
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
            if T_c > 0:  # continuous phase, then commit confident positions (z = gamma_max e_argmax), hide the rest
                g_sw = kn['gamma_switch'] or gmax / 4
                xs, lg = sde_loop(model, x, fixed, noise.snr_grid(g_sw, T_c + 1, kn['gamma_first'] or g_sw / 100),
                                  generator, info, traj)
                pmax = torch.softmax(lg, -1).max(-1).values  # (N_free,)
                xs = xs.clone()
                xs[~fixed] = torch.where(pmax >= kn['commit_p'], xs[~fixed], mask)
                psi = torch.zeros(x.shape, device=dev).masked_scatter(~fixed, pmax)
            n_free = (~fixed).sum(1, keepdim=True).clamp(min=1)
            a0 = ((xs != mask) & ~fixed).sum(1, keepdim=True) / n_free  # (B, 1) committed fraction
            alphas = grid_pairs(a0 + (1 - a0) * torch.linspace(0, 1, T - T_c + 1, device=dev)[:, None, None])
            return discrete_loop(model, xs, fixed, alphas, kn['rule'], kn, top_p, generator, info, traj, psi)
        if sampler == 'loop':
            alphas = torch.tensor(loop_alphas(T, kn['t_on'], kn['t_off'], kn['alpha_on']), device=dev)
        else:  # alpha_t = 1 - t on t_k = 1 - k/T
            alphas = grid_pairs(torch.arange(T + 1, device=dev) / T)
        alphas = alphas.float()[:, :, None, None]  # (T, 2, 1, 1)
        name = 'mdlm' if sampler == 'roar' else sampler
        return discrete_loop(model, x, fixed, alphas, name, kn, top_p, generator, info, traj,
                             exact=sampler == 'roar')

    out, info = _run(model, fn, table_gamma(model, kn))
    info.update(sampler=sampler, steps=steps, top_p=top_p, knobs=dict(kw))
    if trajectory:
        info['trajectory'] = traj
    return out, info


def repair(model, draft, steps, sampler='uncertainty', alpha=None, top_p=1.0, generator=None, trajectory=False,
           **kw):
    """Draft repair (DESIGN.md §5): draft (B, L) ids, mask_id at hidden positions, the rest visible (possibly
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
    out, info = _run(model, lambda info: discrete_loop(model, x, fixed, alphas, sampler, kn, top_p, generator,
                                                       info, traj), table_gamma(model, kn))
    info.update(sampler=sampler, steps=steps, top_p=top_p, alpha=a[:, 0].tolist(), knobs=dict(kw))
    if trajectory:
        info['trajectory'] = traj
    return out, info


# ---------------------------------------------------------------------------------------------
# CLI

def get_codec(ckpt_path, model, meta_path=''):
    """(encode, decode, train config): the tokenizer of the checkpoint's data (the meta dict train.py stores
    in it, or --meta), GPT-2 BPE for 50257-token models, else (None, None): ids only."""
    import data
    try:  # mmap: reading the dicts does not load the weights a second time
        ck = torch.load(ckpt_path, map_location='cpu', weights_only=False, mmap=True)
    except Exception:  # MDLM .safetensors / hub ids carry no meta
        ck = {}
    ck = ck if isinstance(ck, dict) else {}
    meta = data.load_meta(os.path.dirname(meta_path) or '.') if meta_path else ck.get('meta')
    if meta and meta['vocab_size'] == model.vocab_size:
        return (*data.get_tokenizer(meta), ck.get('config') or {})
    if model.vocab_size == 50257:
        enc = data.gpt2_encoding()
        return enc.encode_ordinary, lambda ids: enc.decode([int(i) for i in ids]), ck.get('config') or {}
    return None, None, ck.get('config') or {}


def plot_trajectory(states, mask_id, piece, path, title=''):
    """One sample's refinement (the toy's Fig. 3 on real text): rows = denoiser calls, columns = positions.
    Grey '_' = hidden; bold = revealed at this call; red on pink = remasked at this call (visible before, hidden
    now) or replaced by another token. states: (L,) ids per call; piece(id) -> its text."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    S = torch.stack([s.cpu() for s in states])  # (K, L)
    K, L = S.shape
    show = lambda v: piece(v).replace('\n', '⏎').replace(' ', '·')[:6] or '?'
    w = max(1, max(len(show(int(v))) for v in S[-1]))  # widest final token sets the column width
    fig, ax = plt.subplots(figsize=(0.11 * w * L + 1, 0.2 * K + 1))
    for k in range(K):
        for i in range(L):
            v, prev = int(S[k, i]), int(S[k - 1, i]) if k else mask_id
            if v == mask_id:
                bad = prev != mask_id  # remasked now
                if bad:
                    ax.add_patch(plt.Rectangle((i - .5, k - .5), 1, 1, color='#fbd5d5', lw=0))
                ax.text(i, k, '_', ha='center', va='center', fontsize=7, family='monospace',
                        color='#d62728' if bad else '#bbbbbb')
                continue
            changed = prev != mask_id and prev != v
            if changed:
                ax.add_patch(plt.Rectangle((i - .5, k - .5), 1, 1, color='#fbd5d5', lw=0))
            ax.text(i, k, show(v), ha='center', va='center', fontsize=7, family='monospace',
                    color='#d62728' if changed else 'black', weight='bold' if prev != v else 'normal')
    ax.set(xlim=(-.5, L - .5), ylim=(K - .5, -.5), xlabel='position', ylabel='denoiser call')
    ax.set_yticks(range(0, K, max(1, K // 16)))
    ax.tick_params(length=0, labelsize=7)
    for sp in ax.spines.values():
        sp.set_visible(False)
    ax.set_title(title + '\nbold = revealed now, red = remasked or replaced now, grey _ = hidden', fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    ap = argparse.ArgumentParser(description='sample from a DSL / MDLM / AR checkpoint (DESIGN.md §5)')
    ap.error = lambda msg: _die(msg)  # one line, no usage dump
    ap.add_argument('--ckpt', required=True, help='train.py checkpoint, MDLM .ckpt/.safetensors or hub id')
    ap.add_argument('--sampler', default='mdlm', help=', '.join(SAMPLERS) + " ('remdm-' prefix accepted)")
    ap.add_argument('--steps', type=int, default=128, help='denoiser evaluations (NFE) per sample')
    ap.add_argument('--num_samples', type=int, default=16)
    ap.add_argument('--batch_size', type=int, default=16)
    ap.add_argument('--seq_len', type=int, default=0, help="L; 0 = the checkpoint's block_size")
    ap.add_argument('--top_p', type=float, default=0.9)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--prompt', default='', help='text at the start of every sample, never remasked')
    ap.add_argument('--suffix', default='', help='text at the end (with --prompt: infilling)')
    ap.add_argument('--out', default='', help='JSONL file (default: samples_<sampler>_T<steps>_s<seed>.jsonl '
                                               'next to the checkpoint)')
    ap.add_argument('--meta', default='', help="meta.json for decoding (default: the checkpoint's data)")
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'], help='autocast on CUDA')
    ap.add_argument('--no_ema', action='store_true', help='use the raw weights instead of the EMA')
    ap.add_argument('--profile', action='store_true', help='report samples/s and the time outside the forward')
    ap.add_argument('--quiet', action='store_true', help='do not print the samples')
    ap.add_argument('--trajectory', default='', help='PNG: the refinement of the first sample, one row per call')
    for k, v in KNOBS.items():
        ap.add_argument(f'--{k}', type=str if k in ('rule', 'nucleus') else int if k in ('T_c', 'commit_noise')
                        else float, default=None,
                        help=f'rule knob (default {v})' if v is not None else 'rule knob')
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


def run(args):
    sampler = sampler_name(args.sampler)  # checked before loading a large checkpoint
    if args.steps < 1 or args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--steps, --num_samples and --batch_size must be >= 1")
    kw = {k: getattr(args, k) for k in KNOBS if getattr(args, k) is not None}
    # everything that needs no model is checked first: a mistake fails at once and nothing is written
    check_options(args.top_p, kw)
    if args.seq_len < 0:
        raise ValueError(f"--seq_len must be >= 0 (0 = the checkpoint's block_size), got {args.seq_len}")
    if err := modellib.device_error(args.device):
        raise ValueError(err)
    if os.path.isdir(args.ckpt):
        raise ValueError(f"--ckpt {args.ckpt} is a folder: pass the checkpoint file in it "
                         f"(e.g. {os.path.join(args.ckpt, 'ckpt.pt')})")
    if args.meta and not os.path.isfile(args.meta):
        raise ValueError(f"--meta {args.meta}: no such file (pass the meta.json of the prepared data folder)")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.ckpt)),
                                   f'samples_{sampler}_T{args.steps}_s{args.seed}.jsonl')
    if args.trajectory and (not args.trajectory.endswith('.png') or os.path.isdir(args.trajectory)):
        raise ValueError(f"--trajectory {args.trajectory}: pass a .png file name")
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder: pass a file name, e.g. {os.path.join(out, 'samples.jsonl')}")
    import data
    if err := data.folder_error(os.path.dirname(os.path.abspath(out)), '--out'):
        raise ValueError(err)
    try:
        model = modellib.load_mdlm(args.ckpt, use_ema=not args.no_ema)
    except (FileNotFoundError, KeyError, ValueError):  # not found, or keys/shapes that do not fit: clear already
        raise
    except Exception as e:  # torch.load of a truncated file, a text file, a pickle of something else
        raise ValueError(f"cannot read --ckpt {args.ckpt}: truncated, corrupt or not a checkpoint ({type(e).__name__}); "
                         f"pass a train.py checkpoint, an MDLM .ckpt/.safetensors file or a hub id")
    model = model.to(args.device)
    _check(model, sampler, args.steps, args.top_p, kw)
    encode, decode, train_cfg = get_codec(args.ckpt, model, args.meta)
    L = args.seq_len or train_cfg.get('block_size') or (1024 if model.vocab_size == 50257 else 0)
    if not L:
        raise ValueError("sequence length unknown: pass --seq_len")
    prompt = None
    if args.prompt or args.suffix:
        if encode is None:
            raise ValueError("cannot encode --prompt/--suffix: no tokenizer found (pass --meta path/to/meta.json)")
        try:
            pre, suf = encode(args.prompt), encode(args.suffix)
        except ValueError as e:  # a character outside a char vocabulary
            raise ValueError(f"--prompt/--suffix: {e}")
        if len(pre) + len(suf) > L:
            raise ValueError(f"the prompt ({len(pre) + len(suf)} tokens) is longer than the sequence (L = {L})")
        prompt = torch.full((L,), model.mask_id, dtype=torch.long)
        prompt[:len(pre)] = torch.tensor(pre, dtype=torch.long)
        if suf:
            prompt[L - len(suf):] = torch.tensor(suf, dtype=torch.long)
    if decode is None:
        print("sample.py: no tokenizer found for this checkpoint: writing token ids only", file=sys.stderr)
    if sampler == 'ar' and args.steps != L - len(encode(args.prompt) if args.prompt else []):
        print(f"sample.py: note: 'ar' makes one call per generated token; --steps {args.steps} is not used",
              file=sys.stderr)
    g = torch.Generator(args.device).manual_seed(args.seed)
    if model.dsl:  # once for all batches (generate() would otherwise build and drop it per call)
        model.eval().build_endpoint_table(table_gamma(model, kw))
    amp = torch.autocast('cuda', dtype=torch.bfloat16, enabled=args.device.startswith('cuda') and
                         args.dtype == 'bfloat16')
    from tqdm import tqdm
    records, nfe, model_s, total_s = [], 0, 0.0, 0.0
    bar = tqdm(total=args.num_samples, desc=f'{sampler} T={args.steps}', unit='sample', disable=args.quiet)
    while len(records) < args.num_samples:
        B = min(args.batch_size, args.num_samples - len(records))
        with amp:
            x, info = generate(model, B, L, args.steps, sampler, args.top_p, prompt, g,
                               trajectory=bool(args.trajectory) and not records, **kw)
        if 'trajectory' in info:
            piece = (lambda i: decode([i])) if decode else str
            plot_trajectory([t[0] for t in info['trajectory']], model.mask_id, piece, args.trajectory,
                            f"{sampler}, T = {args.steps}, seed {args.seed}: {os.path.relpath(args.ckpt)}")
            print(f"wrote the refinement of sample 0 to {args.trajectory}", file=sys.stderr)
        nfe, model_s, total_s = info['nfe'], model_s + info['model_s'], total_s + info['total_s']
        for row in x.tolist():
            records.append(dict(index=len(records), text=decode(row) if decode else None, ids=row,
                                sampler=sampler, steps=args.steps, nfe=nfe, top_p=args.top_p, seed=args.seed,
                                batch_size=args.batch_size, seq_len=L, prompt=args.prompt, suffix=args.suffix,
                                knobs=kw, ckpt=args.ckpt))
        bar.update(B)
    bar.close()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
        for r in records:
            f.write(json.dumps(r) + '\n')
    if not args.quiet:
        for r in records:
            print(f"--- sample {r['index']}\n{r['text'] if decode else r['ids']}")
    print(f"wrote {len(records)} samples ({sampler}, {nfe} NFE each, top_p {args.top_p}, seed {args.seed}) to {out}",
          file=sys.stderr)
    if args.profile:
        print(f"profile: {len(records) / total_s:.2f} samples/s at batch {min(args.batch_size, args.num_samples)}, "
              f"{1e3 * total_s / max(1, nfe * math.ceil(len(records) / args.batch_size)):.1f} ms/step, "
              f"{100 * (1 - model_s / total_s):.1f}% of the step time outside the model forward", file=sys.stderr)


if __name__ == '__main__':
    main()
