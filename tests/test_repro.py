"""The small-scale protocol (repro.py): end to end at the toy preset, resumable, and a verdict computed from
the numbers (never written by hand)."""

import csv
import json

import pytest

import repro
import sweep


def test_toy_protocol_end_to_end_and_resumes(tmp_path, monkeypatch, corpus, capsys):
    monkeypatch.chdir(tmp_path)  # the prepared data folder goes under tmp_path/data
    repro.repro('toy', text=corpus, results='res', runs='runs')
    res = tmp_path / 'res' / 'char_plateau'
    for f in (
        'README.md',
        'results.csv',
        'results.md',
        'results.png',
        'bounds.json',
        'calibration.json',
        'reliability_dsl_ft.png',
        'reliability_dsl_atomic.png',
        'detect.json',
        'trajectory_dsl_uncertainty.png',
        'trajectory_mdlm_loop.png',
        'samples.jsonl',
        'stages.json',
        'per_sample.jsonl',
        'frontier.png',
        'curves.png',
        'tuning.json',
        'tuning/results.csv',
        'tuning/per_sample.jsonl',
    ):
        assert (res / f).stat().st_size > 0, f
    with open(res / 'results.csv') as f:
        r = csv.DictReader(f)
        assert r.fieldnames == sweep.COLUMNS
        rows = list(r)
    cells = {(x['model'], x['sampler'], int(x['steps']), float(x['top_p'])) for x in rows}
    assert ('reference', 'data', 0, 0.9) in cells and ('ar:ar', 'ar', 32, 0.9) in cells
    for T in (2, 8):  # ReMDM's rules on both fine-tunes, DSL's own only on the DSL model; every top-p
        for tp in (0.9, 1.0):
            assert {
                ('mdlm:mdlm_ft', 'mdlm', T, tp),
                ('mdlm:mdlm_ft', 'remdm-loop', T, tp),
                ('dsl:dsl_ft', 'remdm-loop', T, tp),
                ('dsl:dsl_ft', 'hybrid', T, tp),
                ('dsl:dsl_ft', 'uncertainty', T, tp),
            } <= cells
        assert ('dsl:dsl_atomic', 'hybrid', T, 0.9) in cells
    assert not any(m == 'mdlm:mdlm_ft' and s in ('uncertainty', 'hybrid') for m, s, _, _ in cells)
    per = [json.loads(line) for line in (res / 'per_sample.jsonl').read_text().splitlines()]
    assert len(per) == len(rows) and all(len(p['nll']) == len(p['H']) == 8 for p in per)
    bounds = json.loads((res / 'bounds.json').read_text())
    assert set(bounds) == {'mdlm_pre', 'mdlm_ft', 'dsl_ft', 'dsl_atomic', 'ar'}
    assert 'diffusion_bound' in bounds['dsl_ft'] and 'ar_nll' in bounds['ar']
    cal = json.loads((res / 'calibration.json').read_text())
    assert set(cal) == {'dsl_ft', 'dsl_atomic'} and all(0 <= r['ece'] <= 1 for v in cal.values() for r in v)
    det = json.loads((res / 'detect.json').read_text())  # one proposer (the pre-train) for every model
    assert det['proposer'].endswith('mdlm_pre/ckpt.pt') and set(det['rows']) == {
        'mdlm_ft',
        'dsl_ft',
        'dsl_atomic',
    }
    assert {r['state'] for r in det['rows']['mdlm_ft']} == {'tokens'}
    assert {'endpoint'} < {r['state'] for r in det['rows']['dsl_ft']}
    assert all(0 <= r['auroc'] <= 1 and r['n_wrong'] > 0 for v in det['rows'].values() for r in v)
    readme = (res / 'README.md').read_text()
    assert '## Verdict' in readme and 'at equal T:' in readme and '| mdlm_ft | mdlm_bound |' in readme
    assert '## Error detection' in readme and '| dsl_ft | endpoint | plausible |' in readme
    assert '## Recipe ablation' in readme and '**yes**' in readme
    # the tuning runs start from the pre-trained MDLM weights; each winner is continued (resumed), not
    # restarted
    chosen = json.loads((res / 'tuning.json').read_text())
    assert set(chosen) == {'mdlm', 'dsl'} and chosen['mdlm']['winner'] == 'mdlm_lr0.001'
    for kind in ('mdlm', 'dsl'):
        assert 'initialised from' in (res / 'tuning' / f"train_{chosen[kind]['winner']}.log").read_text()
        assert 'resuming' in (res / f'train_{kind}_ft.log').read_text()
    assert 'initialised from' in (res / 'train_dsl_atomic.log').read_text()
    # a second run finds every stage done: no training, no new cells, the same numbers
    before = {f: (res / f).read_text() for f in ('results.csv', 'stages.json', 'train_dsl_ft.log')}
    capsys.readouterr()
    repro.repro('toy', text=corpus, results='res', runs='runs')
    assert 'done earlier' in capsys.readouterr().out
    assert {f: (res / f).read_text() for f in before} == before
    # --recipe: an earlier run's winners, no tuning runs; each continuation starts from this run's pre-train
    repro.repro('toy', text=corpus, results='res2', runs='runs2', recipe=str(res / 'tuning.json'))
    res2 = tmp_path / 'res2' / 'char_plateau'
    assert not any(k.startswith('tune') for k in json.loads((res2 / 'stages.json').read_text()))
    readme = (res2 / 'README.md').read_text()
    assert '## Recipe\n' in readme and f"`{chosen['dsl']['winner']}`" in readme and '**yes**' not in readme
    assert (
        'initialised from' in (res2 / 'train_dsl_ft.log').read_text()
        and not (tmp_path / 'runs2' / 'char_plateau' / 'tune').exists()
    )
    with pytest.raises(FileNotFoundError, match='--recipe nope.json: no such file'):
        repro.repro('toy', text=corpus, results='res3', runs='runs3', recipe='nope.json')
    assert not (tmp_path / 'runs3').exists()  # before any work


