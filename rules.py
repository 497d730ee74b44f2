"""
What one discrete sampling step does, as pure functions of the step and the state (no model): the remasking
rules, the loop schedule, the moves they imply, and the token draws (docs/method.md §10, §11, §15).
sample.py's loops call these.

Discrete step t -> s on alpha_t, the revealed fraction of free tokens (alpha_t = 1 - t for MDLM; ReMDM, Wang
et al. 2025, eqs. 8-9):
  revealed (non-prompt) token -> hidden with prob sigma_i,   sigma_max = min(1, (1 - alpha_s) / alpha_t)
  hidden token -> revealed with prob (alpha_s - (1 - sigma_i) alpha_t) / (1 - alpha_t), value ~ top-p(p_theta)
A rule chooses sigma from (alpha_t, alpha_s (B, 1)) and the state; it returns sigma (B, L) or (B, 1).
sigma is ReMDM's remasking probability (the paper's notation), not a noise level or a spread.

The uncertainty rule (DSL) reads, in order: uncertainty_scores (u_i = 1 - p_theta(x_i | state) from the
step's call), uncertainty (sigma_i = min(1, kappa u_i)) and uncertainty_reveal (the reveal probability that
keeps the expected revealed count on schedule); step_probs puts them together, draw_moves and sample_tokens
make the moves, and sample.discrete_loop runs the step.
"""

import math

import torch

import cli

# rule knobs (None: the rule's own default)
KNOBS = dict(
    # cap, rescale, loop: the remasking level (defaults cap 0.008, rescale 0.015, loop 0.02: ReMDM's)
    eta=None,
    # budget: eta = rho / T
    rho=1.0,
    # uncertainty: sigma_i = min(1, kappa u_i)
    kappa=1.0,
    # loop: the schedule's phases (loop_alphas)
    t_on=0.55,
    t_off=0.05,
    alpha_on=0.9,
    # sde: final SNR (default gamma_max)
    gamma_end=None,
    # sde/hybrid: first nonzero SNR of the log grid (default gamma_end / 100)
    gamma_first=None,
    # hybrid: SNR at which the continuous phase stops (default gamma_max / 4)
    gamma_switch=None,
    # hybrid: continuous steps (default T // 4)
    T_c=None,
    # hybrid: commit positions whose posterior max >= commit_p, hide the rest
    commit_p=0.9,
    # hybrid: the rule of the discrete phase (it can undo a bad commit)
    rule='uncertainty',
    # top-p convention: remdm (ReMDM's code, the default) | hf (Hugging Face)
    nucleus='remdm',
    # every token draw from softmax(logits / temperature), then top-p: above 1 reaches diversity that top-p 1
    # alone cannot (the draw stays float64; 1 is the plain draw, bit for bit)
    temperature=1.0,
    # DSL discrete samplers: SNR of revealed non-prompt tokens (default gamma_max)
    gamma_commit=None,
    # 1: show them as channel samples gamma_commit e_x + sqrt(gamma_commit) eps
    commit_noise=0,
)
INF = math.inf
# no frozen-alpha stretch on hybrid's rising schedule: no loop
HYBRID_RULES = ('mdlm', 'cap', 'rescale', 'conf', 'budget', 'uncertainty')
# valid knob values, in interval notation (cli.in_range: '[' and ']' include the bound, '(' and ')' exclude
# it); t_off <= t_on
KNOB_RANGES = dict(
    eta=(0, 1, '[]'),
    rho=(0, INF, '[)'),
    kappa=(0, INF, '[)'),
    t_on=(0, 1, '()'),
    t_off=(0, 1, '[)'),
    alpha_on=(0, 1, '[]'),
    gamma_end=(0, INF, '()'),
    gamma_first=(0, INF, '()'),
    gamma_switch=(0, INF, '()'),
    T_c=(0, INF, '[)'),
    commit_p=(0, 1, '[]'),
    temperature=(0, INF, '()'),
)


