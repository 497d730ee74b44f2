"""Core: the DiT, the DSL converter, the corruption processes and the NLL bounds (issue #2).
The bounds are checked against the exact Bayes denoiser of the cyclic toy (docs/method.md §17)."""

import math

import pytest
import torch

import model
import noise
import toy

LN7 = math.log(7)


def toy_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return toy.shifts()[torch.randint(0, 7, (n,), generator=g)]  # (n, 7)


def randomize(m, seed=0, std=0.2):
    """Untrained DiTs are zero-initialised at the output (adaLN-zero); give them non-trivial weights."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std if p.dim() > 1 else std / 2)
    return m


# ----------------------------------------------------------------------------- the diffusion bound


def window_path(order, n_per, g_end):
    """Per-token SNR path where token order[j] rises 0 -> g_end (log-spaced) during the j-th window and
    the others wait: the "staggered" AR-like path (order = identity) or a random-order path."""
    L = len(order)
    ramp = noise.snr_grid(g_end, n_per)  # (n_per,) from 0
    S = L * (n_per - 1) + 1
    g = torch.zeros(S, L)
    for j, i in enumerate(order):
        start = j * (n_per - 1)
        g[start : start + n_per, i] = ramp
        g[start + n_per :, i] = g_end
    return g  # (S, L)


@pytest.mark.parametrize('path', ['shared', 'staggered', 'random'])
def test_diffusion_bound_is_path_invariant_for_exact_denoiser(path):
    """I-MMSE: 1/2 sum_i int mmse_i dgamma_i = I(x; z_end) = H(x) = ln 7 on every path (exact denoiser)."""
    oracle, x, g_end = toy.Oracle(), toy_batch(2048), 120.0
    gen = torch.Generator().manual_seed(1)
    if path == 'shared':
        nats_per_token = noise.diffusion_bound(oracle, x, g_end=g_end, n=64, generator=gen)
        total = nats_per_token * 7
    else:
        order = list(range(7)) if path == 'staggered' else torch.randperm(7, generator=gen).tolist()
        g = window_path(order, 32, g_end)
        cum, nll = noise.path_integral(oracle, x, g[:, None, :].expand(-1, len(x), -1), gen)
        assert nll[-1].mean() < 1e-3  # at the end of the path every token is known
        total = (cum[-1] + nll[-1]).mean().item()
    assert abs(total - LN7) / LN7 < 0.03, (path, total)


def test_bounds_of_exact_denoiser_and_untrained_model():
    """The MDLM NELBO and the any-order AR bound of the exact denoiser equal ln 7 per sequence (tight:
    exact conditionals); an untrained model (uniform over 7) pays ln 7 per *token*."""
    oracle, x = toy.Oracle(), toy_batch(2048)
    gen = torch.Generator().manual_seed(2)
    mdlm = noise.mdlm_bound(oracle, x, n_t=8, generator=gen) * 7
    roar = noise.roar_bound(oracle, x, n_k=8, generator=gen) * 7
    assert abs(mdlm - LN7) / LN7 < 0.06 and abs(roar - LN7) / LN7 < 0.06, (mdlm, roar)
    untrained = model.DiT(model.model_config('tiny', 7))
    u = noise.mdlm_bound(untrained, x, n_t=4, generator=torch.Generator().manual_seed(2))
    assert abs(u - LN7) < 0.05 and u * 7 > 3 * mdlm
    # the training loss agrees: oracle far below the untrained model
    t = torch.full((len(x),), 0.5)
    assert noise.mdlm_loss(oracle, x, t).mean() < 0.5 * noise.mdlm_loss(untrained, x, t).mean()


def test_bounds_are_reproducible_with_a_seeded_generator():
    m = randomize(model.DiT(model.model_config('tiny', 7, dsl=True)))
    x = toy_batch(16)
    a = noise.diffusion_bound(m, x, n=16, generator=torch.Generator().manual_seed(3))
    b = noise.diffusion_bound(m, x, n=16, generator=torch.Generator().manual_seed(3))
    assert a == b and math.isfinite(a)


# ----------------------------------------------------------------------------- corruption processes


def test_mixed_snr_sampler_matches_its_settings():
    cfg = noise.snr_config(50257, p_end=0.3)
    B, L = 20000, 8
    gamma, is_end, revealed = noise.sample_gamma(B, L, cfg, 'cpu', torch.Generator().manual_seed(0))
    frac = is_end.float().mean().item()
    assert abs(frac - 0.3) < 4 * math.sqrt(0.3 * 0.7 / B)
    end, mid = gamma[is_end], gamma[~is_end]
    vis, hid = end[revealed[is_end]], end[~revealed[is_end]]
    assert vis.min() >= cfg['reveal_floor'] * cfg['gamma_max'] and vis.max() <= cfg['gamma_max']
    assert hid.min() >= 0 and hid.max() <= cfg['gamma_min']
    assert abs(vis.mean() - 0.9 * cfg['gamma_max']) < 0.5 and abs(hid.mean() - 0.5 * cfg['gamma_min']) < 0.02
    # k ~ U{0..L-1}: the revealed fraction averages (L-1)/(2L)
    assert abs(revealed[is_end].float().mean() - (L - 1) / (2 * L)) < 0.01
    # intermediate rows share one gamma per sequence, lognormal(log_snr_mean, log_snr_std) before the clamp
    assert (mid == mid[:, :1]).all()
    assert mid.max() <= cfg['gamma_max']
    p_clamp = 1 - torch.distributions.Normal(cfg['log_snr_mean'], cfg['log_snr_std']).cdf(
        torch.tensor(math.log(cfg['gamma_max']))
    )
    assert abs((mid[:, 0] == cfg['gamma_max']).float().mean() - p_clamp) < 0.015
    wide = dict(cfg, p_end=0.0, gamma_max=1e9)  # no clamp: the lognormal moments themselves
    logg = noise.sample_gamma(B, 1, wide, 'cpu', torch.Generator().manual_seed(5))[0].log()
    assert abs(logg.mean() - cfg['log_snr_mean']) < 0.05 and abs(logg.std() - cfg['log_snr_std']) < 0.05
    # atomic endpoints and per-token jitter
    atomic = dict(cfg, p_end=1.0, smooth_endpoints=False)
    g2, _, rev2 = noise.sample_gamma(100, L, atomic, 'cpu', torch.Generator().manual_seed(1))
    assert set(g2.unique().tolist()) <= {0.0, cfg['gamma_max']} and (g2[rev2] == cfg['gamma_max']).all()
    g3, _, _ = noise.sample_gamma(
        100, L, dict(cfg, p_end=0.0, jitter=0.1), 'cpu', torch.Generator().manual_seed(1)
    )
    assert not (g3 == g3[:, :1]).all()


def test_localize_and_mdlm_masking():
    e = torch.nn.functional.normalize(torch.randn(4, 5, 16), dim=-1)
    gamma = torch.tensor([0.0, 1.0, 10.0, 100.0])[:, None].expand(4, 5)
    z = noise.localize(e, gamma, torch.Generator().manual_seed(0))
    assert (z[0] == 0).all()  # gamma = 0 carries no information: exactly [MASK]
    big = noise.localize(e[:1].expand(4000, 5, 16), 25.0, torch.Generator().manual_seed(0))
    assert torch.allclose(big.mean(0), 25 * e[0], atol=0.4) and abs(big.var(0).mean() - 25) < 1.5
    t = noise.sample_t(64, 'cpu', generator=torch.Generator().manual_seed(0))
    strata = ((t - 1e-3) / (1 - 1e-3) * 64).floor().long()
    assert sorted(strata.tolist()) == list(range(64))  # antithetic: one draw per stratum
    t2 = noise.sample_t(8, 'cpu', rank=1, world_size=4, generator=torch.Generator().manual_seed(0))
    assert ((t2 > 0.25) & (t2 < 0.5)).all()  # rank 1's slice of the global grid
    x = torch.randint(0, 7, (1000, 50))
    xt, masked = noise.mdlm_corrupt(x, torch.full((1000,), 0.3), 7, torch.Generator().manual_seed(0))
    assert (
        abs(masked.float().mean() - 0.3) < 0.01
        and (xt[masked] == 7).all()
        and (xt[~masked] == x[~masked]).all()
    )


def test_losses_run_and_backpropagate():
    x = toy_batch(8)
    for objective, kw in [('dsl', dict(dsl=True)), ('mdlm', {}), ('ar', dict(causal=True))]:
        m = randomize(model.DiT(model.model_config('tiny', 7, **kw)))
        loss = noise.loss_fn(objective, m, x, dict(noise.snr_config(7), roar_weight=0.5))
        loss.backward()
        assert math.isfinite(loss.item()) and m.vocab_embed.embedding.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='unknown objective'):
        noise.loss_fn('gauss', m, x, {})


# ----------------------------------------------------------------------------- the model


def test_small_preset_matches_mdlm_size():
    with torch.device('meta'):
        m = model.DiT(model.model_config('small', 50257))
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - 169.6e6) < 0.1e6, n  # MDLM OWT: 169.6M with 50258 embedding rows


def test_converted_dsl_model_matches_mdlm_at_atomic_endpoints():
    """z = gamma_max e_x reads as token x and z = 0 as [MASK] (with 1% mass spread over tokens, from
    b_mask = ln(99 V)): the converted model's logits equal the MDLM model's within 1e-3 of their spread."""
    V = 65
    mdlm = randomize(model.DiT(model.model_config('tiny', V)), std=0.3)
    dsl = model.convert_to_dsl(mdlm)
    assert torch.equal(dsl.vocab_embed.embedding, mdlm.vocab_embed.embedding)
    x = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(0))
    x[:, ::3] = V
    with torch.no_grad():
        a, b = mdlm(x=x), dsl(x=x)
        b_z = dsl(z=dsl.endpoint_z(x))  # the same state through the general z path
        assert torch.allclose(b, b_z, atol=1e-5)
        assert (a - b).abs().max() < 1e-3 * a.std()
        # the residual comes from the 1% [MASK] uncertainty: a larger b_mask shrinks it
        dsl.converter.bias[V] += 10
        assert (a - dsl(x=x)).abs().max() < 0.5 * (a - b).abs().max()
        # the endpoint table (samplers' fast path) gives the same logits as the converter
        dsl.converter.bias[V] -= 10
        dsl.eval()
        dsl.build_endpoint_table(chunk=16)
        assert torch.allclose(dsl(x=x), b, atol=1e-5)


def test_head_at_selected_positions_and_causal_mode():
    m = randomize(model.DiT(model.model_config('tiny', 11, causal=True)))
    x = torch.randint(0, 11, (3, 10))
    with torch.no_grad():
        full = m(x=x)
        sel = torch.rand(3, 10) < 0.4
        assert torch.allclose(m(x=x, out_idx=sel), full[sel], atol=1e-5)
        x2 = x.clone()
        x2[:, 6:] = (x2[:, 6:] + 1) % 11  # changing the future leaves causal outputs before it alone
        assert torch.allclose(m(x=x2)[:, :6], full[:, :6], atol=1e-5)
        m.blocks[0].causal = m.blocks[1].causal = False
        assert not torch.allclose(m(x=x2)[:, :6], full[:, :6], atol=1e-5)


def test_rotary_makes_attention_depend_on_relative_position_only():
    """A shift of every position by the same offset leaves q.k unchanged (rotate_half RoPE)."""
    rot = model.Rotary(8)
    cos, sin = rot(12, 'cpu')
    q, k = torch.randn(8), torch.randn(8)
    apply = lambda v, i: v * cos[0, 0, i] + model.rotate_half(v) * sin[0, 0, i]
    assert torch.allclose(apply(q, 5) @ apply(k, 2), apply(q, 9) @ apply(k, 6), atol=1e-5)
    assert not torch.allclose(apply(q, 5) @ apply(k, 2), apply(q, 5) @ apply(k, 3), atol=1e-3)


def test_bad_input_says_what_is_wrong():
    m = model.DiT(model.model_config('tiny', 7, dsl=True))
    tok = model.DiT(model.model_config('tiny', 7))
    with pytest.raises(ValueError, match='unknown model preset'):
        model.model_config('huge', 7)
    with pytest.raises(ValueError, match='unknown model config key'):
        model.model_config('tiny', 7, n_layers=3)
    with pytest.raises(ValueError, match=r'token ids must lie in \[0, 7\]'):
        m(x=torch.tensor([[0, 8]]))
    with pytest.raises(ValueError, match='int64'):
        m(x=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r'shape \(B, L, 16\)'):
        m(z=torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match='needs a DSL model'):
        tok(z=torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match='exactly one'):
        m()
    with pytest.raises(ValueError, match='out_idx'):
        m(x=torch.zeros(1, 3, dtype=torch.long), out_idx=torch.ones(1, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- loading MDLM weights


@pytest.fixture(scope='module')
def small_pair(tmp_path_factory):
    """A `small`-preset model with random weights, saved in the HF and the Lightning layouts.
    (V = 255 instead of GPT-2's vocabulary keeps the files small; the layout is the same.)"""
    torch.manual_seed(0)
    ref = randomize(model.DiT(model.model_config('small', 255)), std=0.02)
    sd = {'backbone.' + k: v.clone() for k, v in ref.state_dict().items()}
    d = tmp_path_factory.mktemp('mdlm')
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / 'model.safetensors'))
    # Lightning: raw weights in state_dict, EMA weights as a list in backbone.parameters() order
    raw = {k: v + 1.0 for k, v in sd.items() if 'inv_freq' not in k}
    raw['backbone.rotary_emb.inv_freq'] = sd['backbone.rotary_emb.inv_freq']
    shadow = [p.detach().clone() for p in ref.parameters()]
    torch.save({'state_dict': raw, 'ema': {'shadow_params': shadow}}, d / 'last.ckpt')
    return ref, d


