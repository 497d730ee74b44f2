"""
Sampling: one loop over per-token SNR states, many paths (docs/method.md §10-16).

    python sample.py --ckpt out/ckpt.pt --steps 128 --sampler remdm-loop --num_samples 64
    python sample.py --ckpt out/ckpt.pt --steps 48 --sampler hybrid --prompt "ROMEO:" --seed 1

State: token ids x (B, L) with mask_id where hidden; discrete samplers keep every token at an endpoint
(gamma = 0: hidden, gamma = gamma_max: x visible), which a DSL model reads through its endpoint table and
an MDLM model reads as [MASK]/token. `steps` is the number of steps T; a step whose input equals the last
one's makes no denoiser call (ReMDM's cache), so the real NFE per sample is at most T. --gamma_commit
(DSL) shows revealed non-prompt tokens at z = gamma_commit e_x instead (a second table, no extra cost),
--commit_noise 1 as channel samples gamma_commit e_x + sqrt(gamma_commit) eps (through the converter); the
returned ids are committed at gamma_max.

Remasking rules, the loop schedule and token draws live in rules.py (ReMDM, Wang et al. 2025, eqs. 8-9).
Rules choose sigma, the remasking probability: mdlm, cap, rescale, conf, loop, budget, uncertainty (DSL).
Other paths: roar (exact counts, random order), sde (continuous localization, DSL), hybrid (sde then
discrete, DSL); ar for causal models.

Reading order: discrete_loop (the method), the other loops, then the machinery: `call` (one denoiser call
with ReMDM's cache and timing), the commit state, the public API (generate, repair, draw) and the CLI.
"""

import argparse
import contextlib
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
# The loops


def discrete_loop(
    model, x, fixed, alphas, *, rule, knobs, top_p, generator, info, traj=None, psi=None, exact=False
):
    """The discrete sampler: T steps t -> s, each one denoiser call, then the rule's remask and reveal moves.

    x (B, L) ids, fixed (B, L) bool never remasked (the prompt), alphas (T, 2, B or 1, 1): each step's
    (alpha_t, alpha_s), the revealed fraction of free tokens before and after it. rule: a name of rules.RULES,
    knobs: rules.KNOBS with the caller's values, top_p: the nucleus of every token draw, info: the record
    that `call` updates (real NFE, timings), traj: a list that receives the state after every step (or
    None), psi (B, L): each visible token's probability when it was revealed (conf's score; 0: unknown),
    exact: reveal exactly floor(alpha_s n_free) tokens in total, in random order (roar).

    Each step: one call, the head only at positions drawn now (plus every free one for `uncertainty`, plus
    the ones the last step must fill). Positions still hidden after the last step get that step's argmax.
    DSL models see revealed free tokens at knobs' gamma_commit (default gamma_max: the endpoint table), with
    channel noise if commit_noise (eps drawn when the token is revealed, kept while it stays). The final step
    commits at gamma_max: the returned ids are the endpoint state; every call, the last included, sees the
    state its step starts from."""
    V, mask, T = model.vocab_size, model.mask_id, alphas.shape[0]
    free = ~fixed
    n_free = free.sum(1, keepdim=True)  # (B, 1)
    if psi is None:
        psi = torch.zeros(x.shape, device=x.device)

    # The commit state (DSL): revealed free tokens at gamma_commit, as channel samples if commit_noise.
    # Without either knob the model sees the endpoint state, bit for bit (shows_commit_state is False).
    gamma_commit = knobs.get('gamma_commit') or model.config.get('gamma_max')
    noisy = bool(knobs.get('commit_noise'))
    shows_commit_state = model.dsl and (noisy or gamma_commit != model.config['gamma_max'])
    eps = None
    if shows_commit_state and noisy:
        eps = torch.randn(*x.shape, model.config['noise_dim'], generator=generator, device=x.device)

    for k in range(T):
        a_t, a_s = alphas[k]
        last = k == T - 1
        hidden = x == mask  # (B, L)
        # the revealed free tokens: the only ones a rule may remask
        eligible = ~hidden & free
        if shows_commit_state:
            state = model_input(model, x, eligible, gamma_commit, eps)
        else:
            state = dict(x=x)

        # uncertainty needs u_i = 1 - p_theta(x_i | state) at every revealed token (rules.uncertainty_scores),
        # so its one call runs the head at every free position; the reveals below reuse these logits
        u = None
        if rule == 'uncertainty':
            logits_free = call(model, info, out_idx=free, **state)[:, :V]  # (N_free, V)
            u = rules.uncertainty_scores(logits_free, x, free, eligible)

        # the rule's remask probabilities sigma and the reveal probabilities they imply (rules.step_probs;
        # for uncertainty: sigma from rules.uncertainty, the reveals from rules.uncertainty_reveal)
        sigma, reveal_p = rules.step_probs(rule, knobs, a_t, a_s, hidden, eligible, n_free, T, psi, u)
        if last and not model.dsl:
            # SUBS: an MDLM model has no prediction for a visible token
            sigma = torch.zeros_like(sigma)
        count = None
        if exact:
            # roar: reveal floor(alpha_s n_free) tokens in total, in random order
            count = (a_s * n_free + 1e-6).floor() - (n_free - hidden.sum(1, keepdim=True))
        remask, reveal = rules.draw_moves(sigma, reveal_p, hidden, eligible, generator, count)

        # the last step fills every position it leaves hidden with its argmax
        if last:
            left = hidden & ~reveal | remask
        else:
            left = torch.zeros_like(hidden)
        need = reveal | left
        if rule == 'uncertainty':
            logits = logits_free[need[free]]
        else:
            logits = call(model, info, out_idx=need, **state)[:, :V]
        tok, p_tok = rules.sample_tokens(
            logits[reveal[need]], top_p, generator, nucleus=knobs['nucleus'], temperature=knobs['temperature']
        )
        x = x.masked_fill(remask, mask)
        x[reveal] = tok
        # ReMDM's conf: the probability under the nucleus it was drawn from
        psi[reveal] = p_tok.float()
        if eps is not None:
            # a newly revealed token is a fresh channel sample
            eps[reveal] = torch.randn(int(reveal.sum()), eps.shape[-1], generator=generator, device=x.device)
        if last:
            x[left] = logits[left[need]].argmax(-1)
        if traj is not None:
            traj.append(x.clone())
    return x


