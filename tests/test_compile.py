"""torch.compile on the CPU (inductor): a compiled DSL training step gives eager's loss and gradients,
compiled sampling gives eager's samples, and a compiler that fails leaves the run eager with one line."""

import os
import shutil

import pytest
import torch

import common
import model
import noise
import sample

CXX = os.environ.get('CXX', 'g++')
needs_cxx = pytest.mark.skipif(
    shutil.which(CXX) is None, reason=f"inductor needs a C++ compiler ({CXX} not found)"
)


def dsl_model():
    torch.manual_seed(0)
    m = model.DiT(model.model_config('tiny', 65, dsl=True))
    with torch.no_grad():  # away from the zero-initialised head, so the loss depends on every weight
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def loss_and_grads(m, x, snr):
    m.zero_grad(set_to_none=True)
    loss = noise.loss_fn('dsl', m, x, snr, generator=torch.Generator().manual_seed(1))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in m.parameters() if p.grad is not None]


@needs_cxx
def test_compiled_dsl_step_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path))
    x = torch.randint(0, 65, (4, 16), generator=torch.Generator().manual_seed(0))
    snr = noise.snr_config(65, roar_weight=1.44)  # both forwards: the DSL input and the ROAR token-mode one
    m = dsl_model()
    loss0, g0 = loss_and_grads(m, x, snr)
    lines = []
    common.compile_forward(m, lambda m: loss_and_grads(m, x, snr), log=lines.append)
    assert lines == [] and 'forward' in vars(m)  # compiled, in place
    loss1, g1 = loss_and_grads(m, x, snr)
    assert loss1 == pytest.approx(loss0, rel=1e-5, abs=1e-6)  # float rounding of fused kernels only
    assert len(g0) == len(g1) and all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(g0, g1))
    # compiled sampling: the same samples at the same seed (dynamic shapes: the head's rows change every step)
    draw = lambda m: sample.generate(m, 4, 16, 8, 'uncertainty', generator=torch.Generator().manual_seed(2))[
        0
    ]
    eager = draw(dsl_model())
    m2 = dsl_model()
    common.compile_forward(m2, draw, dynamic=True, log=lines.append)
    assert lines == [] and torch.equal(draw(m2), eager)


def test_a_failing_compiler_falls_back_to_eager_with_one_line():
    def broken(gm, inputs):
        raise RuntimeError("no C++ compiler here\nsecond line of the story")

    m = dsl_model()
    x = torch.randint(0, 65, (2, 8))
    want = m(x=x)
    lines = []
    common.compile_forward(m, lambda m: m(x=x), log=lines.append, backend=broken)
    assert (
        len(lines) == 1
        and lines[0].startswith('torch.compile failed, running eager')
        and '\n' not in lines[0]
    )
    assert 'forward' not in vars(m) and torch.equal(m(x=x), want)  # eager again


def test_train_compile_failure_runs_eager_with_one_line(tmp_path, corpus, monkeypatch, capsys):
    """train.py --compile where the compiler fails on the first step: one line, then the run finishes
    eager."""
    import data
    import train

    def broken(gm, inputs):
        raise RuntimeError("inductor: no working C++ compiler")

    real = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda fn, **kw: real(fn, **kw, backend=broken))
    data.prepare(data=corpus, out_dir=str(tmp_path / 'd'))
    train.main(
        [
            '--data_dir',
            str(tmp_path / 'd'),
            '--preset',
            'tiny',
            '--block_size',
            '16',
            '--batch_size',
            '4',
            '--max_iters',
            '2',
            '--eval_interval',
            '2',
            '--eval_windows',
            '2',
            '--eval_grid',
            '4',
            '--compile',
            'True',
            '--out_dir',
            str(tmp_path / 'out'),
        ]
    )
    out = capsys.readouterr()
    failed = [line for line in (out.out + out.err).splitlines() if 'torch.compile failed' in line]
    assert failed == [
        'torch.compile failed, running eager (RuntimeError: inductor: no working C++ compiler)'
    ], failed
    assert 'done: 2 steps' in out.out and os.path.exists(tmp_path / 'out' / 'ckpt.pt')
