"""
The method in its plainest form, straight from the equations: no caches, endpoint tables, top-k lookups or
one-pass tricks. The real code (noise.py, sample.py) is checked against these functions by the tests; read
them first to see what the fast paths compute.
"""

import torch
import torch.nn.functional as F

import noise


def dsl_loss(model, x, cfg, roar_weight, generator):
    """The DSL training objective CE_mixed + w * ROAR with two denoiser calls on every row of x (B, L).

    CE_mixed: z_i = gamma_i e_{x_i} + sqrt(gamma_i) eps_i with gamma from the mixed corruption, and the
    cross-entropy of x_theta(z) against x at every position (no time weighting: the denoiser sees no gamma).
    ROAR: k ~ U{0..L-1} tokens revealed at gamma_max, the others at z = 0 ([MASK]); the cross-entropy at the
    hidden positions, averaged per sequence (the authors' DSL2 code, dsl/metrics.py::nll_roar), then over
    rows. noise.dsl_loss estimates the same sum without bias in one call."""
    B, L = x.shape
    gamma = noise.sample_gamma(B, L, cfg, x.device, generator)[0]  # (B, L)
    z = noise.localize(model.E()[x], gamma, generator)  # (B, L, d)
    ce_mixed = F.cross_entropy(model(z=z)[..., : model.vocab_size].flatten(0, 1), x.flatten())
    revealed = noise.sample_endpoint_mask(B, L, x.device, generator)  # (B, L)
    x_roar = torch.where(revealed, x, torch.full_like(x, model.mask_id))
    logp = noise.token_logprobs(model(x=x_roar), x, model.vocab_size)  # (B, L)
    hidden = ~revealed
    roar = (-(logp * hidden).sum(1) / hidden.sum(1)).mean()
    return ce_mixed + roar_weight * roar


@torch.no_grad()
def nucleus_draw(logits, top_p, generator):
    """One token per row of logits (N, V) from the nucleus of ReMDM's code: sort the probabilities (float64),
    keep tokens while the cumulative probability stays <= top_p (the top token always), renormalise, draw by
    inverse CDF with one uniform per row."""
    u = torch.rand(len(logits), 1, generator=generator, dtype=torch.float64, device=logits.device)
    p = torch.softmax(logits.double(), dim=-1)
    if top_p >= 1:
        cdf = p.cumsum(-1)
        return torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=p.shape[-1] - 1)[:, 0]
    p_sorted, order = p.sort(dim=-1, descending=True)
    cdf = p_sorted.cumsum(-1)
    keep = (cdf <= top_p).sum(-1, keepdim=True).clamp(min=1)  # (N, 1) nucleus size
    mass = cdf.gather(-1, keep - 1)
    j = torch.searchsorted(cdf, u * mass).clamp(max=keep - 1)
    return order.gather(-1, j)[:, 0]


@torch.no_grad()
def uncertainty_sample(model, B, L, T, top_p=0.9, kappa=1.0, generator=None):
    """DSL's uncertainty-guided remasking, unconditional, T steps on alpha_k = k / T (the revealed fraction).

    Each step calls the denoiser on the current endpoint state (hidden tokens at z = 0, revealed ones at
    gamma_max e_x) and, for every revealed token, u_i = 1 - p_theta(x_i | state):
      remask a revealed token with probability sigma_i = min(1, kappa u_i);
      reveal each hidden token with probability (alpha_s L - sum_revealed (1 - sigma_i)) / #hidden, so that
      E[#revealed after the step] = alpha_s L, and draw its value from the top-p nucleus of p_theta.
    One uniform per position decides both moves (the sets are disjoint). After the last step, positions still
    hidden take the argmax. sample.generate(model, B, L, T, 'uncertainty') is the fast path of this loop."""
    model.eval()
    V, mask = model.vocab_size, model.mask_id
    x = torch.full((B, L), mask, dtype=torch.long)
    alpha = torch.arange(T + 1) / T
    for k in range(T):
        a_s = alpha[k + 1]
        hidden = x == mask
        revealed = ~hidden
        logits = model(x=x)[..., :V].float()  # (B, L, V)
        p_current = torch.softmax(logits, -1).gather(-1, x.clamp(max=V - 1)[..., None])[..., 0]
        sigma = (kappa * (1 - p_current)).clamp(0, 1) * revealed
        kept = ((1 - sigma) * revealed).sum(1, keepdim=True)
        reveal_p = ((a_s * L - kept) / hidden.sum(1, keepdim=True).clamp(min=1)).clamp(0, 1) * hidden
        r = torch.rand((B, L), generator=generator)
        remask = revealed & (r < sigma)
        reveal = hidden & (r < reveal_p)
        tokens = nucleus_draw(logits[reveal], top_p, generator)
        left = hidden & ~reveal | remask
        x = x.masked_fill(remask, mask)
        x[reveal] = tokens
        if k == T - 1:
            x[left] = logits[left].argmax(-1)
    return x
