"""compare.hierarchical (the bootstrap over training seeds, then samples, paired across arms) and
compare.decide (the pre-registered rule) on hand-made tables whose answers are known."""

import numpy as np
import pytest

import compare


def arm(nll, H, D3=None, cnt=1):
    """frontier_arrays of per-sample lists nll[s][g] and H[s][g] (D3 = H / 4 unless given)."""
    D3 = D3 if D3 is not None else [[[h / 4 for h in g] for g in s] for s in H]
    cells = [
        [dict(nll=n, cnt=cnt, H=h, D3=d) for n, h, d in zip(ns, hs, ds)] for ns, hs, ds in zip(nll, H, D3)
    ]
    return compare.frontier_arrays(cells)


def test_point_estimate_by_hand():
    # pooled over both seeds: g0 at H = 1 has gen NLL (1+3+3+5)/4 = 3, g1 at H = 3 has (5+7+7+9)/4 = 7; read
    # at H = 2: 5. Arm b is a less 1 everywhere: 4. At D3 = 0.5 (H / 4) the same.
    H = [[[1, 1], [3, 3]]] * 2
    a = arm([[[1, 3], [5, 7]], [[3, 5], [7, 9]]], H)
    b = arm([[[0, 2], [4, 6]], [[2, 4], [6, 8]]], H)
    res = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=200)
    for axis in ('H', 'D3'):
        assert res[axis]['point'] == {'a': 5.0, 'b': 4.0, 'a-b': 1.0}
        # paired: every resample takes the same seeds and samples in both arms, so a constant shift has no
        # spread at all
        assert res[axis]['lo'] == pytest.approx(1.0) and res[axis]['hi'] == pytest.approx(1.0)
    unpaired = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=200, paired=False)
    assert unpaired['H']['hi'] - unpaired['H']['lo'] > 1.0
    assert compare.decide(res) == 'worse'


def table(rng, delta, offsets, S=3, N=64, noise=0.5):
    """Two arms on a two-point frontier (H = 1 and 3, gen NLL 3 and 7 per token); arm a is b plus delta plus
    a per-seed offset, with per-sample noise the arms share (common random numbers) and some of their own."""
    shared = rng.normal(0, noise, (S, 2, N))
    base = np.array([3.0, 7.0])[None, :, None] + shared
    own = lambda: rng.normal(0, 0.1, (S, 2, N))
    H = np.broadcast_to(np.array([1.0, 3.0])[None, :, None], (S, 2, N)).tolist()
    a = base + delta + np.asarray(offsets)[:, None, None] + own()
    b = base + own()
    return arm(a.tolist(), H), arm(b.tolist(), H)


def test_training_seeds_widen_the_interval_and_change_the_call():
    rng = np.random.default_rng(0)
    a, b = table(rng, -0.3, [0, 0, 0])
    res = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=500)
    assert res['H']['hi'] < 0 and compare.decide(res) == 'better'
    # the same samples, but the three training runs of arm a disagree by +-1 nat: resampling the seeds
    # carries that into the interval, and a difference of -0.3 is no longer a finding
    rng = np.random.default_rng(0)
    a, b = table(rng, -0.3, [-1.0, 0.0, 1.0])
    res = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=500)
    assert res['H']['point']['a-b'] == pytest.approx(-0.3, abs=0.05)
    assert res['H']['lo'] < -0.9 and res['H']['hi'] > 0.3
    assert compare.decide(res) == 'tie'


def test_pairing_narrows_the_interval():
    rng = np.random.default_rng(1)
    a, b = table(rng, -0.1, [0, 0, 0], noise=1.0)
    width = lambda r: r['H']['hi'] - r['H']['lo']
    paired = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=500)
    unpaired = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=500, paired=False)
    assert width(paired) < 0.5 * width(unpaired)


def test_repetition_cannot_win():
    # arm a: lower gen NLL at matched entropy, but its samples repeat more (distinct-3 0.2 lower at every
    # point), so at matched distinct-3 its gen NLL is higher: the rule calls that mixed, not better
    H = [[[1, 1], [3, 3]]]
    a = arm([[[2, 2], [6, 6]]], H, D3=[[[0.05, 0.05], [0.55, 0.55]]])
    b = arm([[[3, 3], [7, 7]]], H, D3=[[[0.25, 0.25], [0.75, 0.75]]])
    res = compare.hierarchical(dict(a=a, b=b), dict(H=2.0, D3=0.5), B=100)
    assert res['H']['point']['a-b'] == pytest.approx(-1.0)
    # a at D3 0.5: 2 + 4 * 0.45 / 0.5 = 5.6; b: 3 + 4 * 0.25 / 0.5 = 5.0
    assert res['D3']['point']['a-b'] == pytest.approx(0.6)
    assert compare.decide(res) == 'mixed'


def test_a_target_outside_a_curve_is_unreadable():
    H = [[[1, 1], [3, 3]]]
    a = arm([[[2, 2], [6, 6]]], H)
    res = compare.hierarchical(dict(a=a, b=a), dict(H=3.5, D3=0.5), B=50)
    assert res['H']['point']['a-b'] is None
    assert compare.decide(res) == 'unreadable'


@pytest.mark.parametrize(
    'h, d, call',
    [
        ((-0.5, -0.1), (-0.4, 0.2), 'better'),
        ((-0.5, -0.1), (0.1, 0.3), 'mixed'),
        ((0.1, 0.5), (-0.2, 0.3), 'worse'),
        ((0.1, 0.5), (-0.3, -0.1), 'mixed'),
        ((-0.2, 0.3), (-0.5, -0.1), 'tie'),
    ],
)
def test_decision_rule(h, d, call):
    res = {ax: dict(point={'a-b': 0.0}, lo=lo, hi=hi) for ax, (lo, hi) in (('H', h), ('D3', d))}
    assert compare.decide(res) == call