def test_load_mdlm_round_trips(small_pair):
    ref, d = small_pair
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x=x)
        hf = model.load_mdlm(str(d / 'model.safetensors'))
        assert hf.config['n_layer'] == 12 and hf.config['n_embd'] == 768
        assert torch.allclose(hf(x=x), want, atol=1e-5)
        lightning = model.load_mdlm(str(d / 'last.ckpt'))  # EMA by default
        assert torch.allclose(lightning(x=x), want, atol=1e-5)
        raw = model.load_mdlm(str(d / 'last.ckpt'), use_ema=False)
        assert torch.equal(raw.blocks[0].attn_qkv.weight, ref.blocks[0].attn_qkv.weight + 1)
        dsl = model.load_mdlm(str(d / 'model.safetensors'), dsl=True)
        assert dsl.dsl and torch.equal(dsl.blocks[3].mlp[0].weight, ref.blocks[3].mlp[0].weight)


def test_load_mdlm_names_missing_and_unexpected_keys(tmp_path):
    m = model.DiT(model.model_config('tiny', 7))
    sd = {'backbone.' + k: v for k, v in m.state_dict().items()}
    del sd['backbone.blocks.1.norm2.weight']
    sd['backbone.blocks.1.extra.weight'] = torch.zeros(3)
    torch.save({'state_dict': sd}, tmp_path / 'bad.ckpt')
    with pytest.raises(KeyError, match=r"blocks\.1\.norm2\.weight.*blocks\.1\.extra\.weight"):
        model.load_mdlm(str(tmp_path / 'bad.ckpt'))
    with pytest.raises(FileNotFoundError, match='not found'):
        model.load_mdlm(str(tmp_path / 'nope.ckpt'))


