"""The commit state of DSL discrete samplers (issue #10, part 2): gamma_commit, the SNR at which a revealed
non-prompt token is shown to the model, deterministic (commit table) or with channel noise (z path)."""

import math

import pytest
import torch
from test_sample import gen, one_thread, tiny  # noqa: F401 (one_thread: autouse fixture)

import sample
import toy


def test_gamma_commit_at_gamma_max_reproduces_todays_samples():
    m = tiny(True)
    gmax = m.config['gamma_max']
    prompt = torch.full((10,), m.mask_id)
    prompt[:2] = torch.tensor([1, 2])
    for s in ('uncertainty', 'loop', 'conf', 'roar', 'hybrid'):
        a, _ = gen(m, 6, 10, 7, s, prompt=prompt, top_p=0.9)
        b, _ = gen(m, 6, 10, 7, s, prompt=prompt, top_p=0.9, gamma_commit=gmax)
        assert torch.equal(a, b), s
    draft = torch.tensor([[3, 1, 4, m.mask_id, 5, 9, 2, m.mask_id, 6, 5]]).expand(8, -1)
    x, _ = sample.repair(m, draft, 5, generator=torch.Generator().manual_seed(0))
    y, _ = sample.repair(m, draft, 5, generator=torch.Generator().manual_seed(0), gamma_commit=float(gmax))
    assert torch.equal(x, y)


def test_commit_table_is_the_converter_at_the_commit_state():
    m, g = tiny(True), 7.5
    m.build_endpoint_table(gamma_commit=g, chunk=4)
    ids = torch.arange(m.vocab_size + 1)
    with torch.no_grad():
        W = m.vocab_embed.embedding
        ref = m.converter(g * m.E()[ids.clamp(max=m.vocab_size - 1)] * (ids < m.vocab_size)[:, None]) @ W
        assert torch.allclose(m.commit_table, ref, atol=1e-6)
        assert torch.allclose(m.table, m.endpoint_rows(), atol=0)  # the gamma_max table is unchanged
        # a mixed state: hidden, prompt at gamma_max, committed at g; the table path equals the z path
        x = torch.randint(0, m.vocab_size, (3, 9))
        x[:, 4] = m.mask_id
        commit = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        z = m.endpoint_z(x, torch.where(commit, g, m.config['gamma_max']))
        assert torch.allclose(m(x=x, commit=commit), m(z=z), atol=1e-5)
        assert not torch.allclose(m(x=x, commit=commit), m(x=x), atol=1e-3)  # g does change the input
        m.drop_endpoint_table()
        with pytest.raises(ValueError, match='commit'):
            m(x=x, commit=commit)


def test_sampler_shows_revealed_free_tokens_at_gamma_commit_and_the_prompt_at_gamma_max():
    """Record what the model sees: prompt rows at gamma_max, revealed free rows at gamma_commit, hidden at
    0."""
    m, g = tiny(True), 5.0
    seen = []
    hook = m.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw), with_kwargs=True)
    prompt = torch.full((8,), m.mask_id)
    prompt[:2] = torch.tensor([1, 2])
    x, info = gen(m, 4, 8, 6, 'uncertainty', prompt=prompt, gamma_commit=g)
    hook.remove()
    assert (
        info['nfe'] == 6 == len(seen)
        and (x[:, :2] == torch.tensor([1, 2])).all()
        and (x < m.vocab_size).all()
    )
    for kw in seen[1:]:  # after the first call some free tokens are revealed
        commit, ids = kw['commit'], kw['x']
        assert not commit[:, :2].any() and torch.equal(commit[:, 2:], ids[:, 2:] != m.mask_id)
    # channel noise: z path; |<z, e_x> - g| is the noise projection, N(0, g); prompt rows are exact
    seen.clear()
    hook = m.register_forward_pre_hook(lambda mod, args, kw: seen.append(kw), with_kwargs=True)
    gen(m, 64, 8, 6, 'loop', prompt=prompt, gamma_commit=g, commit_noise=1)
    hook.remove()
    z = seen[-1]['z']  # (B, L, d)
    E = m.E()
    assert torch.allclose(
        z[:, :2], m.config['gamma_max'] * E[torch.tensor([1, 2])].expand(64, -1, -1), atol=1e-5
    )
    norms = z[:, 2:].norm(dim=-1)
    vis = norms > 0
    expect = math.sqrt(g * g + g * m.config['noise_dim'])  # E||g e + sqrt(g) eps||^2 = g^2 + g d
    assert vis.float().mean() > 0.5 and abs(norms[vis].mean().item() / expect - 1) < 0.1


def test_gamma_commit_lowers_the_oracles_confidence_in_a_visible_token():
    """The exact oracle: at gamma_commit < gamma_max a visible token's evidence is weaker, so even a right
    token gets some doubt u = 1 - p(x_i | state); the wrong ones of __CDBFF stay flagged and the repair still
    works."""
    o, draft = toy.Oracle(), toy.encode('__CDBFF')[None]
    vis = draft != toy.V
    us = {}
    for g in (30.0, 3.0):
        with torch.no_grad():
            lg = o(**sample.model_input(o, draft, vis, g))[0, :, : toy.V]
        us[g] = 1 - torch.softmax(lg.double(), -1)[torch.arange(7), draft[0].clamp(max=6)]
        assert us[g][[4, 6]].min() > 0.99 and us[g][[2, 3, 5]].max() < 0.01, (g, us[g])
    assert (us[3.0][[2, 3, 5]] > us[30.0][[2, 3, 5]]).all()
    x, _ = sample.repair(
        o, draft.expand(50, -1), 10, gamma_commit=3.0, generator=torch.Generator().manual_seed(0)
    )
    assert (x == toy.encode('ABCDEFG')).all(1).float().mean() >= 0.9


@pytest.mark.parametrize(
    'kw,msg',
    [
        (dict(gamma_commit=0.0), 'gamma_commit must'),
        (dict(gamma_commit=-1.0), 'gamma_commit must'),
        (dict(gamma_commit=float('nan')), 'gamma_commit must'),
        (dict(gamma_commit=1e9), 'gamma_commit must'),
        (dict(commit_noise=2), 'commit_noise must'),
        (dict(gamma_commit='5'), 'gamma_commit must'),
    ],
)
def test_bad_gamma_commit_is_one_clear_error(kw, msg):
    with pytest.raises(ValueError, match=msg) as e:
        gen(tiny(True), 1, 8, 4, 'uncertainty', **kw)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(ValueError, match='token-mode'):
        gen(tiny(False), 1, 8, 4, 'cap', gamma_commit=5.0)


def test_cli_gamma_commit(tmp_path, capsys):
    m = tiny(True)
    path = tmp_path / 'dsl.pt'
    torch.save(
        dict(model=m.state_dict(), ema=None, model_config=m.config, meta=None, config=dict(block_size=10)),
        path,
    )
    for extra in (['--gamma_commit', '4'], ['--gamma_commit', '4', '--commit_noise', '1']):
        sample.main(
            [
                '--ckpt',
                str(path),
                '--steps',
                '4',
                '--sampler',
                'uncertainty',
                '--num_samples',
                '3',
                '--out',
                str(tmp_path / 's.jsonl'),
                '--quiet',
            ]
            + extra
        )
    capsys.readouterr()
    for bad in ('0', 'nan', '-3'):
        with pytest.raises(SystemExit) as e:
            sample.main(['--ckpt', str(path), '--quiet', '--gamma_commit', bad])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and 'gamma_commit must' in err and len(err.splitlines()) == 1, err
