"""The one-pass DSL loss against the plainly written two-pass objective it estimates (reference.py)."""

import torch
import torch.nn.functional as F

import model as M
import noise
import reference


def perturbed_model(V=7):
    torch.manual_seed(0)
    m = M.DiT(M.model_config('tiny', V, dsl=True))
    with torch.no_grad():
        for p in m.parameters():  # the zero-initialised head and gates would make every loss the same
            p.add_(0.05 * torch.randn_like(p))
    return m


def draws(fn, m, pool, B, n, seed):
    """n values of fn's loss and of its gradient for the head's first bias, each on B rows drawn from the pool
    without replacement (exchangeable rows, as the training batches)."""
    g = torch.Generator().manual_seed(seed)
    losses, grads = [], []
    for _ in range(n):
        x = pool[torch.randperm(len(pool), generator=g)[:B]]
        m.zero_grad()
        loss = fn(m, x, g)
        loss.backward()
        losses.append(loss.item())
        grads.append(m.output_layer.linear.bias.grad[0].item())
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(grads, dtype=torch.float64)


def z_score(a, b):
    return ((a.mean() - b.mean()) / (a.var() / len(a) + b.var() / len(b)).sqrt()).item()


def test_one_pass_loss_and_gradient_are_unbiased_for_the_two_pass_objective():
    m, w, B = perturbed_model(), 1.44, 8
    cfg = noise.snr_config(7)
    pool = torch.randint(0, 7, (24, 16), generator=torch.Generator().manual_seed(1))
    one = draws(lambda m, x, g: noise.dsl_loss(m, x, cfg, g, w), m, pool, B, 600, seed=2)
    ref = draws(lambda m, x, g: reference.dsl_loss(m, x, cfg, w, g), m, pool, B, 600, seed=3)
    assert abs(z_score(one[0], ref[0])) < 4, (one[0].mean(), ref[0].mean())
    assert abs(z_score(one[1], ref[1])) < 4, (one[1].mean(), ref[1].mean())
    # the same test tells a wrong weight apart: with w = 0.72 the two-pass objective and its gradient are many
    # standard errors away
    half = draws(lambda m, x, g: reference.dsl_loss(m, x, cfg, w / 2, g), m, pool, B, 600, seed=4)
    assert abs(z_score(one[0], half[0])) > 8 and abs(z_score(one[1], half[1])) > 8


def test_one_denoiser_call_per_dsl_loss():
    m = perturbed_model()
    calls = []
    forward = m.forward
    m.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    x = torch.randint(0, 7, (6, 16))
    for w in (0.0, 1.44):
        calls.clear()
        noise.dsl_loss(m, x, noise.snr_config(7), torch.Generator().manual_seed(0), w).backward()
        assert len(calls) == 1


def test_roar_rows_split_a_micro_batch_by_the_weight():
    assert noise.roar_rows(32, 0.0) == 0
    assert noise.roar_rows(32, 1.44) == 19  # round(32 * 1.44 / 2.44)
    assert noise.roar_rows(2, 100.0) == 1 and noise.roar_rows(2, 0.01) == 1  # one row of each kind
    try:
        noise.roar_rows(1, 1.0)
    except ValueError as e:
        assert 'at least 2 rows' in str(e)
    else:
        raise AssertionError('a 1-row micro-batch cannot hold both kinds')


def test_without_roar_the_loss_is_plain_mixed_cross_entropy():
    m, cfg, x = perturbed_model(), noise.snr_config(7), torch.randint(0, 7, (4, 16))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    gamma = noise.sample_gamma(4, 16, cfg, x.device, g2)[0]
    expected = F.cross_entropy(m(z=noise.localize(m.E()[x], gamma, g2))[..., :7].flatten(0, 1), x.flatten())
    assert torch.equal(noise.dsl_loss(m, x, cfg, g1, 0.0), expected)
