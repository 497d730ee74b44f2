"""
Corruption processes, training losses and NLL bounds (docs/method.md §5-9).

Notation: x (B, L) int64 token ids, V real tokens, mask_id = V.
  MDLM:  each token is masked with probability t, t ~ U(eps, 1) stratified over the global batch;
         loss = (1/t) * sum_masked -log p(x_i | x_t) / L
         (Sahoo et al. 2024, MDLM eq. 10, log-linear schedule)
  DSL:   z_i = gamma_i e_{x_i} + sqrt(gamma_i) eps_i  (the localization channel), gamma from a mixture of
         endpoint and intermediate corruption; loss = plain cross-entropy, no time weighting.
  Bounds: mdlm_bound (NELBO), roar_bound (any-order AR), diffusion_bound (I-MMSE integral).
Every function that draws randomness takes a torch.Generator so evaluations are reproducible.
"""

import math

import torch
import torch.nn.functional as F

# mixed-corruption defaults (docs/method.md §5); char vocabularies override the lognormal of intermediate
# SNRs (DSL2's text8 one). gamma_max is 100 at every vocabulary (DSL2: ROARSNRPath(snr_max=100.)); 30 made
# ~3% of the revealed endpoint tokens of a 65-character model read as another token
SNR_DEFAULTS = dict(
    # fraction of sequences at (smoothed) endpoints
    p_end=0.25,
    smooth_endpoints=True,
    # SNR of a revealed token
    gamma_max=100.0,
    # smoothed endpoints: hidden gamma ~ U(0, gamma_min)
    gamma_min=1.0,
    # smoothed endpoints: revealed gamma ~ U(reveal_floor gamma_max, gamma_max)
    reveal_floor=0.8,
    # intermediate sequences: gamma ~ LogNormal(log_snr_mean, log_snr_std), one per sequence
    log_snr_mean=2.69,
    log_snr_std=1.41,
    # intermediate sequences: per-token multiplicative jitter exp(jitter * N(0,1))
    jitter=0.0,
)
SNR_CHAR = dict(log_snr_mean=1.4, log_snr_std=0.55)
# the names these keys had before (mu, sigma, c: each also meant something else); old checkpoints and old
# commands still use them
OLD_SNR_KEYS = dict(mu='log_snr_mean', sigma='log_snr_std', c='reveal_floor')


def new_snr_keys(cfg):
    """cfg with the SNR keys' old names (OLD_SNR_KEYS) replaced by the new ones, the order kept."""
    return {OLD_SNR_KEYS.get(k, k): v for k, v in cfg.items()}


def snr_config(vocab_size, **overrides):
    """The mixed corruption's settings for this vocabulary size: the defaults, then the overrides (their old
    names too)."""
    cfg = dict(SNR_DEFAULTS)
    if vocab_size <= 1000:
        cfg.update(SNR_CHAR)
    cfg.update(new_snr_keys(overrides))
    return cfg


def _rand(shape, generator, device):
    return torch.rand(shape, generator=generator, device=device)


# ---------------------------------------------------------------------------------------------
# MDLM masking


def sample_t(B, device, eps=1e-3, antithetic=True, rank=0, world_size=1, generator=None):
    """t ~ U(eps, 1) per sequence. Antithetic: the global batch of B * world_size draws is stratified,
    global index j gets (u_j + j) / n, so every rank holds its own slice of one low-variance grid."""
    u = _rand(B, generator, device)
    if antithetic:
        n = B * world_size
        u = (u + torch.arange(rank * B, (rank + 1) * B, device=device)) / n
    return eps + (1 - eps) * u


def mdlm_corrupt(x, t, mask_id, generator=None):
    """Mask each token independently with probability t (per sequence). Returns (x_t, masked)."""
    masked = _rand(x.shape, generator, x.device) < t[:, None]
    return torch.where(masked, torch.full_like(x, mask_id), x), masked


def token_logprobs(logits, x, V):
    """log p(x_i) from (..., V+1) logits with the [MASK] slot excluded (a model never predicts it)."""
    return torch.log_softmax(logits[..., :V].float(), dim=-1).gather(-1, x[..., None]).squeeze(-1)


