"""Samplers (issue #4): the exact Bayes oracle of the cyclic toy (docs/method.md §17), the rules'
reveal/remask frequencies against the formulas of docs/method.md §10-12, invariants of every sampler, and the
CLI's error lines."""

import json
import math

import pytest
import torch

import figures
import model
import rules
import sample
import toy

# tolerance in binomial standard errors
SE = 4


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """These tests run many tiny ops; on a busy 2-core machine intra-op threads cost 10x. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(m, seed=0, std=0.2):
    """Untrained DiTs predict uniform (zero-initialised output); give them non-trivial logits."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std if p.dim() > 1 else std / 2)
    return m.eval()


def tiny(dsl, causal=False, V=11):
    return randomize(model.DiT(model.model_config('tiny', V, dsl=dsl, causal=causal)))


def valid(x):
    """(B,) bool: the row is one of the 7 cyclic shifts."""
    return (x[:, None, :] == toy.shifts()[None]).all(-1).any(-1)


def gen(m, n, L, T, sampler, seed=0, **kw):
    return sample.generate(
        m,
        n,
        L,
        T,
        sampler=sampler,
        top_p=kw.pop('top_p', 1.0),
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def close(count, n, p):
    """Empirical count of n Bernoulli(p) draws within SE binomial standard errors (floor for p ~ 0 or 1)."""
    return abs(count - n * p) <= SE * math.sqrt(n * p * (1 - p)) + 1


# ----------------------------------------------------------------------------- the exact oracle


def test_roar_samples_the_seven_shifts_uniformly():
    x, info = gen(toy.Oracle(), 2100, 7, 7, 'roar')
    assert info['nfe'] == 7 and valid(x).all()
    counts = (x[:, None, :] == toy.shifts()[None]).all(-1).sum(0).double()
    chi2 = ((counts - 300) ** 2 / 300).sum().item()
    # chi-square, 6 dof, p = 0.001
    assert chi2 < 22.46, counts


def mdlm_invalid_rate(T, L=7):
    """MDLM reveals each token at an independent uniform step; the oracle makes every later token consistent
    with the first revealed group, whose c tokens (uniform marginals) agree with probability 7^-(c-1)."""
    ok = sum(
        math.comb(L, c) * T**-c * ((T - 1 - k) / T) ** (L - c) * 7.0 ** -(c - 1)
        for k in range(T)
        for c in range(1, L + 1)
    )
    return 1 - ok


@pytest.mark.parametrize('T', [3, 64])
def test_mdlm_invalid_rate_matches_independent_reveals(T):
    n = 3000
    x, _ = gen(toy.Oracle(), n, 7, T, 'mdlm', seed=T)
    bad = (~valid(x)).sum().item()
    assert close(bad, n, mdlm_invalid_rate(T)), (bad / n, mdlm_invalid_rate(T))


@pytest.mark.parametrize(
    'sampler,kw', [('loop', dict(eta=0.1)), ('budget', dict(rho=4.0)), ('uncertainty', {})]
)
def test_remasking_with_enough_steps_lowers_the_invalid_rate(sampler, kw):
    # ~0.046; T < L: mdlm_invalid_rate(3) ~ 0.74
    n, T, p_mdlm = 3000, 64, mdlm_invalid_rate(64)
    x, _ = gen(toy.Oracle(), n, 7, T, sampler, seed=1, **kw)
    bad = (~valid(x)).sum().item()
    assert bad / n < p_mdlm - SE * math.sqrt(p_mdlm * (1 - p_mdlm) / n), (sampler, bad / n, p_mdlm)


def test_uncertainty_repairs_the_draft_and_copying_cannot():
    oracle, draft, target = toy.Oracle(), toy.encode('__CDBFF')[None], toy.encode('ABCDEFG')
    hits = 0
    for seed in range(100):
        x, info = sample.repair(
            oracle, draft, 10, generator=torch.Generator().manual_seed(seed), trajectory=True
        )
        hits += bool((x[0] == target).all())
        # the oracle has no cache
        assert info['calls'] == 10 >= info['nfe'] and len(info['trajectory']) == 10
    assert hits >= 95
    # step 1 sends back exactly the two wrong tokens (B at 4, F at 6) and reveals A, B from the posterior
    assert toy.decode(info['trajectory'][0][0]) == 'ABCD_F_'
    x, _ = sample.repair(oracle, draft, 10, sampler='mdlm', generator=torch.Generator().manual_seed(0))
    # without remasking the visible mistakes stay
    assert toy.decode(x[0])[2:] == 'CDBFF'


@pytest.mark.parametrize('dsl', [True, False])
def test_a_step_that_changes_nothing_makes_no_call(dsl):
    """ReMDM's cache: at T = 2L most mdlm steps reveal nothing; the same samples come out bit for bit with
    fewer forwards, and each sample counts only the calls whose input changed (at batch 1: exactly the calls
    made)."""
    m, L, T = tiny(dsl), 8, 16

    # no head(): every step runs the whole model, as before the cache
    def blind(**kw):
        return m(**kw)

    blind.__dict__.update(
        vocab_size=m.vocab_size,
        mask_id=m.mask_id,
        dsl=m.dsl,
        config=m.config,
        table=None,
        commit_table=None,
        commit_gamma=None,
        parameters=m.parameters,
        buffers=m.buffers,
        training=False,
        eval=m.eval,
        train=lambda mode=True: None,
        build_endpoint_table=m.build_endpoint_table,
        endpoint_z=m.endpoint_z,
    )
    for s in ('mdlm', 'uncertainty') if dsl else ('mdlm', 'remdm-cap'):
        x, info = gen(m, 6, L, T, s)
        y, ref = gen(blind, 6, L, T, s)
        assert torch.equal(x, y) and ref['calls'] == T, s
        assert max(info['nfe_rows']) <= info['calls'] <= T and info['nfe'] < T, (s, info['nfe'])
        # one sample at a time: the counted calls are the calls made, and the same samples
        for i in range(3):
            xi, one = gen(m, 1, L, T, s, seed=i)
            assert torch.equal(xi, gen(blind, 1, L, T, s, seed=i)[0])
            assert one['nfe'] == one['calls'] == one['nfe_rows'][0] < T, (s, one['nfe'])


def test_sde_and_hybrid_sample_valid_sequences_with_the_oracle():
    for sampler in ('sde', 'hybrid'):
        x, info = gen(toy.Oracle(), 700, 7, 16, sampler)
        assert info['calls'] == 16 >= info['nfe'] and valid(x).float().mean() > 0.97, sampler
        counts = (x[:, None, :] == toy.shifts()[None]).all(-1).sum(0)
        # all seven shifts, roughly uniformly
        assert counts.min() > 60, counts


# ----------------------------------------------------------------------------- rule frequencies

# one fixed state, replicated N times: positions 0-1 prompt, 2-5 revealed (remaskable), 6-9 hidden
N, L = 20000, 10
FIXED = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
HIDDEN = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
PSI = torch.tensor([0, 0, 0.9, 0.2, 0.5, 0.05, 0, 0, 0, 0])
U = torch.tensor([0, 0, 0.05, 0.6, 0.3, 0.95, 0, 0, 0, 0])


def smax(a_t, a_s):
    return min(1.0, (1 - a_s) / a_t)


def remdm_reveal(sig, a_t, a_s):
    return (a_s - (1 - sig) * a_t) / (1 - a_t)


def expected(rule, a_t, a_s, T, kw):
    """(sigma, reveal) per position from docs/method.md §10 and §12, written independently of sample.py."""
    sm = smax(a_t, a_s)
    elig = (~FIXED & ~HIDDEN).float()
    if rule == 'uncertainty':
        sig = (kw.get('kappa', 1.0) * U).clamp(max=1) * elig
        # 8 free positions, 4 hidden
        r = (a_s * 8 - (elig * (1 - sig)).sum()) / 4
        return sig, HIDDEN.float() * min(max(r.item(), 0), 1)
    if rule == 'conf':
        w = torch.exp(-PSI) * elig
        sig = sm * w / w.sum()
        # hidden: weight 0
        return sig, HIDDEN.float() * remdm_reveal(0.0, a_t, a_s)
    s = {
        'mdlm': 0.0,
        'cap': min(kw.get('eta', 0.008), sm),
        'rescale': kw.get('eta', 0.015) * sm,
        'budget': min(kw.get('rho', 1.0) / T, sm),
        'loop': min(kw.get('eta', 0.02), sm) if a_t == a_s else 0.0,
    }[rule]
    return elig * s, HIDDEN.float() * remdm_reveal(s, a_t, a_s)


CASES = [
    ('mdlm', 0.4, 0.5, {}),
    ('cap', 0.4, 0.5, {}),
    ('cap', 0.6, 0.65, dict(eta=0.3)),
    ('rescale', 0.4, 0.5, {}),
    ('rescale', 0.6, 0.65, dict(eta=0.5)),
    ('conf', 0.6, 0.65, {}),
    ('conf', 0.1, 0.2, {}),
    ('loop', 0.9, 0.9, {}),
    ('loop', 0.9, 0.9, dict(eta=0.1)),
    ('loop', 0.5, 0.6, {}),
    ('budget', 0.4, 0.5, {}),
    ('budget', 0.4, 0.5, dict(rho=8.0)),
    ('uncertainty', 0.5, 0.6, {}),
    ('uncertainty', 0.7, 0.7, dict(kappa=0.5)),
]


@pytest.mark.parametrize('rule,a_t,a_s,kw', CASES)
def test_rule_frequencies_match_the_formulas(rule, a_t, a_s, kw):
    T = 16
    hidden, fixed = HIDDEN.expand(N, L), FIXED.expand(N, L)
    eligible = ~hidden & ~fixed
    at, as_ = torch.full((N, 1), a_t), torch.full((N, 1), a_s)
    n_free = torch.full((N, 1), 8)
    knobs = {**rules.KNOBS, **kw}
    sigma, reveal_p = rules.step_probs(
        rule, knobs, at, as_, hidden, eligible, n_free, T, PSI.expand(N, L).clone(), U.expand(N, L).clone()
    )
    remask, reveal = rules.draw_moves(sigma, reveal_p, hidden, eligible, torch.Generator().manual_seed(0))
    sig, rev = expected(rule, a_t, a_s, T, kw)
    assert not (remask & ~eligible).any() and not (reveal & ~hidden).any()
    for i in range(L):
        assert close(remask[:, i].sum().item(), N, sig[i].item()), (
            rule,
            i,
            remask[:, i].float().mean(),
            sig[i],
        )
        assert close(reveal[:, i].sum().item(), N, rev[i].item()), (
            rule,
            i,
            reveal[:, i].float().mean(),
            rev[i],
        )


@pytest.mark.parametrize('rule,dsl', [('rescale', False), ('conf', False), ('uncertainty', True)])
def test_first_repair_step_frequencies_end_to_end(rule, dsl):
    """The loop applies the rule: one step of repair at frozen alpha, many rows of one draft."""
    m, n, a = tiny(dsl), 8000, 0.6
    # 6 of 10 visible
    draft = torch.tensor([3, 1, 4, 1, 5, 9, m.mask_id, m.mask_id, m.mask_id, m.mask_id])
    x, info = sample.repair(
        m,
        draft.expand(n, -1),
        2,
        sampler=rule,
        alpha=a,
        eta=0.3,
        generator=torch.Generator().manual_seed(0),
        trajectory=True,
    )
    step1 = info['trajectory'][0]
    vis = draft != m.mask_id
    sm = min(1.0, (1 - a) / a)
    if rule == 'uncertainty':
        # u_i = 1 - p(x_i | draft), reveal to keep E[#revealed] = alpha * L
        with torch.no_grad():
            p = torch.softmax(m(x=draft[None])[0, :, : m.vocab_size], -1)
        sig = (1 - p[torch.arange(10), draft.clamp(max=m.vocab_size - 1)]) * vis
        rev = ((a * 10 - (1 - sig)[vis].sum()) / 4).clamp(0, 1).item()
    elif rule == 'conf':
        # unknown reveal confidence of draft tokens: psi = 0, equal weights
        sig, rev = vis * sm / 6, a * 0 / (1 - a)
    else:
        sig, rev = vis * 0.3 * sm, 0.3 * sm * a / (1 - a)
    for i in range(10):
        if vis[i]:
            assert close((step1[:, i] == m.mask_id).sum().item(), n, sig[i].item()), (i, sig[i])
        else:
            assert close((step1[:, i] != m.mask_id).sum().item(), n, rev), (i, rev)
    assert (x != m.mask_id).all()


def test_roar_reveals_exact_counts_in_random_order():
    m = tiny(True)
    x, info = gen(m, 64, 10, 4, 'roar', trajectory=True)
    revealed = [(t != m.mask_id).sum(1) for t in info['trajectory']]
    for k, r in enumerate(revealed):
        assert (r == (k + 1) * 10 // 4).all()
    first = info['trajectory'][0] != m.mask_id
    # every position can come first
    assert first.float().mean(0).min() > 0


@pytest.mark.parametrize(
    'nucleus,cases',
    [
        # ReMDM: keep while the cumulative mass is <= top_p
        ('remdm', ((0.7, 1), (0.8, 2), (0.95, 3), (1.0, 5))),
        # Hugging Face: also the token that crosses top_p
        ('hf', ((0.7, 2), (0.8, 3), (0.95, 4), (1.0, 5))),
    ],
)
def test_top_p_draws_only_from_the_nucleus_with_renormalised_frequencies(nucleus, cases):
    # cumulative 0.5, 0.75, 0.9, 0.96, 1
    p = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    n = 20000
    logits = p.log().expand(n, -1)
    for top_p, keep in cases:
        tok, prob = rules.sample_tokens(
            logits, top_p, torch.Generator().manual_seed(0), chunk=4096, nucleus=nucleus
        )
        q = p[:keep] / p[:keep].sum()
        # the probability it was drawn with
        assert torch.allclose(prob, q[tok].double(), atol=1e-6)
        counts = torch.bincount(tok, minlength=5)
        assert counts[keep:].sum() == 0
        for v in range(keep):
            assert close(counts[v].item(), n, q[v].item()), (top_p, v, counts)


def test_nucleus_default_is_remdms():
    """ReMDM's example: p = [.85, .10, .05] at top_p 0.9 keeps only the top token (HF would keep two)."""
    logits = torch.tensor([0.85, 0.10, 0.05]).log().expand(4000, -1)
    tok, prob = rules.sample_tokens(logits, 0.9, torch.Generator().manual_seed(0))
    assert (tok == 0).all() and (prob == 1).all()
    tok, _ = rules.sample_tokens(logits, 0.9, torch.Generator().manual_seed(0), nucleus='hf')
    assert (tok == 1).any()
    assert rules.KNOBS['nucleus'] == 'remdm'


def test_conf_stores_the_probability_under_the_nucleus(monkeypatch):
    """ReMDM's conf remasks by psi = the probability of the token under the renormalised nucleus it was drawn
    from: with a nucleus of one token (top_p tiny) that is 1 for every revealed token, whatever the
    softmax."""
    seen = []
    rule = rules.RULES['conf']
    monkeypatch.setitem(
        rules.RULES,
        'conf',
        lambda a_t, a_s, psi, eligible, **k: (
            seen.append(psi[eligible].clone()) or rule(a_t, a_s, psi=psi, eligible=eligible, **k)
        ),
    )
    m = tiny(True)
    gen(m, 6, 12, 6, 'conf', top_p=0.01)
    psi = torch.cat(seen)
    assert len(psi) > 20 and (psi == 1).all()
    seen.clear()
    # full softmax of an untrained model: well below 1
    gen(m, 6, 12, 6, 'conf', top_p=1.0)
    assert torch.cat(seen).max() < 0.9


# T = 20: t_9 = 0.55 + 4.5e-6 > t_on on ReMDM's grid
@pytest.mark.parametrize('T,counts', [(128, (58, 64, 6)), (1024, (461, 512, 51)), (20, (10, 10, 0))])
def test_loop_phases_follow_remdm(T, counts):
    """ReMDM picks the phase of step t -> t - 1/T from t alone (t > t_on: rise; t <= t_off: final)."""
    a = rules.loop_alphas(T)
    frozen = [k for k, (a_t, a_s) in enumerate(a) if a_t == a_s == 0.9]
    rise = [k for k, (a_t, a_s) in enumerate(a) if a_t < a_s and a_t < 0.9]
    final = [k for k, (a_t, a_s) in enumerate(a) if a_t < a_s and a_t >= 0.9 - 1e-12]
    assert (len(rise), len(frozen), len(final)) == counts
    assert rise == list(range(counts[0])) and frozen == list(range(counts[0], counts[0] + counts[1]))
    assert a[0][0] == 0 and (1 - 1e-4 < a[-1][1] <= 1 if counts[2] else a[-1] == (0.9, 0.9))


def test_hybrid_rejects_the_loop_rule():
    with pytest.raises(ValueError, match="never remask"):
        gen(tiny(True), 1, 8, 8, 'hybrid', rule='loop')
    with pytest.raises(ValueError, match="nucleus"):
        gen(tiny(True), 1, 8, 8, 'mdlm', nucleus='topk')


def test_ar_sampling_conditions_as_training():
    """Each drawn token's probability equals the teacher-forced probability of noise.ar_loss's input
    ([MASK] start, then the sequence shifted right) on the finished sequence."""
    m, L = tiny(False, causal=True), 10
    x, info = gen(m, 4, L, L, 'ar')
    start = torch.full((4, 1), m.mask_id)
    with torch.no_grad():
        p = torch.softmax(m(x=torch.cat([start, x[:, :-1]], 1))[..., : m.vocab_size].double(), -1)
    tf = p.gather(-1, x[..., None])[..., 0]  # (B, L)
    assert torch.allclose(info['token_prob'], tf, atol=1e-5), (info['token_prob'] - tf).abs().max()


# ----------------------------------------------------------------------------- invariants

ALL = ['mdlm', 'cap', 'rescale', 'conf', 'loop', 'budget', 'uncertainty', 'roar', 'sde', 'hybrid']


# T = 1 and T > L
@pytest.mark.parametrize('T', [1, 13])
@pytest.mark.parametrize('dsl', [True, False])
def test_every_sampler_invariants(dsl, T):
    m, L = tiny(dsl), 8
    calls = []
    hook = m.register_forward_hook(lambda *a: calls.append(1))
    prompt = torch.full((L,), m.mask_id)
    # prefix and suffix (infill)
    prompt[:2], prompt[-1] = torch.tensor([1, 2]), 3
    for s in [s for s in ALL if dsl or s not in sample.DSL_ONLY]:
        calls.clear()
        x, info = gen(m, 5, L, T, s, prompt=prompt, top_p=0.9)
        assert x.shape == (5, L) and x.dtype == torch.long and (x < m.vocab_size).all(), s
        assert (x[:, :2] == torch.tensor([1, 2])).all() and (x[:, -1] == 3).all(), s
        # T > L: some steps change nothing and make no call (ReMDM's cache); every counted call is a real one
        assert len(calls) == info['calls'] <= T and max(info['nfe_rows']) <= info['calls'], (s, len(calls))
        # same seed, same samples
        assert torch.equal(x, gen(m, 5, L, T, s, prompt=prompt, top_p=0.9)[0]), s
        y, _ = gen(m, 5, L, T, s, seed=1, top_p=0.9)
        assert (y != m.mask_id).all()
    hook.remove()
    if dsl:
        # the endpoint table is dropped after sampling
        assert m.table is None


def test_seeds_differ_and_trajectory_has_one_state_per_call():
    m = tiny(True)
    a, info = gen(m, 4, 16, 8, 'loop', trajectory=True)
    b, _ = gen(m, 4, 16, 8, 'loop', seed=1)
    assert not torch.equal(a, b)
    assert len(info['trajectory']) == 8 and torch.equal(info['trajectory'][-1], a)
    assert (info['trajectory'][0] == m.mask_id).any()


def test_autoregressive_left_to_right_with_prompt():
    m, L = tiny(False, causal=True), 9
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    prompt = torch.tensor([4, 2, 7])
    x, info = gen(m, 3, L, L, 'ar', prompt=prompt, trajectory=True)
    assert (x[:, :3] == prompt).all() and (x != m.mask_id).all()
    assert len(calls) == info['nfe'] == L - 3
    assert torch.equal(x, gen(m, 3, L, L, 'ar', prompt=prompt)[0])
    with pytest.raises(ValueError, match='causal'):
        gen(m, 1, L, 4, 'mdlm')


def test_repair_for_mdlm_checkpoints_copies_visible_tokens_unless_remasked():
    m = tiny(False)
    draft = torch.tensor([[3, 1, m.mask_id, 1, 5, m.mask_id]])
    # no remasking: pure copy
    x, _ = sample.repair(m, draft.expand(50, -1), 3, sampler='cap', eta=0.0)
    assert (x[:, [0, 1, 3, 4]] == draft[0, [0, 1, 3, 4]]).all() and (x != m.mask_id).all()
    with pytest.raises(ValueError, match='DSL'):
        sample.repair(m, draft, 3, sampler='uncertainty')


def test_generate_rejects_bad_input():
    dsl, tok = tiny(True), tiny(False)
    with pytest.raises(ValueError, match='unknown sampler'):
        gen(dsl, 1, 8, 4, 'gibbs')
    with pytest.raises(ValueError, match='steps'):
        gen(dsl, 1, 8, 0, 'mdlm')
    with pytest.raises(ValueError, match='longer than the sequence'):
        gen(dsl, 1, 4, 4, 'mdlm', prompt=torch.tensor([1, 2, 3, 4, 5]))
    for s in sample.DSL_ONLY:
        with pytest.raises(ValueError, match='DSL'):
            gen(tok, 1, 8, 4, s)
    with pytest.raises(ValueError, match='unknown sampler option'):
        gen(dsl, 1, 8, 4, 'cap', etta=0.1)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope='module')
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp('ck')
    # a char vocabulary of 11 for the tiny models
    chars = [chr(48 + i) for i in range(11)]
    # train.py stores data.py's meta in checkpoints
    meta = dict(tokenizer='char', vocab_size=11, chars=chars)
    out = {}
    for name, dsl in (('dsl', True), ('mdlm', False)):
        m = tiny(dsl)
        path = d / f'{name}.pt'
        torch.save(
            dict(
                model=m.state_dict(),
                ema=None,
                model_config=m.config,
                meta=meta,
                config=dict(block_size=12, data_dir=str(d)),
            ),
            path,
        )
        out[name] = str(path)
    return out


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(args)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


def test_cli_writes_jsonl(ckpts, tmp_path, capsys):
    out = tmp_path / 's.jsonl'
    sample.main(
        [
            '--ckpt',
            ckpts['dsl'],
            '--steps',
            '6',
            '--sampler',
            'remdm-loop',
            '--num_samples',
            '5',
            '--batch_size',
            '2',
            '--prompt',
            '12',
            '--seed',
            '3',
            '--out',
            str(out),
            '--quiet',
            '--profile',
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(
        1 <= r['nfe'] <= 6 and r['steps'] == 6 and r['seed'] == 3 and r['sampler'] == 'loop' for r in rows
    )
    assert all(r['text'].startswith('12') and len(r['ids']) == 12 for r in rows)
    assert 'outside the model forward' in capsys.readouterr().err


@pytest.mark.parametrize(
    'args,msg',
    [
        (['--sampler', 'gibbs'], 'unknown sampler'),
        (['--steps', '0'], 'must be >= 1'),
        (['--prompt', '0123456789012'], 'longer than the sequence'),
        (['--sampler', 'uncertainty', '--which', 'mdlm'], 'needs a DSL checkpoint'),
        (['--sampler', 'sde', '--which', 'mdlm'], 'needs a DSL checkpoint'),
        (['--steps', 'many'], 'invalid int'),
    ],
)
def test_cli_errors_are_one_line(ckpts, args, msg, capsys):
    which = args[args.index('--which') + 1] if '--which' in args else 'dsl'
    args = [a for a in args if a not in ('--which', which)] if '--which' in args else args
    code, err = run_cli(['--ckpt', ckpts[which], '--quiet'] + args, capsys)
    assert code == 2 and msg in err and len(err.splitlines()) == 1, err
    assert err.startswith('sample.py: error:')


def test_trajectory_has_one_state_per_call_and_marks_remasks(tmp_path, monkeypatch):
    """--trajectory's figure: one row per denoiser call, and remasked / replaced tokens are the ones drawn
    red."""
    m = tiny(dsl=True)
    x, info = sample.generate(
        m, 2, 9, 6, 'uncertainty', 1.0, generator=torch.Generator().manual_seed(0), trajectory=True, kappa=5.0
    )
    traj = info['trajectory']
    assert len(traj) == info['nfe'] == 6 and torch.equal(traj[-1], x)
    # every text drawn in red, through a fake axis
    red = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.text
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        'text',
        lambda self, i, k, s, **kw: (
            red.append((k, i)) if kw.get('color') == '#d62728' else None or orig(self, i, k, s, **kw)
        ),
    )
    path = tmp_path / 't.png'
    figures.trajectory([t[0] for t in traj], m.mask_id, str, str(path))
    from PIL import Image

    # a palette PNG: a long sample's grid stays small
    with Image.open(path) as im:
        assert im.mode == 'P' and len(im.getcolors()) <= 32
    S = torch.stack([t[0] for t in traj])
    want = {
        (k, i) for k in range(1, 6) for i in range(9) if S[k - 1, i] != m.mask_id and S[k, i] != S[k - 1, i]
    }
    # kappa 5: an untrained model doubts, so something is sent back
    assert set(red) == want and want
