"""The small-scale protocol (repro.py): end to end at the toy preset, resumable, and a verdict computed from the
numbers (never written by hand)."""
import csv
import json

import pytest

import repro
import sweep


def cell(model, sampler, T, mauve, nll, entropy):
    return dict(model=model, sampler=sampler, steps=str(T), nfe=str(T), mauve=str(mauve), gen_nll=str(nll),
                entropy=str(entropy))


def test_verdict_compares_dsl_at_T_with_mdlm_at_4T_and_ignores_repetition():
    rows = [cell('reference', 'data', 0, 1.0, 1.0, 3.0),
            # MDLM+ReMDM: at 16 steps MAUVE 0.5, at 64 steps 0.8, NLL 2.0 (entropy fine)
            cell('mdlm:mdlm_ft', 'mdlm', 16, 0.5, 2.5, 2.9), cell('mdlm:mdlm_ft', 'remdm-loop', 64, 0.8, 2.0, 2.9),
            cell('mdlm:mdlm_ft', 'remdm-cap', 64, 0.7, 1.5, 2.0),  # lower NLL, but repetitive: must not count
            cell('mdlm:mdlm_ft', 'mdlm', 64, 0.6, 2.2, 2.9), cell('mdlm:mdlm_ft', 'remdm-loop', 16, 0.4, 2.6, 2.9),
            # DSL at 16: MAUVE 0.85 beats MDLM at 64 (0.8); NLL 2.1 loses to 2.0
            cell('dsl:dsl_ft', 'uncertainty', 16, 0.85, 2.1, 2.8), cell('dsl:dsl_ft', 'hybrid', 16, 0.2, 1.0, 1.0),
            cell('dsl:dsl_ft', 'uncertainty', 64, 0.9, 1.9, 2.8),
            cell('dsl:dsl_atomic', 'uncertainty', 16, 0.99, 0.5, 3.0)]  # another model: never in the verdict
    lines, say, out = repro.verdict(rows, [16, 64], ref_entropy=3.0)
    got = {(v['T'], v['vs']): (v['mauve'], v['nll']) for v in out}
    assert got == {(16, 16): (True, True), (16, 64): (True, False), (64, 64): (True, True)}
    assert '1 of 1 comparisons by MAUVE and 0 of 1 by generative NLL' in say
    assert 'best of 2 samplers, MDLM its best of 3' in say
    row = next(l for l in lines if l.startswith('| 16 | 64 |'))
    assert '2.000 (remdm-loop' in row and '2.100 (uncertainty' in row  # the repetitive cells were skipped


def test_toy_protocol_end_to_end_and_resumes(tmp_path, monkeypatch, corpus, capsys):
    monkeypatch.chdir(tmp_path)  # the prepared data folder goes under tmp_path/data
    repro.repro('toy', text=corpus, results='res', runs='runs')
    res = tmp_path / 'res' / 'char'
    for f in ('README.md', 'results.csv', 'results.md', 'results.png', 'bounds.json', 'calibration.json',
              'reliability_dsl_ft.png', 'reliability_dsl_atomic.png', 'trajectory_dsl_uncertainty.png',
              'trajectory_mdlm_loop.png', 'samples.jsonl', 'stages.json'):
        assert (res / f).stat().st_size > 0, f
    with open(res / 'results.csv') as f:
        r = csv.DictReader(f)
        assert r.fieldnames == sweep.COLUMNS
        rows = list(r)
    cells = {(x['model'], x['sampler'], int(x['steps'])) for x in rows}
    assert ('reference', 'data', 0) in cells and ('ar:ar', 'ar', 32) in cells
    for T in (4, 8):  # ReMDM's rules on both fine-tunes, uncertainty only on the DSL models
        assert {('mdlm:mdlm_ft', 'mdlm', T), ('mdlm:mdlm_ft', 'remdm-loop', T), ('dsl:dsl_ft', 'remdm-loop', T),
                ('dsl:dsl_ft', 'uncertainty', T), ('dsl:dsl_atomic', 'uncertainty', T)} <= cells
    assert not any(m == 'mdlm:mdlm_ft' and s == 'uncertainty' for m, s, _ in cells)
    bounds = json.loads((res / 'bounds.json').read_text())
    assert set(bounds) == {'mdlm_pre', 'mdlm_ft', 'dsl_ft', 'dsl_atomic', 'ar'}
    assert 'diffusion_bound' in bounds['dsl_ft'] and 'ar_nll' in bounds['ar']
    cal = json.loads((res / 'calibration.json').read_text())
    assert set(cal) == {'dsl_ft', 'dsl_atomic'} and all(0 <= r['ece'] <= 1 for v in cal.values() for r in v)
    readme = (res / 'README.md').read_text()
    assert '## Verdict' in readme and 'at equal T in' in readme and '| mdlm_ft | mdlm_bound |' in readme
    # both continuations start from the pre-trained MDLM weights, for the same number of steps
    for k in ('mdlm_ft', 'dsl_ft', 'dsl_atomic'):
        assert 'initialised from' in (res / f'train_{k}.log').read_text()
    # a second run finds every stage done: no training, no new cells, the same numbers
    before = {f: (res / f).read_text() for f in ('results.csv', 'stages.json', 'train_dsl_ft.log')}
    capsys.readouterr()
    repro.repro('toy', text=corpus, results='res', runs='runs')
    assert 'done earlier' in capsys.readouterr().out
    assert {f: (res / f).read_text() for f in before} == before


def test_interrupted_training_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch, corpus):
    """A training stage whose checkpoint is short of max_iters restarts with --init_from resume."""
    monkeypatch.chdir(tmp_path)
    calls = []
    monkeypatch.setattr(repro.subprocess, 'Popen', lambda cmd, **kw: calls.append(cmd) or FakeProc())
    import torch
    (tmp_path / 'run').mkdir()
    torch.save(dict(step=3), tmp_path / 'run' / 'ckpt.pt')
    repro.train(str(tmp_path / 'run'), ['--objective', 'mdlm'], 10, 'python', str(tmp_path / 'log'))
    assert calls[-1][-6:] == ['--init_from', 'resume', '--out_dir', str(tmp_path / 'run'), '--max_iters', '10']
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
    assert sweep.parse_spec('uncertainty:gamma_commit=10:kappa=2') == ('uncertainty', dict(gamma_commit=10.0, kappa=2.0))
    assert sweep.parse_spec('hybrid:rule=conf:T_c=2') == ('hybrid', dict(rule='conf', T_c=2))
    assert sweep.parse_spec('remdm-loop') == ('remdm-loop', {})
    with pytest.raises(ValueError, match='key=value'):
        sweep.parse_spec('uncertainty:gamma_commit')
    with pytest.raises(ValueError, match='unknown sampler option'):  # no checkpoint is read: it does not exist
        sweep.sweep(['no/such/ckpt.pt'], ['uncertainty:bogus=1'], [8], 8, 'no/judge.pt')
