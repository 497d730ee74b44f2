"""
Process, device and compile setup shared by the scripts (nanochat's common.py is the precedent): which device
this machine can run on, DDP under torchrun, and torch.compile with an eager fallback.
"""

import contextlib
import os

import torch
import torch.distributed as dist


def device_error(device):
    """None if this machine can run on `device`, else a one-line reason and fix. The CLIs call it before any
    work, so that a missing GPU is one line, not an assertion deep inside torch."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        return f"unknown device '{device}': use cpu, cuda or cuda:N"
    if d.type == 'cuda':
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = 'this torch has no CUDA support' if torch.version.cuda is None else 'no GPU is visible'
            return f"device '{device}': CUDA is not available on this machine ({why}); use --device cpu"
        if d.index is not None and d.index >= n:
            return f"device '{device}': this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    elif d.type == 'mps' and not torch.backends.mps.is_available():
        return f"device '{device}': MPS is not available on this machine; use --device cpu"
    elif d.type not in ('cpu', 'cuda', 'mps'):
        return f"unknown device '{device}': use cpu, cuda or cuda:N"
    return None


def setup_processes(device='auto'):
    """DDP when torchrun set RANK (docs/method.md §18), else one process. device: auto | cpu | cuda | cuda:N.
    Returns (ddp, rank, world, device, device_type, autocast): under DDP on CUDA, process LOCAL_RANK takes the
    GPU cuda:LOCAL_RANK; on CUDA the forward runs in bfloat16 autocast with TF32 matmuls."""
    ddp = 'RANK' in os.environ
    rank, world = 0, 1
    if ddp:
        rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        dist.init_process_group('nccl' if torch.cuda.is_available() and device != 'cpu' else 'gloo')
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if ddp and device.startswith('cuda'):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    autocast = contextlib.nullcontext()
    if device_type == 'cuda':
        autocast = torch.autocast('cuda', dtype=torch.bfloat16)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return ddp, rank, world, device, device_type, autocast


def compile_forward(m, trial, log=print, **kw):
    """torch.compile m's forward in place (attributes, state_dict, callers unchanged); trial(m) compiles
    it. If that fails (no C++ compiler for inductor, an op a backend lacks), m runs eager and one line says
    why."""
    m.forward = torch.compile(m.forward, **kw)
    try:
        trial(m)
    except Exception as e:
        # the class's eager forward again
        del m.forward
        # dynamo's BackendCompilerFailed wraps the compiler's error
        e = getattr(e, 'inner_exception', None) or e
        first_line = (str(e).strip() or '?').splitlines()[0][:160]
        log(f"torch.compile failed, running eager ({type(e).__name__}: {first_line})")
    return m
