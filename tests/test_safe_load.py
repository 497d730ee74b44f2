"""Loading a checkpoint never runs code in it (issue #29): a checkpoint whose unpickling would create a file
is refused by every command that loads checkpoints, with one line and a non-zero exit, and the file never
appears; checkpoints written before the numpy RNG state was stored as plain types still load, resume and
sample the same; --trust_checkpoint loads a foreign but harmless pickle (a Lightning-style .ckpt with a config
object)."""

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import test_train
import torch

import checkpoint_io
import data
import model as M
import sample
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the tiny training run of the train.py tests
SMALL = test_train.SMALL


class Payload:
    """Unpickling it calls open(marker, 'w'): the marker file appears if a loader runs code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@pytest.fixture(scope='module')
def world(tmp_path_factory, corpus):
    """A prepared corpus, a tiny DSL checkpoint trained by train.py, and that checkpoint with a payload
    added."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp('safe_load')
    data_dir = str(d / 'data')
    data.prepare(data=corpus, out_dir=data_dir)
    run = str(d / 'run')
    train.main(SMALL + ['--data_dir', data_dir, '--max_iters', '3', '--eval_interval', '3', '--out_dir', run])
    ckpt = checkpoint_io.load(str(d / 'run' / 'ckpt.pt'))
    marker = str(d / 'MARKER')
    torch.save(dict(ckpt, payload=Payload(marker)), d / 'evil.pt')
    yield dict(data=data_dir, ckpt=str(d / 'run' / 'ckpt.pt'), evil=str(d / 'evil.pt'), marker=marker)
    torch.set_num_threads(n)


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(world, tmp_path):
    evil, dd = world['evil'], world['data']
    (tmp_path / 'resume').mkdir()
    shutil.copyfile(evil, tmp_path / 'resume' / 'ckpt.pt')
    samples = tmp_path / 'samples.jsonl'
    samples.write_text(''.join(json.dumps(dict(ids=[1, 2, 3, 4])) + '\n' for _ in range(4)))
    resumed = str(tmp_path / 'resume' / 'ckpt.pt')
    init = SMALL + ['--data_dir', dd, '--init_from', evil, '--out_dir', tmp_path / 'init']
    cases = [
        (['sample.py', '--ckpt', evil, '--steps', '2', '--quiet', '--out', tmp_path / 's.jsonl'], evil),
        (['train.py'] + init, evil),
        (['train.py', '--init_from', 'resume', '--out_dir', tmp_path / 'resume'], resumed),
        (['evaluate.py', '--samples', samples, '--refs', dd, '--judge', evil, '--out', tmp_path / 'm'], evil),
        (['probe.py', 'bounds', '--ckpt', evil, '--data', dd], evil),
        (['sweep.py', '--ckpt', evil, '--judge', evil, '--out_dir', tmp_path / 'sweep'], evil),
        (['bench.py', '--lookup_error', evil, '--data', dd], evil),
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, args[0])] + [str(a) for a in args[1:]],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in cases
    ]  # all at once: most of each run is Python and torch start-up
    for p, (args, path) in zip(procs, cases):
        err = p.communicate(timeout=180)[1]
        lines = err.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and 'Traceback' not in err, (args, err)
        assert path in lines[0] and 'io.open' in lines[0] and '--trust_checkpoint' in lines[0], (args, err)
    assert not os.path.exists(world['marker'])
    assert not (tmp_path / 'init').exists() and os.listdir(tmp_path / 'resume') == ['ckpt.pt']
    # the payload is real: the opt-in's full unpickling runs it
    checkpoint_io.load(evil, trust=True)
    assert os.path.exists(world['marker'])


def test_the_refusal_holds_for_torchs_legacy_format_and_a_damaged_file_is_no_refusal(tmp_path):
    marker = str(tmp_path / 'MARKER')
    torch.save(
        dict(model={}, payload=Payload(marker)), tmp_path / 'old.pt', _use_new_zipfile_serialization=False
    )
    with pytest.raises(checkpoint_io.Refused, match='needs io.open'):
        checkpoint_io.load(str(tmp_path / 'old.pt'))
    assert not os.path.exists(marker)
    (tmp_path / 'noise.pt').write_bytes(bytes(range(256)) * 8)
    with pytest.raises(Exception) as e:
        checkpoint_io.load(str(tmp_path / 'noise.pt'))
    assert not isinstance(e.value, checkpoint_io.Refused)