def mdlm_loss(model, x, t, generator=None):
    """Continuous-time MDLM NELBO per sequence (B,), nats/token: (1/t) sum_masked -log p(x_i | x_t) / L.
    DSL models read the masked ids through their endpoint path, so this is also their atomic-endpoint
    bound."""
    xt, masked = mdlm_corrupt(x, t, model.mask_id, generator)
    logp = token_logprobs(model(x=xt), x, model.vocab_size)  # (B, L)
    return -(logp * masked).sum(1) / x.shape[1] / t


# ---------------------------------------------------------------------------------------------
# Localization channel and the mixed-corruption SNR sampler


def localize(e, gamma, generator=None):
    """z = gamma e + sqrt(gamma) eps, eps ~ N(0, I). e (B, L, d); gamma broadcastable to (B, L).
    gamma = 0 gives z = 0 exactly (no information, i.e. [MASK])."""
    gamma = torch.as_tensor(gamma, dtype=e.dtype, device=e.device)
    gamma = gamma.expand(e.shape[:-1])[..., None]
    eps = torch.randn(e.shape, generator=generator, device=e.device, dtype=e.dtype)
    return gamma * e + gamma.sqrt() * eps


def sample_endpoint_mask(B, L, device, generator=None):
    """k ~ U{0..L-1} revealed positions per sequence, chosen uniformly. Returns revealed (B, L) bool."""
    k = torch.randint(0, L, (B, 1), generator=generator, device=device)
    # a random rank of each position
    order = _rand((B, L), generator, device).argsort(dim=1).argsort(dim=1)
    return order < k


def sample_gamma(B, L, cfg, device, generator=None):
    """Per-token SNRs (B, L) from the mixture of DSL training (docs/method.md §5).
    Returns (gamma, is_end (B,) bool, revealed (B, L) bool; revealed is meaningful on endpoint rows)."""
    gmax = cfg['gamma_max']
    is_end = _rand(B, generator, device) < cfg['p_end']
    revealed = sample_endpoint_mask(B, L, device, generator)
    if cfg['smooth_endpoints']:
        floor = cfg['reveal_floor']
        g_vis = gmax * (floor + (1 - floor) * _rand((B, L), generator, device))
        g_hid = cfg['gamma_min'] * _rand((B, L), generator, device)
    else:
        g_vis, g_hid = torch.full((B, L), gmax, device=device), torch.zeros(B, L, device=device)
    g_end = torch.where(revealed, g_vis, g_hid)
    n = torch.randn(B, 1, generator=generator, device=device)
    g_mid = torch.exp(cfg['log_snr_mean'] + cfg['log_snr_std'] * n).expand(B, L)
    if cfg['jitter'] > 0:
        g_mid = g_mid * torch.exp(cfg['jitter'] * torch.randn(B, L, generator=generator, device=device))
    g_mid = g_mid.clamp(0, gmax)
    return torch.where(is_end[:, None], g_end, g_mid), is_end, revealed


# ---------------------------------------------------------------------------------------------
# Training losses


def roar_rows(B, roar_weight):
    """How many of a micro-batch's B rows carry the ROAR corruption: the share q = w / (1 + w), rounded, at
    least one row of each kind. With equal per-row variances s^2 of the two terms, the estimate's variance
    s^2 (1 / n_mixed + w^2 / n_roar) is smallest at n_roar / n_mixed = w, i.e. q = w / (1 + w)."""
    if roar_weight <= 0:
        return 0
    if B < 2:
        raise ValueError("the ROAR term needs a micro-batch of at least 2 rows (one of each kind)")
    return min(B - 1, max(1, round(B * roar_weight / (1 + roar_weight))))


