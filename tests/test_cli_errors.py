"""Bad input on every CLI (issue #13): one line on stderr naming what is wrong, a non-zero exit status (2 for
command-line mistakes), no traceback, and nothing written or overwritten. Adding a case is one row of CASES.

Each row runs as its own process. A fresh interpreter spends ~3 s importing torch on a busy 2-core machine, so
the rows run in children of a multiprocessing fork server that imported torch once: each child runs the script
as __main__ (runpy), so its exit status, stderr and uncaught tracebacks are those of `python script.py ...`.
`pytest -m slow tests/test_cli_errors.py` runs every row through a real interpreter instead."""

import hashlib
import multiprocessing
import os
import runpy
import shlex
import subprocess
import sys

import pytest
import torch

import model as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHARS = list(' abcdefghijklmnopqrstuvwxyz')  # the tiny checkpoint's char vocabulary: no 'Ω'

# (command line, exit status, text the one-line message must contain). Placeholders, all under one tmp folder:
# {ckpt} a tiny char-vocabulary DSL checkpoint in train.py's format, {trunc} its first 5 KB, {text} a text
# file, {empty} an empty file, {file} an existing non-text file, {dir} an existing folder, {missing} no file.
CASES = [
    # sample.py
    ('sample.py --ckpt {trunc}', 2, 'cannot read --ckpt'),
    ('sample.py --ckpt {text}', 2, 'cannot read --ckpt'),
    ('sample.py --ckpt {dir}', 2, 'is a folder'),
    ('sample.py --ckpt {missing}', 2, 'not found'),
    ('sample.py --ckpt {ckpt} --prompt Ωmega', 2, "'Ω'"),
    ('sample.py --ckpt {ckpt} --suffix Ωmega', 2, "'Ω'"),
    ('sample.py --ckpt {ckpt} --seq_len -5', 2, '--seq_len'),
    ('sample.py --ckpt {ckpt} --device cuda', 2, 'CUDA is not available'),
    ('sample.py --ckpt {ckpt} --device gpu', 2, "unknown device 'gpu'"),
    ('sample.py --ckpt {ckpt} --kappa -1', 2, 'kappa must lie in [0, inf)'),
    ('sample.py --ckpt {ckpt} --sampler cap --eta 2', 2, 'eta must lie in [0, 1]'),
    ('sample.py --ckpt {ckpt} --trajectory traj.txt', 2, 'pass a .png file name'),
    ('sample.py --ckpt {ckpt} --sampler budget --rho -1', 2, 'rho must lie in [0, inf)'),
    ('sample.py --ckpt {ckpt} --sampler loop --t_on 1.5', 2, 't_on must lie in (0, 1)'),
    ('sample.py --ckpt {ckpt} --sampler loop --t_off 0.6', 2, 't_off must lie in [0, t_on]'),
    ('sample.py --ckpt {ckpt} --sampler loop --alpha_on nan', 2, 'alpha_on must lie in [0, 1]'),
    ('sample.py --ckpt {ckpt} --sampler hybrid --commit_p 1.5', 2, 'commit_p must lie in [0, 1]'),
    ('sample.py --ckpt {ckpt} --sampler hybrid --T_c -1', 2, 'T_c must lie in [0, inf)'),
    ('sample.py --ckpt {ckpt} --sampler sde --gamma_end 0', 2, 'gamma_end must lie in (0, inf)'),
    ('sample.py --ckpt {ckpt} --sampler hybrid --rule gibbs', 2, "hybrid rule 'gibbs'"),
    ('sample.py --ckpt {ckpt} --top_p 0', 2, 'top_p must lie in (0, 1]'),
    ('sample.py --ckpt {ckpt} --steps 0', 2, 'must be >= 1'),
    ('sample.py --ckpt {ckpt} --steps many', 2, 'invalid int'),
    ('sample.py --ckpt {ckpt} --sampler gibbs', 2, 'unknown sampler'),
    ('sample.py --ckpt {ckpt} --sampler ar', 2, 'needs a causal checkpoint'),
    ('sample.py --ckpt {ckpt} --out {dir}', 2, 'is a folder'),
    ('sample.py --ckpt {ckpt} --out {file}/s.jsonl', 2, 'is a file'),
    ('sample.py --ckpt {ckpt} --meta {missing}', 2, '--meta'),
    # train.py
    ('train.py --device cuda', 2, 'CUDA is not available'),
    ('train.py --device gpu', 2, "unknown device 'gpu'"),
    ('train.py --data {empty}', 1, 'is empty'),
    ('train.py --data {missing}', 1, 'no such file'),
    ('train.py --gamma_max -5', 2, '--gamma_max expects a number in (0, inf)'),
    ('train.py --lr -1', 2, '--lr expects a number in (0, inf)'),
    ('train.py --lr nan', 2, '--lr expects a number in (0, inf)'),
    ('train.py --dropout 1', 2, '[0, 1)'),
    ('train.py --p_end 1.5', 2, '[0, 1]'),
    ('train.py --beta2 1', 2, '[0, 1)'),
    ('train.py --ema_decay -0.1', 2, '[0, 1)'),
    ('train.py --log_snr_std -1', 2, '--log_snr_std expects a number in [0, inf)'),
    ('train.py --reveal_floor 1.5', 2, '--reveal_floor expects a number in [0, 1]'),
    ('train.py --sigma -1', 2, '--log_snr_std expects a number in [0, inf)'),  # the old name still works
    ('train.py --seed -1', 2, '--seed expects an int in [0, inf)'),
    ('train.py --n_layer 0', 2, '--n_layer expects an int in [1, inf)'),
    ('train.py --max_iters -1', 2, '--max_iters'),
    ('train.py --out_dir {file}', 2, 'is a file'),
    ('train.py --out_dir {file}/sub', 2, 'is a file'),
    ('train.py --data_dir {file}', 2, 'is a file'),
    ('train.py --init_from resume --out_dir {dir}', 1, 'no checkpoint'),
    ('train.py --init_from {missing}', 2, '--init_from'),
    # data.py
    ('data.py --data {empty}', 1, 'is empty'),
    ('data.py --data {dir}', 1, 'is a folder'),
    ('data.py --data {text} --out_dir {file}', 2, 'is a file'),
    ('data.py --tokenizer bpe', 2, "unknown tokenizer 'bpe'"),
    ('data.py --tokenizer bpe:x', 2, 'bpe:N needs a whole number N >= 256'),
    ('train.py --tokenizer bpe:0', 2, 'bpe:N needs a whole number N >= 256'),
    ('data.py no_such_set', 1, 'unknown dataset'),
    # toy.py
    ('toy.py --steps_train 0', 2, '--steps_train'),
    ('toy.py --seeds 0', 2, '--seeds'),
    ('toy.py --out_dir {file}', 2, 'is a file'),
    ('toy.py --seed x', 2, 'invalid int'),
    # bench.py
    ('bench.py --device cuda', 2, 'CUDA is not available'),
    ('bench.py --block_size 0', 2, '--block_size'),
    ('bench.py --vocab 0', 2, '--vocab'),
    ('bench.py --modes gan', 2, '--modes'),
    ('bench.py --samplers gibbs', 2, 'unknown sampler'),
    ('bench.py --sample_batches 1,x', 2, '--sample_batches'),
    ('bench.py --preset huge', 2, "invalid choice: 'huge'"),
]


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp('bad_input')
    torch.manual_seed(0)
    m = M.DiT(M.model_config('tiny', len(CHARS), dsl=True, noise_dim=16, gamma_max=30.0))
    meta = dict(tokenizer='char', vocab_size=len(CHARS), chars=CHARS, eos=None, bos=None, mask_id=len(CHARS))
    ckpt = d / 'ckpt.pt'  # the keys train.py writes that sample.py reads
    torch.save(
        dict(
            model=m.state_dict(),
            ema=None,
            model_config=m.config,
            meta=meta,
            step=1,
            config=dict(block_size=16, objective='dsl'),
        ),
        ckpt,
    )
    (d / 'trunc.pt').write_bytes(ckpt.read_bytes()[:5000])
    (d / 'notes.txt').write_text('to be or not to be\n' * 20)
    (d / 'empty.txt').write_text('')
    (d / 'existing.bin').write_bytes(b'\x00keep me\x01')
    (d / 'folder').mkdir()
    paths = dict(
        ckpt=ckpt,
        trunc=d / 'trunc.pt',
        text=d / 'notes.txt',
        empty=d / 'empty.txt',
        file=d / 'existing.bin',
        dir=d / 'folder',
        missing=d / 'missing.pt',
    )
    return d, {k: shlex.quote(str(v)) for k, v in paths.items()}


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def snapshot(d):
    """Every file under d and the repository's data/ folder, with its bytes and mtime: a failed run changes
    none."""
    files = {}
    for top in (str(d), os.path.join(ROOT, 'data')):
        for dirpath, dirnames, names in os.walk(top):
            files.update({dirpath: 'dir'})
            for n in names:
                p = os.path.join(dirpath, n)
                files[p] = (os.stat(p).st_mtime_ns, sha256(p) if top == str(d) else '')
    return files


