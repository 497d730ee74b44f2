"""train.py: CLI errors, DDP == gradient accumulation, exact resume after SIGKILL, corrupt checkpoints,
the non-finite stop, and DSL initialised from an MDLM (Lightning-format) checkpoint. Tiny models, CPU."""

import os
import re
import subprocess
import sys

import pytest
import torch

import checkpoint_io
import cli
import data
import model as M
import noise
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# compiling tiny models costs, gains nothing
SMALL = [
    '--preset',
    'tiny',
    '--block_size',
    '32',
    '--batch_size',
    '4',
    '--eval_windows',
    '4',
    '--eval_grid',
    '8',
    '--log_interval',
    '1',
    '--warmup_iters',
    '0',
    '--compile',
    'False',
]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory, corpus):
    d = str(tmp_path_factory.mktemp('play_char'))
    data.prepare(data=corpus, out_dir=d)
    return d


@pytest.fixture
def one_thread():
    """In-process runs use one thread, as the subprocesses do: fast on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(args, torchrun=False, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env['OMP_NUM_THREADS'] = '1'  # the same threads in single-process and DDP runs
    launcher = (
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--standalone',
            f'--nproc_per_node={2 if torchrun is True else torchrun}',
        ]
        if torchrun
        else [sys.executable]
    )
    cmd = launcher + ['train.py'] + [str(a) for a in args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    # A gloo process that aborts in torch's own C++ ("terminate called without an active exception", exit -6)
    # was seen once in a loaded clean-clone run and in none of its reruns; one more try tells that apart from
    # a failure of train.py, which repeats. (A retried run writes the same out_dir: a scratch run starts over,
    # a resume that already reached max_iters stops at once with the same checkpoint.)
    if torchrun and r.returncode != 0 and 'terminate called without an active exception' in r.stderr:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r


def ckpt(out):
    return checkpoint_io.load(os.path.join(out, 'ckpt.pt'))  # weights_only: what every command reads


def max_diff(a, b):
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_cli(capsys):
    def parse_args(argv):
        return cli.parse_args(argv, train.config)

    assert parse_args(['--lr', '3e-4', '--max_iters=7', '--compile', '--gamma_max', '10']) == dict(
        lr=3e-4, max_iters=7, compile=True, gamma_max=10.0
    )
    assert parse_args(['--log_snr_mean=auto', '--smooth_endpoints', 'false']) == dict(
        log_snr_mean=None, smooth_endpoints=False
    )
    # the SNR keys' old names, as old commands and tuning files pass them
    assert parse_args(['--mu', '0.5', '--sigma=1', '--c', '0.7']) == dict(
        log_snr_mean=0.5, log_snr_std=1.0, reveal_floor=0.7
    )
    # the one range checker (rules.check_options uses it too): brackets include, parentheses exclude, no NaN
    assert (
        cli.in_range(0, (0, 1, '[)')) and not cli.in_range(1, (0, 1, '[)')) and cli.in_range(1, (0, 1, '(]'))
    )
    assert (
        not cli.in_range(float('nan'), (-cli.INF, cli.INF, '()'))
        and cli.interval((0, cli.INF, '[)')) == '[0, inf)'
    )
    for bad, words in [
        (['--lrr', '1'], ['--lrr', '--lr', '--objective']),
        (['--lr', 'abc'], ['--lr', 'float']),
        (['--max_iters', '1.5'], ['int']),
        (['--objective', 'gan'], ['dsl', 'mdlm', 'ar']),
        (['--compile', 'maybe'], ['bool']),
        (['--eval_interval', '0'], ['positive']),
        (['lr=1'], ['valid keys']),
    ]:
        with pytest.raises(SystemExit) as e:
            parse_args(bad)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count('\n') == 1 and all(w in err for w in words), (bad, err)
    with pytest.raises(SystemExit) as e:
        parse_args(['-h'])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f'--{k}' in out for k in train.config)
    # the real exit status, no traceback
    r = run(['--no_such_key', '1'])
    assert r.returncode == 2 and r.stderr.count('\n') == 1 and 'valid keys' in r.stderr


@pytest.mark.parametrize('n', [1, 2, 3])
def test_bare_torchrun_runs_for_any_number_of_processes(data_dir, tmp_path, n):
    """No --grad_accum: one micro-step per process, global batch = batch_size * processes."""
    r = run(
        SMALL + ['--data_dir', data_dir, '--max_iters', 1, '--eval_interval', 1, '--out_dir', tmp_path],
        torchrun=n,
    )
    assert r.returncode == 0 and f'{n} process(es)' in r.stdout, r.stderr[-3000:]
    assert f'global batch {4 * n} x 32' in r.stdout and ckpt(tmp_path)['config']['grad_accum'] == n


def test_ddp_equals_grad_accum(data_dir, tmp_path):
    """2 gloo processes x 1 micro-batch == 1 process x 2 micro-batches: after the first optimizer step,
    and after a DDP resume for two more steps."""
    args = SMALL + ['--data_dir', data_dir, '--grad_accum', 2, '--lr', 1e-2, '--dropout', 0.1]
    r = run(args + ['--max_iters', 1, '--out_dir', tmp_path / 'ddp'], torchrun=True)
    assert r.returncode == 0 and '2 process(es)' in r.stdout, r.stderr[-3000:]
    r = run(args + ['--max_iters', 1, '--out_dir', tmp_path / 'one'])
    assert r.returncode == 0, r.stderr[-3000:]
    ddp, one = ckpt(tmp_path / 'ddp'), ckpt(tmp_path / 'one')
    torch.manual_seed(1337)
    init = M.DiT(one['model_config']).state_dict()
    assert max_diff(ddp['model'], one['model']) < 1e-5
    assert max_diff(one['model'], init) > 5e-3  # the step moved the weights: the comparison is not vacuous
    r = run(['--init_from', 'resume', '--max_iters', 3, '--out_dir', tmp_path / 'ddp'], torchrun=True)
    assert r.returncode == 0 and 'step 3 | loss' in r.stdout, r.stderr[-3000:]
    r = run(args + ['--max_iters', 3, '--out_dir', tmp_path / 'three'])
    assert r.returncode == 0, r.stderr[-3000:]
    ddp, three = ckpt(tmp_path / 'ddp'), ckpt(tmp_path / 'three')
    assert max_diff(ddp['model'], three['model']) < 1e-5 and max_diff(ddp['ema'], three['ema']) < 1e-5


def test_sigkill_and_resume_is_exact(data_dir, tmp_path):
    args = SMALL + [
        '--data_dir',
        data_dir,
        '--max_iters',
        9,
        '--ckpt_interval',
        3,
        '--eval_interval',
        4,
        '--dropout',
        0.1,
        '--objective',
        'mdlm',
        '--grad_accum',
        2,
    ]
    r = run(args + ['--out_dir', tmp_path / 'a', '--debug_kill_step', 5])
    assert r.returncode == -9 and ckpt(tmp_path / 'a')['step'] == 3
    r = run(['--init_from', 'resume', '--out_dir', tmp_path / 'a', '--debug_kill_step', -1])
    assert r.returncode == 0 and 'resuming' in r.stdout, r.stderr[-3000:]
    r = run(args + ['--out_dir', tmp_path / 'b'])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = ckpt(tmp_path / 'a'), ckpt(tmp_path / 'b')
    assert a['step'] == b['step'] == 9 and a['best_val'] == b['best_val']
    for key in ('model', 'ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a['optimizer']['state'], b['optimizer']['state']
    assert all(torch.equal(sa[i]['exp_avg_sq'], sb[i]['exp_avg_sq']) for i in sa)
    # sample.py's path: model.load_mdlm reads our checkpoint and returns the EMA weights
    m = M.load_mdlm(str(tmp_path / 'a' / 'ckpt.pt'))
    assert all(torch.equal(v, a['ema'][k]) for k, v in m.state_dict().items())


def test_ctrl_c_saves_and_resumes(data_dir, tmp_path):
    """SIGINT finishes the step, writes a checkpoint at that step (off the ckpt_interval grid) and exits 0."""
    out = tmp_path / 'i'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    args = SMALL + [
        '--data_dir',
        data_dir,
        '--max_iters',
        10000,
        '--ckpt_interval',
        5000,
        '--eval_interval',
        5000,
        '--out_dir',
        out,
    ]
    p = subprocess.Popen(
        [sys.executable, 'train.py'] + [str(a) for a in args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in p.stdout:
        if line.startswith('step 3 '):
            p.send_signal(2)
            break
    rest = p.communicate(timeout=60)[0]
    assert p.returncode == 0 and 'saved' in rest, rest[-2000:]
    step = ckpt(out)['step']
    assert 3 <= step < 5000
    r = run(['--init_from', 'resume', '--out_dir', out, '--max_iters', step + 2])
    assert r.returncode == 0 and ckpt(out)['step'] == step + 2, r.stderr[-2000:]


def test_corrupt_checkpoint_is_one_line(data_dir, tmp_path):
    out = tmp_path / 'c'
    out.mkdir()
    (out / 'ckpt.pt').write_bytes(b'PK\x03\x04 this is not a checkpoint')
    r = run(['--init_from', 'resume', '--out_dir', out])
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'corrupt' in r.stderr, r.stderr
    r = run(SMALL + ['--data_dir', data_dir, '--init_from', out / 'ckpt.pt', '--out_dir', tmp_path / 'd'])
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'ckpt.pt' in r.stderr, r.stderr
    r = run(['--init_from', 'resume', '--out_dir', tmp_path / 'empty'])
    assert r.returncode == 1 and r.stderr.count('\n') == 1 and 'no checkpoint' in r.stderr


def test_nan_stops_and_keeps_last_checkpoint(data_dir, tmp_path):
    out = tmp_path / 'n'
    r = run(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--max_iters',
            10,
            '--ckpt_interval',
            4,
            '--debug_nan_step',
            6,
            '--out_dir',
            out,
        ]
    )
    assert r.returncode == 1 and 'step 6' in r.stderr and r.stderr.count('\n') == 1, r.stderr
    c = ckpt(out)
    assert c['step'] == 4 and all(torch.isfinite(v).all() for v in c['model'].values())
    assert os.listdir(out) == ['ckpt.pt']


def test_dsl_from_mdlm_checkpoint(data_dir, tmp_path, capsys, one_thread):
    V = data.load_meta(data_dir)['vocab_size']
    torch.manual_seed(0)
    sd = M.DiT(M.model_config('tiny', V)).state_dict()
    for v in sd.values():  # make the zero-initialised adaLN weights non-trivial, as a trained model's
        v.add_(0.02 * torch.randn_like(v))
    torch.save({'state_dict': {'backbone.' + k: v for k, v in sd.items()}}, tmp_path / 'mdlm.ckpt')
    out = tmp_path / 'ft'
    train.main(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--init_from',
            str(tmp_path / 'mdlm.ckpt'),
            '--max_iters',
            '3',
            '--lr',
            '1e-4',
            '--out_dir',
            str(out),
        ]
    )
    log = capsys.readouterr().out
    assert 'converted to DSL' in log and 'step 3 | loss' in log
    c = ckpt(out)
    assert c['model_config']['dsl'] and 'converter.noise_embed' in c['model']
    # every backbone weight came from the MDLM file (3 Adam steps move a weight by at most ~3 lr)
    assert max_diff({k: c['model'][k] for k in sd}, sd) < 5e-4
    assert max_diff({k: c['model'][k] for k in sd}, M.DiT(M.model_config('tiny', V)).state_dict()) > 1e-2


@pytest.mark.parametrize('objective', ['ar', 'mdlm'])
def test_objectives_learn(data_dir, tmp_path, capsys, one_thread, objective):
    train.main(
        [
            '--preset',
            'tiny',
            '--block_size',
            '32',
            '--batch_size',
            '16',
            '--eval_windows',
            '16',
            '--compile',
            'False',
            '--data_dir',
            data_dir,
            '--objective',
            objective,
            '--max_iters',
            '60',
            '--eval_interval',
            '60',
            '--lr',
            '3e-3',
            '--warmup_iters',
            '5',
            '--ema_decay',
            '0',
            '--out_dir',
            str(tmp_path),
        ]
    )
    evals = [
        float(re.search(r'([\d.]+) nats', line)[1])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith('eval')
    ]
    assert len(evals) == 2 and evals[1] < evals[0] - 0.5, evals  # from ln V = 4.0 nats


def test_resume_of_a_cuda_checkpoint_on_a_cpu_machine(data_dir, tmp_path):
    """A checkpoint written by a --device cuda run (its stored device, fused AdamW groups, a CUDA RNG state),
    simulated here, resumes on a machine without CUDA: on the CPU, with one line saying so."""
    if torch.cuda.is_available():
        pytest.skip('needs a machine without CUDA')
    out = tmp_path / 'gpu'
    r = run(SMALL + ['--data_dir', data_dir, '--max_iters', 2, '--eval_interval', 2, '--out_dir', out])
    assert r.returncode == 0, r.stderr[-3000:]
    c = ckpt(out)
    c['config']['device'] = 'cuda'
    for group in c['optimizer']['param_groups']:
        group['fused'] = True
    c['rng']['cuda'] = [torch.zeros(16, dtype=torch.uint8)]
    torch.save(c, out / 'ckpt.pt')
    r = run(['--init_from', 'resume', '--out_dir', out, '--max_iters', 4])
    assert r.returncode == 0 and 'step 4 | loss' in r.stdout, r.stderr[-3000:]
    assert 'device cuda is not available' in r.stdout and 'on cpu' in r.stdout
    c = ckpt(out)
    assert c['step'] == 4 and c['config']['device'] == 'auto'
    assert not any(g['fused'] for g in c['optimizer']['param_groups'])


def test_recipe_defaults_gamma_max_100_at_any_vocabulary():
    """DSL2 trains at snr_max = 100 whatever the vocabulary; 30 at 65 characters was a misread inference
    grid."""
    for V in (65, 2048, 50257):
        assert (
            M.model_config('tiny', V, dsl=True)['gamma_max'] == 100.0
            and noise.snr_config(V)['gamma_max'] == 100.0
        )
    assert noise.snr_config(65)['log_snr_mean'] == 1.4  # the character lognormal stays


def test_a_checkpoint_with_the_old_snr_key_names_resumes_identically(data_dir, tmp_path, one_thread):
    """Checkpoints from before the rename store mu, sigma and c (now log_snr_mean, log_snr_std, reveal_floor):
    resumed, such a checkpoint trains exactly as the same one with the new names, its values in force."""
    snr = ['--log_snr_mean', 0.3, '--log_snr_std', 2.0, '--reveal_floor', 0.5]
    new, old = tmp_path / 'new', tmp_path / 'old'
    train.main([str(a) for a in SMALL + snr + ['--data_dir', data_dir, '--max_iters', 2, '--out_dir', new]])
    c = ckpt(new)
    old_name = {v: k for k, v in noise.OLD_SNR_KEYS.items()}
    for key in ('config', 'snr_config'):
        c[key] = {old_name.get(k, k): v for k, v in c[key].items()}
    assert c['config']['mu'] == 0.3 and 'log_snr_mean' not in c['config']
    old.mkdir()
    torch.save(c, old / 'ckpt.pt')
    for out in (new, old):
        train.main(['--init_from', 'resume', '--out_dir', str(out), '--max_iters', '4'])
    a, b = ckpt(new), ckpt(old)
    assert b['step'] == 4 and b['config']['log_snr_mean'] == 0.3 and 'mu' not in b['config']
    assert b['snr_config'] == a['snr_config'] and a['snr_config']['reveal_floor'] == 0.5
    for key in ('model', 'ema'):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize('warmup', [None, True])
def test_fine_tuning_ema_starts_at_the_loaded_weights(data_dir, tmp_path, one_thread, capsys, warmup):
    """Fine-tuning (--init_from a checkpoint): by default the EMA starts at the loaded weights and decays at
    ema_decay from the first step (DSL2), so after one step ema = d w0 + (1 - d) w1; with --ema_warmup the
    warmup d = min(decay, 1/10) forgets the start at once."""
    pre = tmp_path / 'pre'
    train.main(SMALL + ['--data_dir', data_dir, '--objective', 'mdlm', '--max_iters', 2, '--out_dir', pre])
    assert ckpt(pre)['config']['ema_warmup'] is True  # from scratch: the warmup, as before
    ft = tmp_path / 'ft'
    train.main(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--objective',
            'mdlm',
            '--max_iters',
            1,
            '--ema_decay',
            0.9,
            '--lr',
            1e-2,
            '--init_from',
            pre / 'ckpt.pt',
            '--out_dir',
            ft,
        ]
        + (['--ema_warmup', 'true'] if warmup else [])
    )
    w0 = ckpt(pre)['ema']  # --init_from loads a checkpoint's EMA weights (what it samples with)
    c = ckpt(ft)
    d = 0.1 if warmup else 0.9
    assert c['config']['ema_warmup'] is bool(warmup)
    assert max_diff(c['ema'], {k: d * w0[k] + (1 - d) * c['model'][k] for k in w0}) < 1e-6
    assert max_diff(c['model'], w0) > 1e-3  # the step moved the weights: the two modes differ


def test_a_plateau_stops_a_run_that_still_improves_a_little(data_dir, tmp_path, one_thread, capsys):
    """--min_delta: an eval is a new best only if it beats the best by more than min_delta, so a run whose
    bound still falls, by less, stops; --patience_from: evals before that step are not counted (an EMA that
    starts at loaded weights lags), so the first counted eval (step 4) is the best and the stop comes 2 evals
    later."""
    out = tmp_path / 'p'
    train.main(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--max_iters',
            50,
            '--eval_interval',
            2,
            '--patience',
            2,
            '--lr',
            3e-3,
            '--min_delta',
            100,
            '--patience_from',
            4,
            '--out_dir',
            out,
            '--eval_bound',
            'mdlm',
        ]
    )
    assert 'early stop' in capsys.readouterr().out
    c = ckpt(out)
    assert c['step'] == 8 and c['config']['max_iters'] == 8 and [s for s, _ in c['evals']] == [0, 2, 4, 6, 8]
    assert c['evals'][-1][1] < c['evals'][2][1]  # it was still improving, by less than min_delta
    train.main(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--max_iters',
            8,
            '--eval_interval',
            2,
            '--patience',
            2,
            '--lr',
            3e-3,
            '--min_delta',
            0,
            '--out_dir',
            tmp_path / 'q',
            '--eval_bound',
            'mdlm',
        ]
    )
    # every eval better
    assert 'early stop' not in capsys.readouterr().out and ckpt(tmp_path / 'q')['step'] == 8


def test_patience_stops_a_run_whose_val_bound_stops_improving(data_dir, tmp_path, one_thread, capsys):
    """lr 1e-30 (below float32 resolution): the val bound never improves, so --patience 2 stops at the second
    eval after the first, stores that step as max_iters (a resume stops there too), and repro's train() counts
    the run as finished."""
    import repro

    out = tmp_path / 'p'
    train.main(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--max_iters',
            50,
            '--eval_interval',
            2,
            '--patience',
            2,
            '--lr',
            1e-30,
            '--ema_decay',
            0,
            '--out_dir',
            out,
            '--eval_bound',
            'mdlm',
        ]
    )
    log = capsys.readouterr().out
    assert 'early stop' in log and 'val MDLM bound' in log
    c = ckpt(out)
    assert c['step'] == 4 and c['config']['max_iters'] == 4 and [s for s, _ in c['evals']] == [0, 2, 4]
    # resumed on another val number (DSL's own diffusion bound): a fresh history, so patience counts afresh
    train.main(['--init_from', 'resume', '--out_dir', out, '--max_iters', 6, '--eval_bound', ''])
    assert 'val diffusion bound' in capsys.readouterr().out
    c = ckpt(out)
    assert c['step'] == 6 and [s for s, _ in c['evals']] == [4, 6]
    calls = []
    repro.subprocess.Popen, popen = (lambda *a, **k: calls.append(a)), repro.subprocess.Popen
    try:
        repro.train(str(out), [], 50, 'python', str(tmp_path / 'log'))
    finally:
        repro.subprocess.Popen = popen
    assert calls == []
    r = run(
        SMALL
        + [
            '--data_dir',
            data_dir,
            '--objective',
            'ar',
            '--eval_bound',
            'mdlm',
            '--max_iters',
            1,
            '--out_dir',
            tmp_path / 'ar',
        ]
    )
    assert r.returncode == 2 and 'needs a diffusion model' in r.stderr and r.stderr.count('\n') == 1