def sde_loop(model, x, fixed, gammas, *, generator, info, traj=None):
    """Continuous localization dz = xhat(z) dgamma + dW on the free tokens (prompt held at gamma_max e_x),
    Euler-Maruyama on the grid gammas (S+1,), one call per interval. Returns (argmax ids, logits (N_free, V))
    where the logits are updated by the last increment, per token:
    p(v | z + dz) ∝ p(v | z) exp(<dz, e_v>)."""
    V, E = model.vocab_size, model.E().float()  # (V, d) unit codes
    free = ~fixed
    z = model.endpoint_z(torch.where(free, torch.full_like(x, model.mask_id), x)).float()  # (B, L, d)
    logits = None
    for k in range(len(gammas) - 1):
        dg = float(gammas[k + 1] - gammas[k])
        logits = call(model, info, z=z, out_idx=free)[:, :V].float()  # (N_free, V)
        # the path itself stays in fp32
        with torch.autocast(z.device.type, enabled=False):
            # posterior-mean embedding (N_free, d)
            xhat = torch.softmax(logits, -1) @ E
            dz = xhat * dg + math.sqrt(dg) * torch.randn(xhat.shape, generator=generator, device=z.device)
            z[free] += dz
            logits = logits + dz @ E.t()
        if traj is not None:
            traj.append(x.masked_scatter(free, logits.argmax(-1)))
    return x.masked_scatter(free, logits.argmax(-1)), logits


