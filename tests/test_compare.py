"""compare.py: generative NLL at matched entropy (interpolation, the compared entropy, the bootstrap) and the
verdict on hand-made tables, where the right answer is known."""

import json

import numpy as np
import pytest

import compare as C


def test_an_end_point_off_by_rounding_is_read_not_dropped():
    """The compared entropy often sits at a curve's end; the per-sample numbers put that end ~1e-5 away."""
    pts = [(2.0, 1.0), (3.0, 2.0)]
    assert C.at_entropy(pts, 3.00001) == 2.0 and C.at_entropy(pts, 1.99999) == 1.0
    assert C.at_entropy(pts, 3.01) is None


def test_interpolation_reads_a_curve_between_its_points_only():
    pts = [(3.0, 2.0), (2.0, 1.0), (4.0, 4.0)]  # unsorted: sorted by entropy
    assert C.at_entropy(pts, 2.5) == pytest.approx(1.5) and C.at_entropy(pts, 3.5) == pytest.approx(3.0)
    assert C.at_entropy(pts, 1.9) is None and C.at_entropy(pts, 4.1) is None
    assert C.at_entropy(pts, 1.5, extrapolate=True) == pytest.approx(0.5)  # the end segment extended
    assert C.at_entropy(pts, 5.0, extrapolate=True) == pytest.approx(6.0)


def test_the_compared_entropy_is_the_datas_when_both_arms_reach_it():
    a, b, low = [(2.5, 1.0), (3.2, 2.0)], [(2.8, 1.5), (3.1, 2.5)], [(2.0, 0.5), (2.4, 0.9)]
    assert C.common_entropy([a, b], 3.0) == 3.0
    assert C.common_entropy([a, b], 3.5) == 3.1  # clipped into the shared range
    assert C.common_entropy([a, low], 3.0) is None
    # by arm: arm b's low-entropy curve cannot reach 3.0, its other curve can: compared at 3.0, without it
    H, use = C.match({('a', 'x'): a, ('b', 'y'): b, ('b', 'z'): low}, 3.0, group=lambda k: k[0])
    assert H == 3.0 and set(use) == {('a', 'x'), ('b', 'y')}
    # no curve of b reaches 3.0: the nearest entropy both reach
    H, use = C.match({('a', 'x'): a, ('b', 'y'): [(2.6, 1.0), (2.9, 1.4)]}, 3.0, group=lambda k: k[0])
    assert H == pytest.approx(2.9) and len(use) == 2
    assert C.match({('a', 'x'): a, ('b', 'z'): low}, 3.0, group=lambda k: k[0]) == (None, {})


def cell(rng, nll, h, n=400, L=64, noise=0.3):
    """n samples whose mean judge NLL is exactly nll nats/token and mean entropy exactly h, as in a sweep's
    CSV."""
    x, y = rng.normal(0, noise, n), rng.normal(0, 0.05, n)
    return dict(nll=list((x - x.mean() + nll) * L), cnt=[L] * n, H=list(y - y.mean() + h))


def test_bootstrap_interval_covers_the_interpolated_truth_and_separates_a_real_gap():
    rng = np.random.default_rng(0)
    arms = {
        'a': [cell(rng, 2.5, 2.8), cell(rng, 2.8, 3.0)],
        'b': [cell(rng, 2.7, 2.85), cell(rng, 3.0, 3.05)],
    }
    out = C.bootstrap_matched(arms, 2.95, B=500)
    # the truth at 2.95: a 2.5 + 0.75 * 0.3 = 2.725; b 2.7 + 0.5 * 0.3 = 2.85
    assert out['a'][1] < 2.725 < out['a'][2] and out['b'][1] < 2.85 < out['b'][2]
    assert out['a-b'][2] < 0 and out['a-b'][1] < -0.125 < out['a-b'][2]
    assert out['a-b'][0] == pytest.approx(out['a'][0] - out['b'][0]) and out['dropped']['a'] == 0
    # constant samples: no spread, the interval collapses to the point
    const = lambda v, h: dict(nll=[v * 64] * 50, cnt=[64] * 50, H=[h] * 50)
    out = C.bootstrap_matched(
        {'a': [const(2.0, 2.5), const(3.0, 3.5)], 'b': [const(2.0, 2.0), const(3.0, 4.0)]}, 3.0
    )
    assert out['a'] == pytest.approx((2.5, 2.5, 2.5)) and out['b'] == pytest.approx((2.5, 2.5, 2.5))
    assert out['a-b'] == pytest.approx((0, 0, 0)) and C.call(out['a-b']) == 'tie'