def check_options(top_p, kw):
    """top_p and the knobs in their valid ranges (ValueError naming the range); needs no model, so the CLI
    calls it before loading one. NaN fails every range."""
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    bad = sorted(set(kw) - set(KNOBS))
    if bad:
        raise ValueError(f"unknown sampler option(s) {bad}: valid ones are {sorted(KNOBS)}")
    for k, v in kw.items():
        if k in KNOB_RANGES and v is not None and not cli.in_range(v, KNOB_RANGES[k]):
            raise ValueError(f"{k} must lie in {cli.interval(KNOB_RANGES[k])}, got {v}")
    knobs = {**KNOBS, **{k: v for k, v in kw.items() if v is not None}}
    # the loop schedule's phases would overlap
    if knobs['t_off'] > knobs['t_on']:
        raise ValueError(f"t_off must lie in [0, t_on] (t_on = {knobs['t_on']}), got {knobs['t_off']}")
    # loop would never remask on hybrid's rising schedule
    if knobs['rule'] not in HYBRID_RULES:
        raise ValueError(
            f"hybrid rule '{knobs['rule']}' must be one of {', '.join(HYBRID_RULES)} (its discrete phase "
            f"follows a rising schedule, so 'loop' would never remask)"
        )
    if knobs['nucleus'] not in ('remdm', 'hf'):
        raise ValueError(
            f"nucleus must be 'remdm' (ReMDM's top-p) or 'hf' (Hugging Face's), got '{knobs['nucleus']}'"
        )
    # also False / True
    if knobs['commit_noise'] not in (0, 1):
        raise ValueError(
            f"commit_noise must be 0 (deterministic commit state) or 1 (channel noise), "
            f"got {knobs['commit_noise']}"
        )


# ---------------------------------------------------------------------------------------------
# Remasking rules


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
    # rows without an eligible position: 0
    w = torch.softmax((-psi).masked_fill(~eligible, -math.inf), dim=1).nan_to_num(0.0)
    return sigma_max(a_t, a_s) * w


def loop(a_t, a_s, eta=0.02, **_):
    """Remask at constant eta only while alpha is frozen (phase 2 of ReMDM-loop, or draft repair)."""
    return torch.where(a_t == a_s, eta * torch.ones_like(a_t), torch.zeros_like(a_t)).clamp(
        max=sigma_max(a_t, a_s)
    )


def budget(a_t, a_s, T, rho=1.0, **_):
    """Step-budget-aware cap: eta = rho / T, so E[#remask events per token] does not depend on T."""
    return cap(a_t, a_s, eta=rho / T)


def uncertainty(a_t, a_s, u, kappa=1.0, **_):
    """DSL: remask each revealed token with prob min(1, kappa * u_i), u_i = 1 - p_theta(x_i | state)
    (uncertainty_scores); the reveals that go with it: uncertainty_reveal."""
    return (kappa * u).clamp(0, 1)


def uncertainty_scores(logits_free, x, free, eligible):
    """u (B, L): 1 - p_theta(x_i | state) at the revealed free tokens (eligible (B, L)), 0 elsewhere, from
    the step's logits at every free position, logits_free (N_free, V)."""
    logp = token_logprobs(logits_free, x[free], eligible[free])  # (N_revealed,)
    u = torch.zeros(x.shape, device=x.device)
    u[eligible] = 1 - logp.exp()
    return u


def uncertainty_reveal(a_s, sigma, hidden, eligible, n_free):
    """The uncertainty rule's reveal probability of each hidden token (B, 1), before clamping to [0, 1]:
    E[#revealed free tokens after the step] = alpha_s * n_free, given the remask probabilities sigma (B,
    L)."""
    kept = ((1 - sigma) * eligible).sum(1, keepdim=True)
    return (a_s * n_free - kept) / hidden.sum(1, keepdim=True).clamp(min=1)