def hybrid_loop(model, x, fixed, *, steps, knobs, top_p, generator, info, traj=None):
    """sde for T_c steps up to gamma_switch, then commit the confident positions (posterior max >= commit_p,
    at z = gamma_max e_argmax), hide the rest, and finish with the discrete rule knobs['rule'] on a schedule
    rising from the committed fraction to 1 in the T - T_c remaining steps."""
    T, mask, gamma_max = steps, model.mask_id, model.config['gamma_max']
    T_c = knobs['T_c']
    if T_c is None:
        T_c = T // 4
    T_c = min(T - 1, T_c)
    xs, psi = x, None
    if T_c > 0:
        # continuous phase, then commit confident positions (z = gamma_max e_argmax), hide the rest
        gamma_switch = knobs['gamma_switch'] or gamma_max / 4
        grid = noise.snr_grid(gamma_switch, T_c + 1, knobs['gamma_first'] or gamma_switch / 100)
        xs, logits = sde_loop(model, x, fixed, grid, generator=generator, info=info, traj=traj)
        pmax = torch.softmax(logits, -1).max(-1).values  # (N_free,)
        xs = xs.clone()
        xs[~fixed] = torch.where(pmax >= knobs['commit_p'], xs[~fixed], mask)
        psi = torch.zeros(x.shape, device=x.device).masked_scatter(~fixed, pmax)
    n_free = (~fixed).sum(1, keepdim=True).clamp(min=1)
    # (B, 1) committed fraction
    a0 = ((xs != mask) & ~fixed).sum(1, keepdim=True) / n_free
    alphas = rules.grid_pairs(
        a0 + (1 - a0) * torch.linspace(0, 1, T - T_c + 1, device=x.device)[:, None, None]
    )
    return discrete_loop(
        model,
        xs,
        fixed,
        alphas,
        rule=knobs['rule'],
        knobs=knobs,
        top_p=top_p,
        generator=generator,
        info=info,
        traj=traj,
        psi=psi,
    )


def ar_loop(model, x, fixed, *, top_p, generator, info, traj=None, nucleus='remdm', temperature=1.0):
    """Left to right with a causal model, conditioned exactly as noise.ar_loss trains it: the context is a
    [MASK] start token followed by x_0..x_{i-1}, and position i is read at the last context position.
    info['token_prob'] (B, L): the probability each drawn token had under the distribution it was drawn
    from."""
    B, L = x.shape
    start = torch.full((B, 1), model.mask_id, dtype=x.dtype, device=x.device)
    # prompt positions: 1
    info['token_prob'] = torch.ones(x.shape, dtype=torch.float64, device=x.device)
    for i in range(L):
        if fixed[:, i].all():
            continue
        inp = torch.cat([start, x[:, :i]], 1)  # (B, i + 1)
        # the head at the last position only
        sel = torch.zeros(inp.shape, dtype=torch.bool, device=x.device)
        sel[:, -1] = True
        logits = call(model, info, x=inp, out_idx=sel)[:, : model.vocab_size]
        tok, p = rules.sample_tokens(logits, top_p, generator, nucleus=nucleus, temperature=temperature)
        x[:, i] = torch.where(fixed[:, i], x[:, i], tok)
        info['token_prob'][:, i] = torch.where(fixed[:, i], 1.0, p)
        if traj is not None:
            traj.append(x.clone())
    return x


def run_sampler(model, x, fixed, *, sampler, steps, knobs, top_p, generator, info, traj=None):
    """The loop of `sampler` from the state x (B, L) with the prompt fixed (B, L); returns the ids (B, L)."""
    T, dev = steps, x.device
    if sampler == 'ar':
        return ar_loop(
            model,
            x,
            fixed,
            top_p=top_p,
            generator=generator,
            info=info,
            traj=traj,
            nucleus=knobs['nucleus'],
            temperature=knobs['temperature'],
        )
    if sampler == 'sde':
        gamma_end = knobs['gamma_end'] or model.config['gamma_max']
        grid = noise.snr_grid(gamma_end, T + 1, knobs['gamma_first'] or gamma_end / 100)  # (T+1,)
        return sde_loop(model, x, fixed, grid, generator=generator, info=info, traj=traj)[0]
    if sampler == 'hybrid':
        return hybrid_loop(
            model, x, fixed, steps=T, knobs=knobs, top_p=top_p, generator=generator, info=info, traj=traj
        )
    if sampler == 'loop':
        alphas = torch.tensor(
            rules.loop_alphas(T, knobs['t_on'], knobs['t_off'], knobs['alpha_on']), device=dev
        )
    else:
        # alpha_t = 1 - t on t_k = 1 - k/T
        alphas = rules.grid_pairs(torch.arange(T + 1, device=dev) / T)
    alphas = alphas.float()[:, :, None, None]  # (T, 2, 1, 1)
    # roar: MDLM's moves (no remasking), with exact counts
    rule = sampler
    if sampler == 'roar':
        rule = 'mdlm'
    return discrete_loop(
        model,
        x,
        fixed,
        alphas,
        rule=rule,
        knobs=knobs,
        top_p=top_p,
        generator=generator,
        info=info,
        traj=traj,
        exact=sampler == 'roar',
    )


# ---------------------------------------------------------------------------------------------
# One denoiser call, with ReMDM's cache and timing