def dsl_loss(model, x, cfg, generator=None, roar_weight=0.0):
    """The DSL training loss in one denoiser call: CE_mixed + w * ROAR.

    CE_mixed: cross-entropy of x_theta(z) against x at every position, z from the mixed corruption.
    ROAR (any-order autoregression, weight w = roar_weight): CE at the hidden positions of a noiseless
    endpoint state (k ~ U{0..L-1} tokens revealed at gamma_max, the rest at z = 0), averaged per sequence
    over its hidden positions, as the authors' code (DSL2, dsl/metrics.py::nll_roar).
    The first n_roar = roar_rows(B, w) rows of x get the ROAR state, the others the mixed one, and one
    forward sees them all: the mean over mixed rows plus w times the mean over ROAR rows is an unbiased
    estimate of CE_mixed + w * ROAR (the rows of x are exchangeable draws), at the cost of one MDLM step."""
    B, L = x.shape
    n_roar = roar_rows(B, roar_weight)
    gamma, _, _ = sample_gamma(B - n_roar, L, cfg, x.device, generator)
    e = model.E()[x[n_roar:]]  # (B - n_roar, L, d)
    z = localize(e, gamma.to(e.dtype), generator)
    if n_roar:
        revealed = sample_endpoint_mask(n_roar, L, x.device, generator)  # (n_roar, L)
        x_roar = torch.where(revealed, x[:n_roar], torch.full_like(x[:n_roar], model.mask_id))
        z = torch.cat([model.endpoint_z(x_roar).to(z.dtype), z])  # (B, L, d)
    logits = model(z=z)[..., : model.vocab_size]  # (B, L, V)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), x.flatten(), reduction='none').view(B, L)
    loss = ce[n_roar:].mean()
    if n_roar:
        # k <= L - 1, so every row has a hidden position
        hidden = ~revealed
        roar = ((ce[:n_roar] * hidden).sum(1) / hidden.sum(1)).mean()
        loss = loss + roar_weight * roar
    return loss


def ar_loss(model, x):
    """Next-token cross-entropy with the causal backbone over all L positions of x (B, L). The [MASK] id
    serves as the start token: input [MASK], x_0..x_{L-2} predicts x_0..x_{L-1}, so an unprompted AR sampler
    has a trained distribution for its first token (it starts from [MASK] too)."""
    start = torch.full_like(x[:, :1], model.mask_id)
    logits = model(x=torch.cat([start, x[:, :-1]], dim=1))  # (B, L, V+1)
    return F.cross_entropy(logits[..., : model.vocab_size].flatten(0, 1).float(), x.flatten())


def loss_fn(objective, model, x, cfg, rank=0, world_size=1, generator=None):
    """The training loss of each objective, a scalar (mean over the local batch)."""
    if objective == 'dsl':
        return dsl_loss(model, x, cfg, generator, cfg.get('roar_weight', 0.0))
    if objective == 'mdlm':
        t = sample_t(x.shape[0], x.device, rank=rank, world_size=world_size, generator=generator)
        return mdlm_loss(model, x, t, generator).mean()
    if objective == 'ar':
        return ar_loss(model, x)
    raise ValueError(f"unknown objective '{objective}': choose dsl, mdlm or ar")


# ---------------------------------------------------------------------------------------------
# NLL bounds, in nats/token. Each takes a generator: fixed seeds make runs comparable.


def bound_report(nats):
    return dict(nats=nats, bits=nats / math.log(2), ppl=math.exp(min(nats, 700)))


@torch.no_grad()
def mdlm_bound(model, x, n_t=8, generator=None):
    """MDLM NELBO: E_t[(1/t) sum_masked -log p(x_i | x_t)] / L, n_t stratified t per sequence."""
    total = 0.0
    for j in range(n_t):
        u = _rand(x.shape[0], generator, x.device)
        # stratified over the n_t repeats
        t = 1e-3 + (1 - 1e-3) * (u + j) / n_t
        total += mdlm_loss(model, x, t, generator).mean().item()
    return total / n_t


@torch.no_grad()
def roar_bound(model, x, n_k=8, generator=None):
    """Any-order AR bound: E_k[mean over hidden positions of -log p(x_i | revealed)], k ~ U{0..L-1}."""
    total = 0.0
    for _ in range(n_k):
        revealed = sample_endpoint_mask(*x.shape, x.device, generator)
        xr = torch.where(revealed, x, torch.full_like(x, model.mask_id))
        logp = token_logprobs(model(x=xr), x, model.vocab_size)
        hidden = ~revealed
        total += (-(logp * hidden).sum(1) / hidden.sum(1)).mean().item()
    return total / n_k


