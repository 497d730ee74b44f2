"""The nucleus draw that sorts only the head of each row (rules.nucleus_head, issue #26 item 5) draws what the
full sort drew before it: the same tokens, the same probabilities and the same generator consumption at the
same seed, for both top-p conventions, peaked and flat rows, exact ties, and vocabularies from 7 to 50257
tokens; and the uncertainty rule's log-probabilities in row chunks are those of one log-softmax."""

import pytest
import torch

import model
import rules
import sample


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Many small ops: on a busy 2-core machine intra-op threads cost more than they give. Restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def reference(logits, top_p, g, chunk=1 << 22, nucleus='remdm'):
    """rules.sample_tokens before the head sort (commit a7d043f): a full float64 sort of each row."""
    N, V = logits.shape
    u = torch.rand(N, 1, generator=g, device=logits.device, dtype=torch.float64)
    tok, prob, rows = [], [], max(1, chunk // V)
    for i in range(0, N, rows):
        p = torch.softmax(logits[i : i + rows].double(), dim=-1)  # (n, V)
        ui = u[i : i + len(p)]
        if top_p < 1:
            ps, idx = p.sort(dim=-1, descending=True)
            c = ps.cumsum(-1)
            before = c if nucleus == 'remdm' else c - ps  # remdm: c_j <= p; hf: c_{j-1} < p
            inside = before <= top_p if nucleus == 'remdm' else before < top_p
            keep = inside.sum(-1, keepdim=True).clamp(min=1)
            mass = c.gather(-1, keep - 1)  # (n, 1) nucleus mass
            j = torch.searchsorted(c, ui * mass).clamp(max=keep - 1)
            t, q = idx.gather(-1, j), ps.gather(-1, j) / mass
        else:
            c = p.cumsum(-1)
            t = torch.searchsorted(c, ui * c[:, -1:]).clamp(max=V - 1)
            q = p.gather(-1, t)
        tok.append(t[:, 0])
        prob.append(q[:, 0])
    if not tok:
        return logits.new_zeros(0, dtype=torch.long), logits.new_zeros(0, dtype=torch.float64)
    return torch.cat(tok), torch.cat(prob)


def rows(kind, n, V, seed):
    """n rows of float32 logits over V tokens. peaked / zipf: a short nucleus (a trained model's rows);
    flat: one that spans most of the row; ties: values on a coarse grid, so equal probabilities sit in the
    nucleus; uniform: every probability equal; masked: most tokens at -inf (probability exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, V, generator=g)
    if kind == 'peaked':
        return 6 * z
    if kind == 'zipf':  # rank r has logit -1.1 log r, tokens in a random order
        rank = torch.rand(n, V, generator=g).argsort(-1).float() + 1
        return -1.1 * rank.log() + 0.3 * z
    if kind == 'flat':
        return 0.3 * z
    if kind == 'ties':
        return (2 * z).round()
    if kind == 'uniform':
        return torch.zeros(n, V)
    if kind == 'masked':  # the first token never masked, so that no row is all -inf
        masked = torch.rand(n, V, generator=g) < 0.9
        masked[:, 0] = False
        return torch.where(masked, -torch.inf, 2 * z.round())
    raise ValueError(kind)


def same_draws(logits, top_p, nucleus, seed=0, chunk=1 << 22):
    """The new draw against the reference at one seed: tokens equal, probabilities equal to float rounding,
    and the generators in the same state afterwards."""
    g_new = torch.Generator().manual_seed(seed)
    g_ref = torch.Generator().manual_seed(seed)
    tok, prob = rules.sample_tokens(logits, top_p, g_new, chunk=chunk, nucleus=nucleus)
    tok_ref, prob_ref = reference(logits, top_p, g_ref, chunk=chunk, nucleus=nucleus)
    assert torch.equal(tok, tok_ref), (top_p, nucleus, (tok != tok_ref).sum())
    assert torch.allclose(prob, prob_ref, rtol=1e-12, atol=0), (top_p, nucleus)
    assert torch.equal(torch.rand(3, generator=g_new), torch.rand(3, generator=g_ref))


TOP_P = (1e-9, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0)


@pytest.mark.parametrize('nucleus', ['remdm', 'hf'])
@pytest.mark.parametrize('V,n', [(7, 400), (65, 400), (2048, 300)])
@pytest.mark.parametrize('kind', ['peaked', 'zipf', 'flat', 'ties', 'uniform', 'masked'])
def test_head_sort_draws_what_the_full_sort_drew(kind, V, n, nucleus):
    logits = rows(kind, n, V, seed=V)
    for seed, top_p in enumerate(TOP_P):
        same_draws(logits, top_p, nucleus, seed)


@pytest.mark.parametrize('nucleus', ['remdm', 'hf'])
@pytest.mark.parametrize('kind', ['zipf', 'flat', 'ties'])
def test_head_sort_at_gpt2_vocabulary(kind, nucleus):
    logits = rows(kind, 6, 50257, seed=1)
    for top_p in (0.5, 0.9, 1.0):
        same_draws(logits, top_p, nucleus)


@pytest.mark.parametrize('nucleus', ['remdm', 'hf'])
def test_head_sort_on_bfloat16_logits_and_in_row_chunks(nucleus):
    """bf16 logits (autocast on CUDA) have few distinct values: ties in every nucleus; chunks of 5 rows."""
    logits = rows('zipf', 200, 2048, seed=3).bfloat16()
    for top_p in (0.5, 0.9):
        same_draws(logits, top_p, nucleus)
        same_draws(logits, top_p, nucleus, chunk=5 * 2048)


def test_ties_in_the_head_take_the_full_sort(monkeypatch):
    """A row whose drawn probability equals a neighbour's is redrawn with the full sort (whose order of ties
    topk need not share); a row without ties in a short nucleus never sorts in full."""
    calls = []
    full = rules.nucleus_sorted

    def counted(p, *a):
        calls.append(len(p))
        return full(p, *a)

    monkeypatch.setattr(rules, 'nucleus_sorted', counted)
    peaked = rows('peaked', 100, 2048, seed=4)
    rules.sample_tokens(peaked, 0.9, torch.Generator().manual_seed(0))
    assert calls == []
    tied = peaked.clone()
    tied[:, 1] = tied.max(-1).values  # two top tokens of equal probability
    tok, _ = rules.sample_tokens(tied, 0.9, torch.Generator().manual_seed(0))
    assert sum(calls) > 0
    same_draws(tied, 0.9, 'remdm')


def test_a_bound_too_short_costs_time_not_a_different_draw(monkeypatch):
    """Rows whose sorted head ends inside the nucleus go to the full sort: with every bound at 1 (heads of
    rules.HEAD_MIN tokens) the draws are still the full sort's."""

    def one(logits, p, top_p):
        return torch.ones(len(p), dtype=torch.long)

    monkeypatch.setattr(rules, 'nucleus_bound', one)
    for kind in ('zipf', 'flat', 'ties'):
        logits = rows(kind, 200, 2048, seed=5)
        for nucleus in ('remdm', 'hf'):
            for top_p in (0.1, 0.9):
                same_draws(logits, top_p, nucleus)