def call(model, info, out_idx=None, **state):
    """One denoiser evaluation on state x=ids (optionally commit=mask) or z=vectors, timed so that the loop's
    own overhead can be reported. Real NFE, as ReMDM's sampler (_ddpm_caching_update reuses its last output
    when torch.allclose(xs, x)): a sample whose input equals its input at the previous call needs no
    evaluation, so info['nfe_rows'] (B,) counts per sample only the calls whose input changed, and when no
    sample's input changed the blocks are not run: the kept trunk output (h, c) goes through the head at the
    new positions (the same logits, bit for bit). info['calls'] counts the forwards actually run for the
    batch. info['last'] holds (the previous call's input, its trunk output or None)."""
    # clones: a loop may update its state in place (sde's z)
    key = {k: v.clone() for k, v in state.items()}
    last = info.get('last')
    B = next(iter(state.values())).shape[0]
    changed = torch.ones(B, dtype=torch.bool, device=key[next(iter(key))].device)
    if (
        last is not None
        and last[0].keys() == key.keys()
        and all(last[0][k].shape == v.shape for k, v in key.items())
    ):
        changed = torch.stack([(last[0][k] != v).reshape(B, -1).any(1) for k, v in key.items()])
        changed = changed.any(0)  # (B,)
    info['nfe_rows'] = info.get('nfe_rows', 0) + changed.long()
    # synchronise so that the timing is the forward's
    cuda = changed.is_cuda
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trunk_out = None
    if last is not None and last[1] is not None and not changed.any():
        trunk_out = last[1]
        out = model.head(*trunk_out, out_idx)
    elif hasattr(model, 'head'):
        # the model hands its trunk output back in kept['hc'], for head() at other positions next time
        kept = {}
        out = model(out_idx=out_idx, keep=kept, **state)
        trunk_out = kept.get('hc')
        info['calls'] += 1
    else:
        out = model(out_idx=out_idx, **state)
        info['calls'] += 1
    if cuda:
        torch.cuda.synchronize()
    info['model_s'] += time.perf_counter() - t0
    info['last'] = (key, trunk_out)
    return out


# ---------------------------------------------------------------------------------------------
# The commit state: the SNR at which a revealed token is shown to a DSL model


def table_gamma(model, knobs):
    """gamma_commit of the commit table a discrete sampler with these knobs reads (None: it needs none)."""
    gamma_commit = knobs.get('gamma_commit')
    if (
        not model.dsl
        or gamma_commit is None
        or gamma_commit == model.config['gamma_max']
        or knobs.get('commit_noise')
    ):
        return None
    return gamma_commit


def model_input(model, x, commit, gamma_commit, eps=None):
    """Model input of a discrete state: hidden tokens at z = 0, prompt tokens at gamma_max e_x, and the
    revealed free tokens (commit (B, L) bool) at z = gamma_commit e_x, or with eps (B, L, d) the channel
    sample z = gamma_commit e_x + sqrt(gamma_commit) eps (docs/method.md §1). The deterministic state is a
    row of the commit table (no converter); the noisy one goes through the z path: a V-wide softmax at every
    position."""
    if eps is None and getattr(model, 'commit_gamma', None) == gamma_commit:
        return dict(x=x, commit=commit)
    z = model.endpoint_z(x, torch.where(commit, gamma_commit, model.config['gamma_max']))  # (B, L, d)
    if eps is not None:
        z = z + (commit * math.sqrt(gamma_commit))[..., None] * eps
    return dict(z=z)


# ---------------------------------------------------------------------------------------------
# Public API


def sampler_name(sampler):
    """'remdm-loop' -> 'loop'; an unknown name is a ValueError listing the valid ones."""
    name = sampler
    if sampler.startswith('remdm-'):
        name = sampler[len('remdm-') :]
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}': choose one of {', '.join(SAMPLERS)}")
    return name