def test_interrupted_training_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch, corpus):
    """A training stage whose checkpoint is short of max_iters restarts with --init_from resume."""
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(repro.subprocess, 'Popen', lambda cmd, **kw: calls.append(cmd) or FakeProc())
    import torch

    (tmp_path / 'run').mkdir()
    torch.save(dict(step=3), tmp_path / 'run' / 'ckpt.pt')
    repro.train(str(tmp_path / 'run'), ['--objective', 'mdlm'], 10, 'python', str(tmp_path / 'log'))
    assert calls[-1][-6:] == [
        '--init_from',
        'resume',
        '--out_dir',
        str(tmp_path / 'run'),
        '--max_iters',
        '10',
    ]
    torch.save(dict(step=10), tmp_path / 'run' / 'ckpt.pt')
    repro.train(str(tmp_path / 'run'), ['--objective', 'mdlm'], 10, 'python', str(tmp_path / 'log'))
    assert len(calls) == 1  # finished: not started again


class FakeProc:
    stdout = iter(['step 10 | loss 1.0\n'])
    returncode = 0

    def wait(self):
        return 0


def test_bad_preset_and_corpus_are_clear_errors():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        repro.repro('huge')
    with pytest.raises(ValueError, match="unknown corpus 'wiki'"):
        repro.repro('toy', corpora='wiki')
    with pytest.raises(ValueError, match='needs --text'):
        repro.repro('toy', corpora='speech')


def test_sweep_labels_carry_knobs_and_bad_ones_fail_before_any_work():
    assert sweep.parse_spec('uncertainty:gamma_commit=10:kappa=2') == (
        'uncertainty',
        dict(gamma_commit=10.0, kappa=2.0),
    )
    assert sweep.parse_spec('hybrid:rule=conf:T_c=2') == ('hybrid', dict(rule='conf', T_c=2))
    assert sweep.parse_spec('remdm-loop') == ('remdm-loop', {})
    with pytest.raises(ValueError, match='key=value'):
        sweep.parse_spec('uncertainty:gamma_commit')
    with pytest.raises(
        ValueError, match='unknown sampler option'
    ):  # no checkpoint is read: it does not exist
        sweep.sweep(['no/such/ckpt.pt'], ['uncertainty:bogus=1'], [8], 8, 'no/judge.pt')


def test_toy_protocol_on_word_pieces(tmp_path, monkeypatch, corpus):
    """The speech-bpe corpus's path at the toy preset: a byte-level BPE (bpe:256) trained on the generated
    text, every stage through it, samples decoded by it."""
    monkeypatch.chdir(tmp_path)
    repro.repro(
        'toy',
        corpora='speech-bpe',
        text=corpus,
        tokenizer='bpe:256',
        results='res',
        runs='runs',
        block_size=32,
        batch_size=8,
    )  # the corpus's own L = 128 and batch 16, overridden for speed
    res = tmp_path / 'res' / 'speech_bpe_plateau'
    import data

    meta = data.load_meta(data.resolve_dir(data=corpus, tokenizer='bpe:256'))
    assert meta['tokenizer'] == 'bpe:256' and meta['vocab_size'] == 256
    assert '## Verdict' in (res / 'README.md').read_text()
    texts = [
        t for line in (res / 'samples.jsonl').read_text().splitlines() for t in json.loads(line)['texts']
    ]
    assert texts and all(isinstance(t, str) and t for t in texts)
    assert (res / 'trajectory_dsl_uncertainty.png').stat().st_size > 0
