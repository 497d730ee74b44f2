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
