"""The temperature knob (rules.KNOBS['temperature']): a draw at temperature tau is the plain float64 draw from
the logits divided by tau in float64, through the same nucleus; tau = 1 draws today's samples bit for bit; the
range check rejects tau <= 0."""

import pytest
import torch
from test_nucleus import reference, rows

import model
import rules
import sample


@pytest.mark.parametrize('kind', ['peaked', 'flat', 'zipf'])
@pytest.mark.parametrize('top_p', [0.9, 1.0])
@pytest.mark.parametrize('tau', [0.7, 1.3, 2.0])
def test_draw_is_the_float64_draw_of_scaled_logits(kind, top_p, tau):
    logits = rows(kind, 64, 301, seed=3)
    got = rules.sample_tokens(logits, top_p, torch.Generator().manual_seed(5), temperature=tau)
    # the full-sort draw before any change, on logits scaled in float64 by hand
    want = reference(logits.double() / tau, top_p, torch.Generator().manual_seed(5))
    assert torch.equal(got[0], want[0])
    assert got[1].dtype == torch.float64 and torch.equal(got[1], want[1])


def test_higher_temperature_spreads_the_draws():
    # one Zipf row, repeated: the draws' frequencies estimate that row's tempered distribution
    logits = (-1.1 * torch.arange(1, 51).float().log()).expand(4000, 50)
    ent = []
    for tau in (0.5, 1.0, 2.0):
        tok, _ = rules.sample_tokens(logits, 1.0, torch.Generator().manual_seed(0), temperature=tau)
        f = torch.bincount(tok, minlength=50).double() / len(tok)
        ent.append(-(f[f > 0] * f[f > 0].log()).sum().item())
    assert ent[0] < ent[1] < ent[2]


def test_temperature_one_is_todays_sampler():
    torch.manual_seed(0)
    m = model.DiT(model.model_config('tiny', 97, dsl=True))
    with torch.no_grad():
        for w in m.parameters():
            w.normal_(0, 0.2 if w.dim() > 1 else 0.1)
    m.eval()
    for s in ('uncertainty', 'mdlm', 'hybrid'):
        g = lambda: torch.Generator().manual_seed(1)
        a = sample.generate(m, 4, 16, 6, s, 0.9, generator=g())[0]
        b = sample.generate(m, 4, 16, 6, s, 0.9, generator=g(), temperature=1.0)[0]
        c = sample.generate(m, 4, 16, 6, s, 0.9, generator=g(), temperature=1.5)[0]
        assert torch.equal(a, b), s
        assert not torch.equal(a, c), s


@pytest.mark.parametrize('tau', [0.0, -1.0, float('nan')])
def test_temperature_range(tau):
    with pytest.raises(ValueError, match='temperature must lie in'):
        rules.check_options(0.9, dict(temperature=tau))
