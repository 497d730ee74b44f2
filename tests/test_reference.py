"""The fast sampler against the plainly written one (reference.py): the same samples at the same seed."""

import pytest
import torch

import model as M
import reference
import sample


def perturbed_dsl_model(V):
    torch.manual_seed(0)
    m = M.DiT(M.model_config('tiny', V, dsl=True))
    with torch.no_grad():
        for p in m.parameters():  # the zero-initialised head and gates would make every token equally likely
            p.add_(0.1 * torch.randn_like(p))
    return m


@pytest.mark.parametrize(
    'V, L, B, T, top_p, kappa',
    [
        (7, 16, 8, 8, 0.9, 1.0),
        (65, 32, 16, 16, 0.9, 1.0),
        (65, 32, 16, 32, 1.0, 1.0),
        (65, 24, 8, 64, 0.8, 2.0),
    ],
)
def test_uncertainty_sampler_draws_the_reference_samples(V, L, B, T, top_p, kappa):
    """sample.generate's `uncertainty` (endpoint table, head only where needed, ReMDM's cache, the chunked
    nucleus) draws exactly reference.uncertainty_sample's tokens at the same seed."""
    m = perturbed_dsl_model(V)
    ref = reference.uncertainty_sample(m, B, L, T, top_p, kappa, torch.Generator().manual_seed(3))
    fast, _ = sample.generate(
        m, B, L, T, 'uncertainty', top_p=top_p, generator=torch.Generator().manual_seed(3), kappa=kappa
    )
    assert torch.equal(fast, ref)
    # and the check can fail: another seed gives other samples
    other = reference.uncertainty_sample(m, B, L, T, top_p, kappa, torch.Generator().manual_seed(4))
    assert not torch.equal(other, ref)


def test_reference_nucleus_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, -1)
    tokens = reference.nucleus_draw(logits, 0.85, torch.Generator().manual_seed(0))
    # cumulative 0.5, 0.8 <= 0.85 < 0.95: tokens 0 and 1 only, in proportion 5 : 3
    assert set(tokens.tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.625) < 0.04