def test_hub_id_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(SystemExit, match='pass a local'):
        model.load_mdlm('kuleshov-group/mdlm-owt-nonexistent')


def plain_lookup(conv, z, W):
    """The dense soft lookup written plainly: the converter's probabilities, then a matmul (autograd keeps
    p)."""
    return conv(z) @ W


def test_dense_soft_lookup_backward_is_exact():
    """The dense lookup's custom backward against finite differences (float64), for all five inputs."""
    g = torch.Generator().manual_seed(0)
    n, V, d, D = 5, 7, 4, 6
    z, E, W = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((n, d), (V, d), (V + 1, D)))
    beta, bias = torch.tensor(1.3, dtype=torch.float64), torch.randn(V + 1, generator=g, dtype=torch.float64)
    z[-1] = 0  # a [MASK] row
    args = [t.requires_grad_() for t in (z, E, beta, bias, W)]
    assert torch.autograd.gradcheck(model.DenseSoftLookup.apply, args)


@pytest.mark.parametrize('V', [65, 2048])
def test_dense_soft_lookup_equals_the_plain_formula(V):
    """DenseSoftLookup gives the plain lookup and autograd's gradients for z, E (through the normalised noise
    embeddings), beta, b and W: in float32 against the converter-then-matmul at noise levels where float32
    gradients are well conditioned, and in float64 (the converter's softmax is float32: the formula written
    out) from [MASK] to gamma_max; it keeps no (n, V)-sized tensor for the backward."""
    g = torch.Generator().manual_seed(V)
    n, d, D = 5, 16, 32
    torch.manual_seed(V)
    conv = model.Converter(V, d, freeze=False)
    with torch.no_grad():
        conv.beta.fill_(1.2)
        conv.bias[:V] = 0.5 * torch.randn(V, generator=g)
    x = torch.randint(0, V, (n,), generator=g)
    noise, W, a = (
        torch.randn(n, d, generator=g),
        torch.randn(V + 1, D, generator=g),
        torch.randn(n, D, generator=g),
    )

    def check(dtype, gamma, formula, tol):
        c = model.Converter(V, d, freeze=False).to(dtype)
        c.load_state_dict(conv.state_dict())
        # z = gamma e_x + sqrt(gamma) noise, the corruption of token x at SNR gamma (gamma = 0: [MASK])
        z = gamma[:, None] * c.E().detach()[x] + gamma.sqrt()[:, None] * noise.to(dtype)
        params = [z.requires_grad_(), c.noise_embed, c.beta, c.bias, W.to(dtype).requires_grad_()]
        h_ref = formula(c, z, params[-1])
        grads_ref = torch.autograd.grad((h_ref * a.to(dtype)).sum(), params)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            h = model.DenseSoftLookup.apply(z, c.E(), c.beta, c.bias, params[-1])
        assert not [s for s in saved if len(s) == 2 and s[0] == n and s[1] >= V]
        grads = torch.autograd.grad((h * a.to(dtype)).sum(), params)
        torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol * h_ref.abs().max().item())
        for name, gr, ref in zip(['z', 'E', 'beta', 'b', 'W'], grads, grads_ref):
            torch.testing.assert_close(gr, ref, rtol=tol, atol=tol * ref.abs().max().item(), msg=name)

    def written_out(c, z, W):
        s = torch.cat([c.beta * z @ c.E().t(), torch.zeros_like(z[:, :1])], -1) + c.bias
        return torch.softmax(s, -1) @ W

    check(torch.float32, torch.tensor([0.0, 0.3, 1.0, 3.0, 10.0]), plain_lookup, 1e-5)
    check(torch.float64, torch.tensor([0.0, 0.3, 3.0, 30.0, 100.0], dtype=torch.float64), written_out, 1e-10)