RULES = dict(
    mdlm=mdlm, cap=cap, rescale=rescale, conf=conf, loop=loop, budget=budget, uncertainty=uncertainty
)


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
        if t > t_on:
            out.append((rise(t), rise(t - dt)))
        elif t <= t_off:
            out.append((final(t), final(t - dt)))
        else:
            out.append((alpha_on, alpha_on))
    return out


def grid_pairs(alphas):
    """A grid of revealed fractions (T+1, ...) -> the steps' (alpha_t, alpha_s) pairs (T, 2, ...)."""
    return torch.stack([alphas[:-1], alphas[1:]], 1)


def step_probs(name, knobs, a_t, a_s, hidden, eligible, n_free, T, psi=None, u=None):
    """Per-position probabilities of one step: (sigma (B, L) remask where eligible, reveal (B, L) where
    hidden). name: a rule of RULES; u (B, L): uncertainty_scores, read by the uncertainty rule."""
    given = {k: v for k, v in knobs.items() if v is not None}
    raw = RULES[name](a_t, a_s, T=T, psi=psi, eligible=eligible, u=u, **given)
    raw = raw.expand(hidden.shape)  # (B, L)
    # prompt and hidden positions are never remasked
    sigma = (raw * eligible).float()
    if name == 'uncertainty':
        r = uncertainty_reveal(a_s, sigma, hidden, eligible, n_free)
    else:
        # ReMDM eq. 9 per token; under conf a hidden token's sigma is 0 (weight 0), else the row's sigma
        r = (a_s - (1 - raw) * a_t) / (1 - a_t).clamp(min=1e-12)
    return sigma, (r.clamp(0, 1) * hidden).float()


def draw_moves(sigma, reveal_p, hidden, eligible, generator, exact_count=None):
    """Bernoulli draws of one step: (remask (B, L), reveal (B, L)); a single uniform per position (the sets
    are disjoint). exact_count (B, 1): reveal exactly that many hidden positions, uniformly (roar)."""
    r = torch.rand(hidden.shape, generator=generator, device=hidden.device)
    if exact_count is not None:
        # rank of each hidden position in a random order
        rank = r.masked_fill(~hidden, 2.0).argsort(1).argsort(1)
        return torch.zeros_like(hidden), hidden & (rank < exact_count)
    return eligible & (r < sigma), hidden & (r < reveal_p)


# ---------------------------------------------------------------------------------------------
# Token draws: nucleus in float64 on the rows being sampled only, in row chunks

# the shortest sorted head nucleus_head takes
HEAD_MIN = 16
# head lengths per doubling (k rounded up to a power of 2^(1/HEAD_STEPS): few topk calls)
HEAD_STEPS = 4
# nucleus_bound's histogram: bins per halving of the probability ...
OCTAVE_BINS = 8
# ... and halvings below the top token before the last bin, which takes the rest
OCTAVES = 24


