"""The cyclic toy (issues #5, #10): a reduced `python toy.py` (fewer training steps and seeds) with every rule
on every model. The claim that survives separating the rule from the model: the DSL-trained model's u = 1 -
p(x_i | state) flags wrong visible tokens, an MDLM model's visible-position output does not; the rules
themselves are applied identically to every model."""

import os

import pytest
import torch

import sample
import toy


@pytest.fixture(scope='module')
def reduced():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as toy.main: faster for a model this small, and the same numbers everywhere
    calls, repair = [], sample.repair

    def spy(m, draft, steps, sampler='uncertainty', generator=None, **kw):  # record what each arm is given
        calls.append(
            (m.dsl, type(m).__name__, sampler, draft.clone(), steps, dict(kw), generator.initial_seed())
        )
        return repair(m, draft, steps, sampler=sampler, generator=generator, **kw)

    sample.repair = spy
    try:
        return (*toy.run(steps_train=600, seeds=50, seed=0, Ts=(3,), verbose=False), calls)
    finally:
        sample.repair = repair
        torch.set_num_threads(threads)


def test_every_rule_on_every_model_that_can_run_it(reduced):
    res = reduced[0]
    assert list(res) == ['oracle', 'dsl', 'mdlm']
    for key in ('oracle', 'dsl'):
        assert tuple(res[key]) == toy.RULES
    assert tuple(res['mdlm']) == tuple(r for r in toy.RULES if r != 'uncertainty')
    for r in res.values():
        for cols in r.values():
            assert set(cols) == {toy.DRAFT, 'random', 'valid T=3'}


def test_rules_are_applied_identically_to_all_models(reduced):
    """Same draft, step count, knobs and random seed for a rule whatever the model."""
    calls = reduced[-1]
    for rule in toy.RULES:
        args = [c[2:] for c in calls if c[2] == rule]
        assert len(args) == (4 if rule == 'uncertainty' else 6), rule  # 2 drafts x (2 or 3) models
        assert len({(a[2], str(a[3]), a[4]) for a in args}) == 1, rule
        same = sum(torch.equal(a[1], args[0][1]) for a in args)  # __CDBFF for every model, then random drafts
        assert same == len(args) // 2 and all(
            torch.equal(a[1], args[-1][1]) for a in args if not torch.equal(a[1], args[0][1])
        ), rule


def test_dsls_u_flags_wrong_visible_tokens_and_mdlms_output_does_not(reduced):
    """The claim that survives: a DSL model can doubt a visible token, an MDLM model cannot."""
    det = reduced[1]
    assert det['oracle'][0] == 1.0
    assert det['dsl'][0] > 0.95, det
    assert det['dsl'][0] > det['mdlm'][0] + 0.25, det
    assert det['dsl'][1] > 0.5 > det['dsl'][2], det  # u on wrong tokens is large, not ~0.02


def test_dsl_uncertainty_repairs_and_conf_does_not_for_any_model(reduced):
    res = reduced[0]
    assert res['oracle']['uncertainty'][toy.DRAFT] == 1.0, res
    assert res['dsl']['uncertainty'][toy.DRAFT] >= 0.8 and res['dsl']['uncertainty']['random'] >= 0.8, res
    # conf at frozen alpha reveals nothing before the final call: the rule, not the model, limits it
    for key in res:
        assert res[key]['conf'][toy.DRAFT] < 0.5, (key, res[key]['conf'])


def test_auroc_ranks_with_ties_averaged():
    y = torch.tensor([0, 0, 1, 1])
    assert toy.auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), y) == 0.75
    assert toy.auroc(torch.ones(4), y) == 0.5
    assert toy.auroc(torch.tensor([0.0, 1.0, 1.0, 2.0]), y) == 0.875  # one tie between classes counts 1/2
    assert toy.auroc(torch.tensor([3.0, 4.0, 1.0, 2.0]), y) == 0.0


def test_trajectories_start_at_the_draft_and_end_revealed(reduced):
    trajs = reduced[2]
    assert len(trajs) == 14
    for lab, t in trajs.items():
        assert t.shape == (11, 50, toy.L), lab
        assert (t[0] == toy.encode(toy.DRAFT)).all() and (t[-1] != toy.V).all(), lab


def test_corrupt_makes_two_hidden_two_wrong():
    drafts, targets = toy.corrupt(200, generator=torch.Generator().manual_seed(0))
    assert toy.is_valid(targets).all()
    assert ((drafts == toy.V).sum(1) == 2).all()
    assert (((drafts != toy.V) & (drafts != targets)).sum(1) == 2).all()


def test_plot_and_text_output(reduced, tmp_path, capsys):
    res, det, trajs = reduced[:3]
    toy.print_trajectories(trajs)
    toy.print_table(res, det, 50)
    out = capsys.readouterr().out
    assert '__CDbFf' in out and 'DSL + uncertainty' in out and 'AUROC' in out
    pytest.importorskip('matplotlib')
    path = toy.plot(trajs, str(tmp_path / 'fig.png'), res)
    assert path and os.path.getsize(path) > 1000