def test_training_uses_the_dense_soft_lookup_function(monkeypatch):
    """A dense DSL model trains through DenseSoftLookup, with the loss and every gradient of the plain lookup;
    without grad the plain converter runs, so sampling and the endpoint tables are unchanged bit for bit."""
    V, B, L = 1500, 2, 8
    m = randomize(model.DiT(model.model_config('tiny', V, dsl=True, lookup_topk=0)), std=0.05)
    x = torch.randint(0, V, (B, L), generator=torch.Generator().manual_seed(0))
    cfg = noise.snr_config(V)
    calls = []
    real = model.DenseSoftLookup.apply
    monkeypatch.setattr(model.DenseSoftLookup, 'apply', lambda *a: calls.append(1) or real(*a))

    def loss_and_grads():
        m.zero_grad()
        loss = noise.loss_fn('dsl', m, x, cfg, generator=torch.Generator().manual_seed(1))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]

    loss, grads = loss_and_grads()
    assert calls
    monkeypatch.setattr(
        model.DiT,
        '_dense_lookup',
        lambda self, z: plain_lookup(self.converter, z, self.vocab_embed.embedding),
    )
    loss_ref, grads_ref = loss_and_grads()
    torch.testing.assert_close(loss, loss_ref, rtol=1e-6, atol=0)
    assert len(grads) == len(grads_ref)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, grads_ref))
    calls.clear()
    z = torch.randn(B, L, m.config['noise_dim'])
    with torch.no_grad():
        h, h_ref = m.embed(z=z), plain_lookup(m.converter, z, m.vocab_embed.embedding)
    assert not calls and torch.equal(h, h_ref)