def sample_tokens(logits, top_p, generator, chunk=1 << 22, nucleus='remdm', temperature=1.0):
    """logits (N, V) over real tokens -> (tokens (N,), their probability under the distribution they were
    drawn from (N,), i.e. the renormalised nucleus of softmax(logits / temperature)). float64: float32
    sampling over large vocabularies truncates the tail (Zheng et al. 2024). nucleus='remdm' (default,
    ReMDM's and MDLM's code): sort, keep tokens while the cumulative probability is <= top_p, the top token
    always. 'hf' (Hugging Face): the smallest prefix with mass >= top_p, i.e. also the token that crosses
    top_p; less greedy, and not what published numbers used. On the CPU each row sorts only the head its
    nucleus can reach (nucleus_head): the same draws as a full sort of every row at the same generator state,
    token for token (tests/test_nucleus.py)."""
    N, V = logits.shape
    u = torch.rand(N, 1, generator=generator, device=logits.device, dtype=torch.float64)
    tok, prob, rows = [], [], max(1, chunk // V)
    for i in range(0, N, rows):
        x = logits[i : i + rows]
        if temperature != 1:
            # scaled in float64, before the softmax and the nucleus (its histogram bound reads x too)
            x = x.double() / temperature
        p = torch.softmax(x.double(), dim=-1)  # (n, V)
        ui = u[i : i + len(p)]
        if top_p >= 1:
            # inverse CDF in the vocabulary's order: no sort
            c = p.cumsum(-1)
            t = torch.searchsorted(c, ui * c[:, -1:]).clamp(max=V - 1)
            q = p.gather(-1, t)
        elif p.device.type == 'cpu':
            t, q = nucleus_head(x, p, top_p, ui, nucleus)
        else:
            # a GPU's cumsum is a parallel scan: a head's sums need not round as the full row's do
            t, q = nucleus_sorted(p, top_p, ui, nucleus)
        tok.append(t[:, 0])
        prob.append(q[:, 0])
    if not tok:
        return logits.new_zeros(0, dtype=torch.long), logits.new_zeros(0, dtype=torch.float64)
    return torch.cat(tok), torch.cat(prob)


def nucleus_mask(c, ps, top_p, nucleus):
    """Which positions of descending-sorted rows ps (their cumulative sums c) lie in the nucleus.
    remdm: c_j <= top_p. hf: c_{j-1} < top_p, computed as c_j - ps_j.
    Both are monotone along a row, rounding included (c_j never decreases, and c_j - ps_j never decreases
    because ps_j does not increase), so a row's mask is True up to the nucleus size, then False."""
    if nucleus == 'remdm':
        return c <= top_p
    return c - ps < top_p


def nucleus_draw(ps, idx, top_p, u, nucleus):
    """Inverse-CDF draw in the nucleus of descending-sorted rows ps (n, k) with token ids idx (n, k) and one
    uniform per row u (n, 1); the top token is always kept. Returns (tokens (n, 1), probability under the
    renormalised nucleus (n, 1), drawn position j (n, 1), open (n,): the row's last position is still in the
    nucleus, so a longer row could have a longer nucleus)."""
    c = ps.cumsum(-1)
    inside = nucleus_mask(c, ps, top_p, nucleus)
    keep = inside.sum(-1, keepdim=True).clamp(min=1)
    mass = c.gather(-1, keep - 1)  # (n, 1) nucleus mass
    j = torch.searchsorted(c, u * mass).clamp(max=keep - 1)
    return idx.gather(-1, j), ps.gather(-1, j) / mass, j, inside[:, -1]


def nucleus_sorted(p, top_p, u, nucleus):
    """The nucleus draw on fully sorted rows p (n, V): (tokens (n, 1), probabilities (n, 1))."""
    ps, idx = p.sort(dim=-1, descending=True)
    t, q, _, _ = nucleus_draw(ps, idx, top_p, u, nucleus)
    return t, q


def nucleus_bound(logits, p, top_p):
    """A bound on each row's nucleus size plus one (n,), from a histogram instead of a sort. Tokens are binned
    by log2(p_max / p) (read off the logits: log p is the logit less a constant per row), OCTAVE_BINS bins per
    halving; the first bins whose mass passes top_p hold the nucleus and the token after it, since every
    later bin holds smaller probabilities. The bins sum in another order than the sorted cumulative sum, hence
    the margin. A bound that comes out too small costs time, not a different draw (nucleus_head checks)."""
    n, V = p.shape
    bins = OCTAVE_BINS * OCTAVES + 1
    x = logits.float()
    level = ((x.amax(-1, keepdim=True) - x) * (OCTAVE_BINS / math.log(2))).floor()
    # -inf logits (and NaN rows) go to the last bin, with the rest of the tail
    level = torch.where(level < bins - 1, level, bins - 1).long()  # (n, V)
    mass = torch.zeros(n, bins, dtype=p.dtype, device=p.device).scatter_add_(1, level, p).cumsum(-1)
    count = torch.zeros(n, bins, dtype=torch.long, device=p.device)
    count = count.scatter_add_(1, level, torch.ones_like(level)).cumsum(-1)
    # the first bin past top_p
    first = (mass <= top_p + 1e-9).sum(-1, keepdim=True).clamp(max=bins - 1)
    return count.gather(-1, first)[:, 0] + 1


def drawn_tie(ps, j):
    """Whether the drawn probability ps[j] (j (n, 1)) equals a neighbour's in descending rows ps (n, k): (n,).
    Equal values sit next to each other, so this finds every other token of the same probability."""
    k = ps.shape[1]
    drawn = ps.gather(-1, j)
    before = ps.gather(-1, (j - 1).clamp(min=0))
    after = ps.gather(-1, (j + 1).clamp(max=k - 1))
    return ((j > 0) & (before == drawn) | (j < k - 1) & (after == drawn))[:, 0]


def nucleus_head(logits, p, top_p, u, nucleus):
    """nucleus_sorted's draws, token for token, sorting only the head of each row that its nucleus reaches.

    topk(k) returns the k largest probabilities in the order a full sort puts them, and cumsum adds left to
    right, so the head's cumulative sums are the full sort's first k. Where the k-th token is outside the
    nucleus, so is every later one (nucleus_mask is monotone): the nucleus size, its mass, the drawn position
    and its probability are then the full sort's. k is nucleus_bound rounded up to a power of
    2^(1/HEAD_STEPS) (few distinct k, one topk each); rows whose bound reaches V, or whose head turns out too
    short, take the full sort. What the head cannot reproduce is the order of equal probabilities (the full
    sort is unstable, and topk may order ties otherwise): a row whose drawn probability equals another
    token's takes the full sort."""
    n, V = p.shape
    tok = torch.empty(n, 1, dtype=torch.long, device=p.device)
    prob = torch.empty(n, 1, dtype=p.dtype, device=p.device)
    k = nucleus_bound(logits, p, top_p).clamp(min=HEAD_MIN).double()
    k = torch.exp2(torch.ceil(HEAD_STEPS * torch.log2(k)) / HEAD_STEPS).ceil().long()
    # rows for the full sort
    full = [torch.nonzero(k >= V)[:, 0]]
    for size in torch.unique(k[k < V]).tolist():
        rows = torch.nonzero(k == size)[:, 0]
        ps, idx = p[rows].topk(size, dim=-1)  # (m, size) descending
        t, q, j, open_ = nucleus_draw(ps, idx, top_p, u[rows], nucleus)
        done = ~open_ & ~drawn_tie(ps, j)
        tok[rows[done]] = t[done]
        prob[rows[done]] = q[done]
        full.append(rows[~done])
    rest = torch.cat(full)
    if len(rest):
        tok[rest], prob[rest] = nucleus_sorted(p[rest], top_p, u[rest], nucleus)
    return tok, prob


def token_logprobs(logits, tokens, rows, chunk=1 << 21):
    """log softmax(logits)[i, tokens[i]] at the rows i where rows (N,) is True: logits (N, V), tokens (N,) ->
    (rows.sum(),) float32. In chunks of `chunk` logits: a row's log-softmax does not depend on the other rows
    (the same values bit for bit), and one output of N x V floats can pass the size above which the CPU
    allocator maps fresh pages from the OS on every call, which then costs more than the softmax itself."""
    n = max(1, chunk // logits.shape[1])
    out = []
    for i in range(0, len(logits), n):
        # index_select copies whole rows; a boolean index goes element by element
        sel = rows[i : i + n].nonzero()[:, 0]
        lp = torch.log_softmax(logits[i : i + n].index_select(0, sel).float(), -1)
        out.append(lp.gather(-1, tokens[i : i + n][sel][:, None])[:, 0])
    if not out:
        return logits.new_zeros(0, dtype=torch.float32)
    return torch.cat(out)