def snr_grid(g_end, n=64, g_first=1e-2):
    """0 followed by n-1 log-spaced points g_first .. g_end: dense at small gamma, where mmse changes
    fastest."""
    if n == 2:
        return torch.tensor([0.0, g_end])
    return torch.cat([torch.zeros(1), torch.logspace(math.log10(g_first), math.log10(g_end), n - 1)])


@torch.no_grad()
def mmse_and_nll(model, x, gamma, generator=None):
    """At per-token SNRs gamma (B, L): ||e_{x_i} - xhat_i(z)||^2 and -log p(x_i | z), both (B, L).
    xhat_i = sum_v p(v | z)_i e_v is the posterior-mean embedding over the V real tokens."""
    E = model.E()  # (V, d)
    z = localize(E[x], gamma.to(E.dtype), generator)
    logits = model(z=z)[..., : model.vocab_size].float()
    p = torch.softmax(logits, dim=-1)
    xhat = p @ E.float()  # (B, L, d)
    mmse = ((E[x].float() - xhat) ** 2).sum(-1)
    nll = -torch.log_softmax(logits, dim=-1).gather(-1, x[..., None]).squeeze(-1)
    return mmse, nll


@torch.no_grad()
def path_integral(model, x, gammas, generator=None):
    """1/2 sum_i int mmse_i dgamma_i along a per-token SNR path, trapezoid rule (I-MMSE: Guo, Shamai
    & Verdu 2005; dI/dgamma_i = mmse_i / 2). gammas: (S, B, L) or (S,) grid, non-decreasing in S,
    from 0. Returns (cumulative integral per sequence in nats (S, B), nll (S, B) = sum_i -log p(x_i|z_s))."""
    B, L = x.shape
    gammas = gammas.to(x.device).float()
    if gammas.dim() == 1:
        gammas = gammas[:, None, None].expand(-1, B, L)  # (S, B, L)
    S = gammas.shape[0]
    mm, nl = zip(*[mmse_and_nll(model, x, gammas[s], generator) for s in range(S)])
    mm, nl = torch.stack(mm), torch.stack(nl)  # (S, B, L)
    # the trapezoid rule, per token
    steps = 0.5 * (mm[1:] + mm[:-1]) * (gammas[1:] - gammas[:-1])
    cum = torch.cat([torch.zeros(1, B, device=x.device), 0.5 * steps.sum(-1).cumsum(0)])
    return cum, nl.sum(-1)


@torch.no_grad()
def diffusion_bound(model, x, g_end=None, n=64, generator=None):
    """Diffusion NLL bound (nats/token): min over the cut-off g* on the grid of
    1/2 int_0^{g*} E||e_x - xhat(z_gamma)||^2 dgamma + E[-log p(x | z_{g*})], with one shared gamma
    per sequence. Taking the min over g* after averaging is a (slightly optimistic) grid search;
    every single g* gives a valid bound."""
    g_end = g_end or 4 * model.config['gamma_max']
    cum, nll = path_integral(model, x, snr_grid(g_end, n), generator)
    per_cut = (cum + nll).mean(1) / x.shape[1]  # (S,)
    return per_cut.min().item()


@torch.no_grad()
def val_bound(m, val_x, objective, batch_size=32, grid_points=64):
    """The training loop's fixed-seed validation number, nats/token: diffusion bound (dsl), MDLM NELBO (mdlm),
    next-token NLL (ar). Leaves m in train mode."""
    m.eval()
    g = torch.Generator(val_x.device).manual_seed(0)
    chunks = val_x.split(batch_size)
    if objective == 'dsl':
        # diffusion_bound, but the min over the cut-off g* is taken after averaging all chunks
        grid = snr_grid(4 * m.config['gamma_max'], grid_points)
        per_cut = torch.cat([sum(path_integral(m, x, grid, g)) for x in chunks], dim=1)  # (S, N)
        nats = per_cut.mean(1).min().item() / val_x.shape[1]
    elif objective == 'mdlm':
        nats = sum(mdlm_bound(m, x, n_t=8, generator=g) * len(x) for x in chunks) / len(val_x)
    else:
        nats = sum(ar_loss(m, x).item() * len(x) for x in chunks) / len(val_x)
    m.train()
    return nats