def test_topk_softmax_backward_is_exact():
    """The sparse lookup's custom backward against finite differences (float64)."""
    g = torch.Generator().manual_seed(0)
    z, E = (
        torch.randn(5, 6, generator=g, dtype=torch.float64),
        torch.randn(40, 6, generator=g, dtype=torch.float64),
    )
    beta, bias = torch.tensor(1.3, dtype=torch.float64), torch.randn(41, generator=g, dtype=torch.float64)
    args = [t.requires_grad_() for t in (z, E, beta, bias)]
    assert torch.autograd.gradcheck(lambda *a: model.TopKSoftmax.apply(*a, 7)[:2], args)
    p_top, p_mask, idx = model.TopKSoftmax.apply(*args, 7)
    p = torch.softmax(torch.cat([beta * z @ E.t() + bias[:40], bias[40].expand(5, 1)], -1), -1)
    assert torch.allclose(p_top, p[:, :40].topk(7).values) and torch.allclose(p_mask, p[:, 40])


def test_sparse_lookup_against_its_dense_formula_and_the_exact_lookup():
    """lookup_topk = k: h = sum_top p_v W_v + p_mask W_mask + r Wbar. Values and gradients (E, beta, b, W)
    equal autograd through that formula built from the dense softmax; at endpoints it equals the exact
    lookup."""
    V, k = 3000, 16  # above model.DENSE_LOOKUP_MAX: top-64 by default
    m = randomize(model.DiT(model.model_config('tiny', V, dsl=True)), std=0.05).train()
    assert (
        m.config['lookup_topk'] == 64
        and model.DiT(model.model_config('tiny', 65, dsl=True)).config['lookup_topk'] == 0
    )
    m.config['lookup_topk'] = k
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (2, 8), generator=g)
    z = noise.localize(m.E()[x].detach(), torch.tensor([[4.0], [12.0]]), g)  # mid SNRs: a real tail

    def reference(z):
        c, W = m.converter, m.vocab_embed.embedding
        p = c(z)  # (B, L, V+1) dense
        top, idx = p[..., :V].topk(k, -1)
        r = 1 - top.sum(-1) - p[..., V]
        return (top[..., None] * W[idx]).sum(-2) + p[..., V:] * W[V] + r[..., None] * W[:V].mean(0)

    grads = []
    for fn in (lambda z: m.embed(z=z), reference):
        m.zero_grad()
        h = fn(z)
        (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        grads.append(
            (
                h.detach(),
                [
                    p.grad.clone()
                    for p in (
                        m.converter.noise_embed,
                        m.converter.beta,
                        m.converter.bias,
                        m.vocab_embed.embedding,
                    )
                ],
            )
        )
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    m = model.DiT(model.model_config('tiny', V, dsl=True, lookup_topk=k))  # the converter at its init
    with torch.no_grad():  # endpoints carry (almost) all their mass on one slot: the exact lookup
        ends = m.endpoint_z(torch.tensor([[3, V, 7, V]]))
        sparse = m.embed(z=ends)
        m.config['lookup_topk'] = 0
        dense = m.embed(z=ends)
        assert ((sparse - dense).norm(dim=-1) / dense.norm(dim=-1)).max() < 1e-3