def _check(model, sampler, steps, top_p, kw):
    """The sampler's name and its knobs (rules.KNOBS with kw); a ValueError if they do not fit the model."""
    sampler = sampler_name(sampler)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps}")
    rules.check_options(top_p, kw)
    causal = model.config.get('causal', False)
    if sampler == 'ar' and not causal:
        raise ValueError("sampler 'ar' needs a causal checkpoint")
    if sampler != 'ar' and causal:
        raise ValueError(f"this checkpoint is causal (autoregressive): use --sampler ar, not '{sampler}'")
    if not model.dsl and (sampler in DSL_ONLY):
        raise ValueError(
            f"sampler '{sampler}' needs a DSL checkpoint; this one is token-mode (MDLM): "
            f"use mdlm, cap, rescale, conf, loop, budget or roar"
        )
    gamma_commit, noisy = kw.get('gamma_commit'), kw.get('commit_noise', 0)
    if gamma_commit is not None or noisy:
        if not model.dsl:
            raise ValueError(
                "gamma_commit / commit_noise set the SNR of a DSL model's revealed tokens; "
                "this checkpoint is token-mode (MDLM)"
            )
        gmax = model.config['gamma_max']
        # above gamma_max: a state no training row ever shows (endpoints sit at or below gamma_max)
        if gamma_commit is not None and (
            isinstance(gamma_commit, bool)
            or not isinstance(gamma_commit, (int, float))
            or not 0 < gamma_commit <= gmax
        ):
            raise ValueError(
                f"gamma_commit must be a number in (0, gamma_max = {gmax:g}], got {gamma_commit}"
            )
    return sampler, {**rules.KNOBS, **kw}


def _device(model):
    return next(iter(list(model.parameters()) + list(model.buffers()))).device


@contextlib.contextmanager
def _sampling_mode(model, gamma_commit=None):
    """Eval mode and (DSL) the endpoint table, with the commit table at gamma_commit if given, for the
    duration of one generation (a table the caller built is kept if it fits, and restored)."""
    tabled = model.dsl and hasattr(model, 'build_endpoint_table')
    saved = None
    if tabled:
        saved = (model.table, model.commit_table, model.commit_gamma)
    was_training = model.training
    model.eval()
    if tabled and (model.table is None or gamma_commit is not None and model.commit_gamma != gamma_commit):
        # discrete states: a row lookup instead of the converter
        model.build_endpoint_table(gamma_commit)
    try:
        yield
    finally:
        if tabled:
            model.table, model.commit_table, model.commit_gamma = saved
        model.train(was_training)