def table(spec):
    """spec: {(model, sampler, T): [(top_p, gen_nll, entropy, nfe)]} -> (rows, per) as a sweep writes them."""
    rng = np.random.default_rng(1)
    rows, per = (
        [
            dict(
                model='reference',
                ckpt='reference',
                sampler='data',
                steps='0',
                top_p='0.9',
                nfe='0',
                gen_nll='1.5',
                entropy='3.0',
                mauve='0.9',
            )
        ],
        {},
    )
    for (model, s, T), cells in spec.items():
        for tp, nll, h, nfe in cells:
            r = dict(
                model=model,
                ckpt=model + '.pt',
                sampler=s,
                steps=str(T),
                top_p=str(tp),
                nfe=str(nfe),
                gen_nll=str(nll),
                entropy=str(h),
                mauve='0.5',
            )
            rows.append(r)
            per[(r['ckpt'], s, str(T), str(tp))] = cell(rng, nll, h, noise=0.05)
    return rows, per


def test_verdict_compares_at_the_datas_entropy_with_each_arms_best_rule():
    M, D = 'mdlm:mdlm_ft', 'dsl:dsl_ft'
    spec = {
        (M, 'mdlm', 8): [(0.9, 2.9, 2.8, 8), (1.0, 3.3, 3.2, 8)],  # at 3.0: 3.1
        (M, 'remdm-loop', 8): [(0.9, 2.8, 2.8, 7), (1.0, 3.2, 3.2, 8)],  # at 3.0: 3.0 (MDLM's best)
        (M, 'remdm-loop', 32): [(0.9, 2.4, 2.8, 30), (1.0, 2.8, 3.2, 31)],  # at 3.0: 2.6
        (M, 'mdlm', 32): [(0.9, 2.6, 2.9, 28), (1.0, 2.9, 3.1, 29)],  # at 3.0: 2.75
        (D, 'hybrid', 8): [(0.9, 2.2, 2.6, 8), (1.0, 2.8, 3.2, 8)],  # at 3.0: 2.6 (lowest raw NLL too)
        (D, 'uncertainty', 8): [(0.9, 2.5, 2.9, 8), (1.0, 2.7, 3.1, 8)],  # at 3.0: 2.6
        (D, 'mdlm', 8): [(0.9, 1.0, 2.0, 8), (1.0, 1.2, 2.3, 8)],
    }  # never reaches 3.0: left out
    rows, per = table(spec)
    lines, say, out = C.verdict(rows, per, [8, 32], [8], 3.0, B=200)
    got = {(v['T'], v['vs']): v for v in out}
    eq, four = got[(8, 8)], got[(8, 32)]
    assert eq['H'] == four['H'] == 3.0 and eq['rule_b'] == 'remdm-loop' and four['rule_b'] == 'remdm-loop'
    assert eq['a'][0] == pytest.approx(2.6) and eq['b'][0] == pytest.approx(3.0) and eq['call'] == 'better'
    assert four['b'][0] == pytest.approx(2.6) and four['call'] == 'tie' and four['nfe_b'] == 30.5
    assert eq['rule_a'] in ('hybrid', 'uncertainty')
    assert 'better in 1, tie in 0, worse in 0 of 1' in say and 'tie in 1' in say
    rule = C.same_rule(rows, per, [8], 3.0, B=100)
    # the DSL model's mdlm curve shares no entropy with the MDLM model's; it has no remdm-loop cells at all
    assert len(rule) == 2
    own = C.own_rules(rows, per, [8, 32], [8], 3.0, B=100)  # each DSL-only rule alone, at T and 4T
    assert [l.split(' | ')[:3] for l in own[2:]] == [
        ['| uncertainty', '8', '8'],
        ['| uncertainty', '8', '32'],
        ['| hybrid', '8', '8'],
        ['| hybrid', '8', '32'],
    ]
    # against each MDLM rule alone: at T = 8 mdlm (3.1 at 3.0) as well as remdm-loop (3.0), both present
    each = C.own_rules(rows, per, [8, 32], [8], 3.0, B=100, each=True)
    rules = [(l.split(' | ')[0], l.split(' | ')[2], l.split(' | ')[5].split('(')[-1]) for l in each[2:]]
    assert rules[:4] == [
        ('| uncertainty', '8', 'mdlm)'),
        ('| uncertainty', '8', 'remdm-loop)'),
        ('| uncertainty', '32', 'mdlm)'),
        ('| uncertainty', '32', 'remdm-loop)'),
    ]
    assert len(each) == 2 + 8 and '| 3.100 [' in each[2]


def test_tuning_choice_is_made_at_matched_entropy_not_by_raw_nll():
    """v1 has the lowest raw NLL (at low entropy); at the entropy both reach (3.2 clipped to 3.0) v2 is
    better."""
    rows, _ = table(
        {
            ('dsl:v1', 'hybrid', 32): [(0.9, 2.0, 2.6, 32), (1.0, 2.6, 3.0, 32)],  # at 3.0: 2.6
            ('dsl:v2', 'hybrid', 32): [(0.9, 2.3, 2.85, 32), (1.0, 2.5, 3.05, 32)],
        }
    )  # at 3.0: 2.45
    win, H, at = C.choose(rows, ['dsl:v1', 'dsl:v2'], 'hybrid', 32, 3.2)
    assert win == 'dsl:v2' and H == pytest.approx(3.0)
    assert at['dsl:v1'] == pytest.approx(2.6) and at['dsl:v2'] == pytest.approx(2.45)