def spell_numpy_1(src, dst):
    """The same checkpoint as numpy 1 writes it: its array rebuilder named
    numpy.core.multiarray._reconstruct."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, 'w', zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            raw = zin.read(name)
            if name.endswith('data.pkl'):
                assert b'numpy._core.multiarray' in raw
                raw = raw.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
            zout.writestr(name, raw)


def test_checkpoints_of_the_old_format_load_resume_and_sample_the_same(world, tmp_path):
    # today's checkpoints hold only tensors and plain types: plain weights_only loads them, nothing allowed
    # extra
    new = torch.load(world['ckpt'], map_location='cpu', weights_only=True)
    assert isinstance(new['rng']['numpy'][1], list)
    # the format before, the same state: numpy's as the old code stored it, np.random.get_state() (key an
    # ndarray)
    algorithm, key, pos, has_gauss, gauss = new['rng']['numpy']
    np.random.set_state((algorithm, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    old = dict(new, rng=dict(new['rng'], numpy=np.random.get_state()))
    for name, ck in (('new', new), ('old', old)):
        os.makedirs(tmp_path / name)
        torch.save(ck, tmp_path / name / 'ckpt.pt')
    with pytest.raises(pickle.UnpicklingError, match='numpy'):
        torch.load(tmp_path / 'old' / 'ckpt.pt', map_location='cpu', weights_only=True)
    spell_numpy_1(tmp_path / 'old' / 'ckpt.pt', tmp_path / 'numpy1.pt')
    for path in (tmp_path / 'old' / 'ckpt.pt', tmp_path / 'numpy1.pt'):
        state = checkpoint_io.load(str(path))['rng']['numpy']
        assert isinstance(state[1], np.ndarray) and state[1].tolist() == new['rng']['numpy'][1]
    # the same samples from either file
    for name in ('new', 'old'):
        sample.main(
            [
                '--ckpt',
                str(tmp_path / name / 'ckpt.pt'),
                '--steps',
                '4',
                '--num_samples',
                '3',
                '--seed',
                '1',
                '--quiet',
                '--out',
                str(tmp_path / f'{name}.jsonl'),
            ]
        )
    ids = {name: [json.loads(r)['ids'] for r in open(tmp_path / f'{name}.jsonl')] for name in ('new', 'old')}
    assert ids['new'] == ids['old'] and len(ids['new']) == 3
    # either resumes, restoring numpy's state, to the same weights
    step = new['step']
    for name in ('new', 'old'):
        train.main(['--init_from', 'resume', '--out_dir', str(tmp_path / name), '--max_iters', str(step + 2)])
    a, b = (checkpoint_io.load(str(tmp_path / name / 'ckpt.pt')) for name in ('new', 'old'))
    assert a['step'] == b['step'] == step + 2
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert a['rng']['numpy'] == b['rng']['numpy']


def test_trust_checkpoint_loads_a_foreign_harmless_pickle(world, tmp_path, capsys):
    """A Lightning-style MDLM checkpoint with a config object: refused by default, loaded with the opt-in."""
    V = data.load_meta(world['data'])['vocab_size']
    torch.manual_seed(0)
    sd = M.DiT(M.model_config('tiny', V)).state_dict()
    path = str(tmp_path / 'mdlm.ckpt')
    torch.save(
        {
            'state_dict': {'backbone.' + k: v for k, v in sd.items()},
            'hyper_parameters': argparse.Namespace(lr=3e-4),
        },
        path,
    )
    run = [
        '--ckpt',
        path,
        '--steps',
        '2',
        '--num_samples',
        '2',
        '--seq_len',
        '16',
        '--quiet',
        '--out',
        str(tmp_path / 's.jsonl'),
    ]
    with pytest.raises(SystemExit) as e:
        sample.main(run)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and 'argparse.Namespace' in err and path in err
    sample.main(run + ['--trust_checkpoint'])
    assert len(open(tmp_path / 's.jsonl').readlines()) == 2
    capsys.readouterr()
    init = SMALL + [
        '--data_dir',
        world['data'],
        '--init_from',
        path,
        '--max_iters',
        '1',
        '--out_dir',
        str(tmp_path / 'ft'),
    ]
    with pytest.raises(SystemExit) as e:
        train.main(init)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and len(err.splitlines()) == 1 and '--trust_checkpoint' in err, err
    train.main(init + ['--trust_checkpoint'])
    assert 'converted to DSL' in capsys.readouterr().out
    assert checkpoint_io.load(str(tmp_path / 'ft' / 'ckpt.pt'))['step'] == 1