def child(script, argv, cwd, out_path, err_path):
    """Runs in a forked child: `python script argv...` with stdout/stderr (Python and C level) to files."""
    os.chdir(cwd)
    os.environ.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    torch.set_num_threads(1)
    for fd, path, name in ((1, out_path, 'stdout'), (2, err_path, 'stderr')):
        f = open(path, 'w')
        os.dup2(f.fileno(), fd)
        setattr(sys, name, f)
    sys.argv = [script] + argv
    sys.path.insert(0, ROOT)
    # SystemExit and tracebacks go to multiprocessing, which sets the exit status
    runpy.run_path(os.path.join(ROOT, script), run_name='__main__')


@pytest.fixture(scope='module')
def forkserver():
    ctx = multiprocessing.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'numpy', 'tqdm', 'pytest'])  # what the children would import
    return ctx


def run_case(forkserver, d, argv, real):
    script, argv = argv[0], argv[1:]
    out, err = d / 'stdout.log', d / 'stderr.log'
    if real:
        env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
        r = subprocess.run(
            [sys.executable, os.path.join(ROOT, script)] + argv,
            cwd=d,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return r.returncode, r.stderr
    p = forkserver.Process(target=child, args=(script, argv, str(d), str(out), str(err)))
    p.start()
    p.join(120)
    code = p.exitcode
    if code is None:
        p.kill()
    text = err.read_text()
    out.unlink()
    err.unlink()
    return code, text


def check(inputs, forkserver, case, real=False):
    cmd, code, msg = case
    d, paths = inputs
    argv = shlex.split(cmd.format(**paths))
    # the cwd: a default out_dir ('out') would appear here and fail the snapshot
    (d / 'work').mkdir(exist_ok=True)
    before = snapshot(d)
    rc, err = run_case(forkserver, d / 'work', argv, real)
    lines = [line for line in err.splitlines() if line.strip()]
    assert 'Traceback' not in err, err
    assert rc == code and len(lines) == 1 and msg in lines[0], (rc, err)
    assert snapshot(d) == before, 'a failed run wrote or changed a file'


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(inputs, forkserver, case):
    check(inputs, forkserver, case)


@pytest.mark.slow
@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_in_a_fresh_interpreter(inputs, case):
    check(inputs, None, case, real=True)
