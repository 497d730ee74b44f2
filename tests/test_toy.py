"""The cyclic toy (issue #5): a reduced `python toy.py` (fewer training steps and seeds, ~20 s on one core)
must show DSL's self-correction: the DSL-trained model repairs __CDBFF and random 2+2 corruptions far more
often than the MDLM-trained one with ReMDM remasking (Wu et al. 2026, Fig. 3)."""
import os

import pytest
import torch

import toy


@pytest.fixture(scope='module')
def reduced():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as toy.main: faster for a model this small, and the same numbers everywhere
    try:
        return toy.run(steps_train=600, seeds=50, seed=0, Ts=(3,), verbose=False)
    finally:
        torch.set_num_threads(threads)


def test_dsl_self_corrects_where_mdlm_cannot(reduced):
    res, _, _ = reduced
    dsl, conf, cap = res['DSL (uncertainty)'], res['MDLM (conf)'], res['MDLM (cap)']
    assert res['oracle (uncertainty)'][toy.DRAFT] == 1.0, res
    assert dsl[toy.DRAFT] >= 0.8, res
    assert dsl[toy.DRAFT] > max(conf[toy.DRAFT], cap[toy.DRAFT]) + 0.3, res
    assert dsl['random'] > max(conf['random'], cap['random']) + 0.3, res


def test_trajectories_start_at_the_draft_and_end_revealed(reduced):
    _, trajs, _ = reduced
    for lab, t in trajs.items():
        assert t.shape == (11, 50, toy.L), lab
        assert (t[0] == toy.encode(toy.DRAFT)).all() and (t[-1] != toy.V).all(), lab


def test_corrupt_makes_two_hidden_two_wrong():
    drafts, targets = toy.corrupt(200, generator=torch.Generator().manual_seed(0))
    assert toy.is_valid(targets).all()
    assert ((drafts == toy.V).sum(1) == 2).all()
    assert (((drafts != toy.V) & (drafts != targets)).sum(1) == 2).all()


def test_plot_and_text_output(reduced, tmp_path, capsys):
    res, trajs, _ = reduced
    toy.print_trajectories(trajs)
    toy.print_table(res, 50)
    out = capsys.readouterr().out
    assert '__CDbFf' in out and 'DSL (uncertainty)' in out
    pytest.importorskip('matplotlib')
    path = toy.plot(trajs, str(tmp_path / 'fig.png'), res)
    assert path and os.path.getsize(path) > 1000
