"""The verdict over training seeds (verdict.py): end to end at the toy preset; the test sweep waits for the
pre-registration; the knob tuning picks from its grid by the stated criterion; the report's numbers come
from the files."""

import csv
import json
import os

import pytest

import verdict

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(HERE, 'results', 'char_recipe', 'tuning.json')


def test_toy_verdict_end_to_end(tmp_path, monkeypatch, corpus, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ['--preset', 'toy', '--text', corpus, '--results', 'res', '--runs', 'runs', '--recipe', RECIPE]
    # everything up to the knobs runs; the test sweep refuses without a pre-registration
    with pytest.raises(SystemExit):
        verdict.main(argv)
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the knob sweep's progress bar
    assert last.startswith('verdict.py: error:') and 'preregistered.md' in last
    res = tmp_path / 'res' / 'char'
    assert not (res / 'results.csv').exists()
    knobs = json.loads((res / 'knobs.json').read_text())
    assert knobs['dsl']['chosen'] in ('uncertainty:kappa=1', 'uncertainty:kappa=2')
    for arm in ('dsl', 'mdlm'):
        scored = {c: v['worse'] for c, v in knobs[arm]['scores'].items() if v['worse'] is not None}
        assert knobs[arm]['chosen'] == min(scored, key=scored.get)
    for arm in ('dsl', 'mdlm'):
        for s in (0, 1):
            assert (res / f'train_{arm}_s{s}.log').exists()
            log = (res / f'train_{arm}_s{s}.log').read_text()
            assert f"'seed': {s}" in log and "'lr_decay': 'cosine'" in log

    (res / 'preregistered.md').write_text('the toy protocol\n')
    verdict.main(argv)
    rows = list(csv.DictReader(open(res / 'results.csv')))
    # every compared curve has temperature points, and every model sampled each cell with seed 0
    assert any('temperature=1.2' in r['sampler'] for r in rows)
    assert {r['seed'] for r in rows} == {'0'}
    v = json.loads((res / 'verdict.json').read_text())
    first = next(iter(v.values()))
    assert list(v)[0].startswith('primary')
    assert first['call'] in ('better', 'worse', 'tie', 'mixed', 'unreadable')
    assert sum(first['stability'].values()) == 20
    readme = (res / 'README.md').read_text()
    assert f"**{first['call']}**" in readme
    for f in ('frontier.png', 'curves.png'):
        assert (res / f).stat().st_size > 0
    # a reading written by hand above the marker survives the report's rerun (nothing else runs again)
    (res / 'README.md').write_text('# by hand\n\n' + verdict.MARK + '\n\nstale\n')
    verdict.main(argv + ['--explore_temperatures', '1.5'])
    again = (res / 'README.md').read_text()
    assert again.startswith('# by hand') and 'stale' not in again and f"**{first['call']}**" in again