def test_cli_reads_a_sweep_folder_and_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path)])
    assert e.value.code == 2 and capsys.readouterr().err.count('\n') == 1
    import csv

    def write(folder, spec, ckpt=''):
        rows, per = table(spec)
        folder.mkdir(exist_ok=True)
        with open(folder / 'results.csv', 'w') as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows([{**r, 'ckpt': ckpt + r['ckpt']} for r in rows])
        with open(folder / 'per_sample.jsonl', 'w') as f:
            for (ck, s, T, tp), v in per.items():
                f.write(json.dumps(dict(ckpt=ckpt + ck, sampler=s, steps=T, top_p=tp, **v)) + '\n')

    write(
        tmp_path,
        {
            ('mdlm:mdlm_ft', 'mdlm', 8): [(0.9, 2.9, 2.8, 8), (1.0, 3.3, 3.2, 8)],
            ('dsl:dsl_ft', 'hybrid', 8): [(0.9, 2.2, 2.6, 8), (1.0, 2.8, 3.2, 8)],
        },
    )
    C.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert '| 8 | 8 | 3.000 | 2.600 [' in out and '| 3.100 [' in out  # at 3.0: DSL 2.6, MDLM 3.1
    # --mdlm: another MDLM continuation's cells (another checkpoint path) replace the MDLM arm's, DSL's stay
    write(tmp_path / 'long', {('mdlm:mdlm_ft', 'mdlm', 8): [(0.9, 2.5, 2.8, 8), (1.0, 2.9, 3.2, 8)]}, 'long/')
    C.main([str(tmp_path), '--mdlm', str(tmp_path / 'long')])
    out = capsys.readouterr().out
    assert (
        '| 8 | 8 | 3.000 | 2.600 [' in out
        and '| 2.700 [' in out
        and '| -0.100 [' in out
        and '3.100' not in out
    )
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path), '--mdlm', str(tmp_path / 'none')])
    assert e.value.code == 2 and capsys.readouterr().err.count('\n') == 1
    # --against: every other model, rule by rule at equal T, against one
    write(
        tmp_path / 'pair',
        {
            ('dsl:a', 'mdlm', 8): [(0.9, 2.9, 2.8, 8), (1.0, 3.3, 3.2, 8)],
            ('dsl:b', 'mdlm', 8): [(0.9, 2.5, 2.8, 8), (1.0, 2.9, 3.2, 8)],
            ('dsl:b', 'hybrid', 8): [(0.9, 2.2, 2.6, 8), (1.0, 2.8, 3.2, 8)],
        },
    )
    C.main([str(tmp_path / 'pair'), '--against', 'dsl:a'])
    out = capsys.readouterr().out
    # at 3.0: b 2.7, a 3.1, b - a = -0.4; b's hybrid cells have no counterpart in a's and are not listed
    assert '| dsl:b | mdlm | 8 | 3.000 | 2.700 [' in out and '| -0.400 [' in out and 'hybrid' not in out
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path / 'pair'), '--against', 'dsl:none'])
    assert e.value.code == 2 and 'no such model' in capsys.readouterr().err


def test_frontier_legend_names_every_panels_lines(tmp_path, monkeypatch):
    """The legend sits on the last panel; it must name the lines of every panel (DSL has no cells at large
    T)."""
    import matplotlib.axes

    import figures

    got, orig = [], matplotlib.axes.Axes.legend
    monkeypatch.setattr(
        matplotlib.axes.Axes, 'legend', lambda self, *a, **kw: got.append(list(a[1])) or orig(self, *a, **kw)
    )
    pts = [(4.3, 5.5, 0.8), (4.4, 6.0, 1.0)]
    curves = {8: {'dsl uncertainty': pts, 'mdlm mdlm': pts}, 32: {'mdlm mdlm': pts}}
    figures.frontier(curves, str(tmp_path / 'f.png'), 'title', ref_entropy=4.35)
    assert (tmp_path / 'f.png').stat().st_size > 0
    assert got == [['dsl uncertainty', 'mdlm mdlm', 'data entropy']]


def test_per_sample_reads_a_gzipped_folder(tmp_path):
    """A committed folder may hold per_sample.jsonl gzipped: the same records either way."""
    import gzip

    recs = [dict(ckpt='a', sampler='mdlm', steps='8', top_p='0.9', nll=[1.5, 2.0], cnt=4, H=[2.0, 2.1])]
    text = ''.join(json.dumps(r) + '\n' for r in recs)
    (tmp_path / 'plain').mkdir()
    (tmp_path / 'plain' / 'per_sample.jsonl').write_text(text)
    (tmp_path / 'packed').mkdir()
    with gzip.open(tmp_path / 'packed' / 'per_sample.jsonl.gz', 'wt') as f:
        f.write(text)
    got = C.per_sample_of(tmp_path / 'packed')
    assert got == C.per_sample_of(tmp_path / 'plain')
    assert got[('a', 'mdlm', '8', '0.9')]['cnt'] == [4, 4]