@torch.no_grad()
def _run(model, loop, gamma_commit=None, **loop_args):
    """loop(model, info=info, **loop_args) in _sampling_mode: (x, info with the real NFE and timings)."""
    info = dict(calls=0, model_s=0.0)
    t0 = time.perf_counter()
    with _sampling_mode(model, gamma_commit):
        x = loop(model, info=info, **loop_args)
    info['total_s'] = time.perf_counter() - t0
    # the kept trunk output
    info.pop('last', None)
    if 'nfe_rows' in info:
        info['nfe_rows'] = info['nfe_rows'].tolist()
    else:
        info['nfe_rows'] = [0] * len(x)
    # real NFE per sample (= calls at batch 1)
    info['nfe'] = sum(info['nfe_rows']) / len(x)
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
    free (those given are revealed from the start and never remasked). sampler in
    {'mdlm','cap','rescale','conf','loop','budget','uncertainty','roar','sde','hybrid','ar'} ('remdm-'
    prefixes accepted); kw: knobs of rules.KNOBS. Returns (x (B, L) int64 without mask_id, info dict with
    'nfe' (real denoiser calls per sample, their mean), 'nfe_rows' (per sample), 'calls' (forwards run for the
    batch), 'model_s', 'total_s' and, if trajectory, 'trajectory': one (B, L) state per call, mask_id where
    hidden (sde: the current argmax). 'ar' makes one call per free position (steps is not used). top_p is the
    nucleus of every token draw; the sde drift uses the full posterior mean."""
    sampler, knobs = _check(model, sampler, steps, top_p, kw)
    dev, B, mask = _device(model), num_samples, model.mask_id
    x = torch.full((B, L), mask, dtype=torch.long, device=dev)
    if prompt is not None:
        prompt = torch.as_tensor(prompt, device=dev).long()
        if prompt.shape[-1] > L:
            raise ValueError(f"the prompt ({prompt.shape[-1]} tokens) is longer than the sequence (L = {L})")
        x[:, : prompt.shape[-1]] = prompt.expand(B, -1)
    fixed = x != mask  # (B, L)
    traj = [] if trajectory else None
    out, info = _run(
        model,
        run_sampler,
        table_gamma(model, knobs),
        x=x,
        fixed=fixed,
        sampler=sampler,
        steps=steps,
        knobs=knobs,
        top_p=top_p,
        generator=generator,
        traj=traj,
    )
    info.update(sampler=sampler, steps=steps, top_p=top_p, knobs=dict(kw))
    if trajectory:
        info['trajectory'] = traj
    return out, info


def repair(
    model, draft, steps, sampler='uncertainty', alpha=None, top_p=1.0, generator=None, trajectory=False, **kw
):
    """Draft repair (docs/method.md §11): draft (B, L) ids, mask_id at hidden positions, the rest visible
    (possibly wrong) and remaskable. Runs the rule at frozen alpha (float or (B,); default: each draft's
    revealed fraction) for `steps` calls, then reveals what is left with the last call's argmax.
    Returns (x, info)."""
    sampler, knobs = _check(model, sampler, steps, top_p, kw)
    if sampler not in DISCRETE:
        raise ValueError(f"repair needs a discrete rule ({', '.join(DISCRETE)}), got '{sampler}'")
    dev = _device(model)
    x = torch.as_tensor(draft, device=dev).long()
    if x.dim() == 1:
        x = x[None]
    else:
        x = x.clone()
    if alpha is None:
        alpha = (x != model.mask_id).float().mean(1)
    a = torch.as_tensor(alpha, dtype=torch.float32, device=dev).expand(x.shape[0])[:, None]  # (B, 1)
    alphas = a[None, None].expand(steps, 2, -1, -1)  # (T, 2, B, 1) frozen
    traj = [] if trajectory else None
    fixed = torch.zeros_like(x, dtype=torch.bool)
    out, info = _run(
        model,
        discrete_loop,
        table_gamma(model, knobs),
        x=x,
        fixed=fixed,
        alphas=alphas,
        rule=sampler,
        knobs=knobs,
        top_p=top_p,
        generator=generator,
        traj=traj,
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
    """n samples through generate in batches of batch_size, one generator for all; a DSL model's endpoint
    tables are built once, not per batch. Returns (x (n, L), info of the first batch with 'nfe_rows' of all
    samples, 'nfe' their mean, and 'calls' and the timings summed over batches)."""
    if model.dsl:
        model.eval().build_endpoint_table(table_gamma(model, kw))
    xs, info = [], None
    try:
        for i in range(0, n, batch_size):
            x, batch_info = generate(
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
                info = dict(batch_info, nfe_rows=[], calls=0, model_s=0.0, total_s=0.0)
            for k in ('nfe_rows', 'calls', 'model_s', 'total_s'):
                info[k] += batch_info[k]
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
    # one line, no usage dump
    ap.error = _die
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
    knob_types = dict(rule=str, nucleus=str, T_c=int, commit_noise=int)
    for k, v in rules.KNOBS.items():
        add(
            f'--{k}',
            type=knob_types.get(k, float),
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
    except (ValueError, KeyError, OSError) as e:
        # user errors: one line, no traceback; str(e) for OSError(errno, text, path), which names the path
        _die(e.args[0] if len(e.args) == 1 else str(e))


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
    # the sampler's name is checked before loading a large checkpoint; None: the model's default
    sampler = None
    if args.sampler:
        sampler = sampler_name(args.sampler)
    kw = {k: getattr(args, k) for k in rules.KNOBS if getattr(args, k) is not None}
    out = check_cli(args, sampler or 'auto', kw)
    try:
        model = modellib.load_mdlm(args.ckpt, use_ema=not args.no_ema, trust=args.trust_checkpoint)
    except (FileNotFoundError, KeyError, ValueError):
        # not found, or keys/shapes that do not fit: clear already
        raise
    except Exception as e:
        # torch.load of a truncated file, a text file, a pickle of something else
        raise ValueError(
            f"cannot read --ckpt {args.ckpt}: truncated, corrupt or not a checkpoint ({type(e).__name__}); "
            f"pass a train.py checkpoint, an MDLM .ckpt/.safetensors file or a hub id"
        )
    model = model.to(args.device)
    if sampler is None:
        # the default: the model's own best rule
        if model.config.get('causal'):
            sampler = 'ar'
        elif model.dsl:
            sampler = 'uncertainty'
        else:
            sampler = 'mdlm'
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
        f"wrote {len(records)} samples ({sampler}, T = {args.steps}, {info['nfe']:g} NFE per sample, "
        f"top_p {args.top_p}, "
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