def test_token_logprobs_are_the_log_softmax_of_all_rows():
    """Row chunks and only the selected rows: the same values, bit for bit, as one log_softmax of all rows."""
    g = torch.Generator().manual_seed(0)
    for V, dtype in ((65, torch.float32), (2048, torch.float32), (2048, torch.bfloat16)):
        logits = (3 * torch.randn(300, V, generator=g)).to(dtype)
        tokens = torch.randint(0, V, (300,), generator=g)
        sel = torch.rand(300, generator=g) < 0.6
        whole = torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[:, 0]
        for chunk in (V, 7 * V, 1 << 21):
            assert torch.equal(rules.token_logprobs(logits, tokens, sel, chunk=chunk), whole[sel])
    assert rules.token_logprobs(logits, tokens, torch.zeros(300, dtype=torch.bool)).shape == (0,)


def test_samplers_draw_what_they_drew_before(monkeypatch):
    """End to end on a small random DSL model over 2048 tokens: uncertainty and mdlm draw the same samples as
    with the full sort and one log-softmax of every row (the code before the change)."""
    torch.manual_seed(0)
    m = model.DiT(model.model_config('tiny', 2048, dsl=True))
    with torch.no_grad():
        for w in m.parameters():
            w.normal_(0, 0.2 if w.dim() > 1 else 0.1)
    m.eval()
    cases = [
        ('uncertainty', 0.9, 'remdm'),
        ('uncertainty', 0.9, 'hf'),
        ('uncertainty', 1.0, 'remdm'),
        ('mdlm', 0.9, 'remdm'),
    ]

    def draw(s, top_p, nucleus):
        g = torch.Generator().manual_seed(1)
        return sample.generate(m, 4, 16, 6, s, top_p, generator=g, nucleus=nucleus)[0]

    now = [draw(*c) for c in cases]

    def whole(logits, tokens, sel):
        tokens = tokens.clamp(max=logits.shape[1] - 1)
        return torch.log_softmax(logits.float(), -1).gather(-1, tokens[:, None])[sel, 0]

    def before(logits, top_p, g, nucleus='remdm', temperature=1.0):
        assert temperature == 1
        return reference(logits, top_p, g, nucleus=nucleus)

    monkeypatch.setattr(rules, 'sample_tokens', before)
    monkeypatch.setattr(rules, 'token_logprobs', whole)
    for c, x in zip(cases, now):
        assert torch.equal(x, draw(*c)), c
