"""
Train a DSL (default), MDLM or autoregressive denoiser (docs/method.md §18). nanoGPT style: one config dict,
a command line generated from it (cli.py), one straight-line loop.

    python train.py                                     # quick start: DSL on shakespeare_char, 2 CPU cores
    python train.py --objective ar --block_size 64 ...  # the autoregressive baseline, same backbone
    python train.py --init_from resume                  # continue out_dir/ckpt.pt exactly
    python train.py --dataset openwebtext --init_from kuleshov-group/mdlm-owt   # DSL fine-tuning of MDLM
    torchrun --standalone --nproc_per_node=8 train.py --dataset openwebtext --preset small --grad_accum 8

Reproducibility: micro-batch g of step s (g = rank * micro_steps + micro, a global index) draws its
windows, its corruption noise and its dropout from seeds derived from (seed, s, g) alone. So the data
position is the step counter, a resumed run replays exactly the batches it would have seen, and a
DDP run over W processes sees the same micro-batches as one process with W times the accumulation.
"""

import contextlib
import copy
import math
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint_io
import cli
import common
import data
import model as M
import noise
from cli import die

# Every key is a command-line flag (cli.py); `python train.py -h` prints this block.
config = dict(
    # data
    dataset='shakespeare_char',  # shakespeare_char | text8 | openwebtext (prepared on first use)
    data='',  # comma-separated local text files; override the dataset's download
    tokenizer='',  # char | gpt2 | bpe:N (byte-level BPE trained on the training split); '' = the
    # dataset's own (gpt2 for openwebtext, else char)
    data_dir='',  # prepared folder; '' = data/<dataset> (data/<file stem>_<tokenizer> for --data)
    # objective and model
    objective='dsl',  # dsl | mdlm | ar
    init_from='scratch',  # scratch | resume (out_dir/ckpt.pt) | an MDLM or train.py checkpoint, or hub id
    trust_checkpoint=False,  # unpickle the checkpoint (--init_from's file, or resume's) in full, which can
    # run code in it: only for files from a source you trust. Else tensors and plain types only
    preset='mini',  # model.PRESETS: tiny (2x64) | mini (4x128) | small (MDLM OWT, 12x768)
    n_layer=None,  # None = the preset's
    n_embd=None,  # None = the preset's
    n_head=None,  # None = the preset's
    noise_dim=0,  # DSL noise-embedding size d; 0 = auto (16 for char, 32 at 2k tokens, 64 for gpt2)
    freeze_noise=False,  # keep the DSL noise embeddings E at their random init
    dropout=0.0,  # 0.1 at paper scale
    lookup_topk=-1,  # DSL soft lookup: -1 auto (dense up to 2048 tokens, else top-64), 0 dense, k top-k
    # mixed corruption for DSL (noise.snr_config); None = the default for this vocabulary size
    gamma_max=None,  # SNR of a revealed token (100, as DSL2); the model's gamma_max too
    gamma_min=None,  # smoothed endpoints: hidden gamma ~ U(0, gamma_min)
    p_end=None,  # fraction of sequences at (smoothed) endpoints
    reveal_floor=None,  # smoothed endpoints: revealed gamma ~ U(reveal_floor gamma_max, gamma_max)
    log_snr_mean=None,  # intermediate sequences: gamma ~ LogNormal(log_snr_mean, log_snr_std)
    log_snr_std=None,  # see log_snr_mean
    jitter=None,  # intermediate sequences: per-token multiplicative SNR jitter
    smooth_endpoints=None,  # smoothed (True) or atomic (False) endpoints
    roar_weight=1.44,  # any-order-AR term's weight (CE at hidden endpoint positions); DSL2's lambda 0.5
    # optimisation
    block_size=64,  # sequence length L (AR: context length)
    batch_size=32,  # sequences per micro-step and process
    grad_accum=0,  # micro-steps per optimizer step, all processes together; 0 = one per process.
    # Global batch = batch_size * grad_accum
    max_iters=3800,  # optimizer steps
    lr=1e-3,  # peak learning rate (3e-4 for fine-tuning MDLM)
    min_lr=1e-4,  # end of the cosine decay
    lr_decay='constant',  # constant | cosine (nanoGPT: to min_lr at max_iters)
    warmup_iters=100,  # linear warmup steps
    weight_decay=0.0,  # AdamW decoupled decay, on matrices only
    beta1=0.9,  # AdamW
    beta2=0.999,  # AdamW
    grad_clip=1.0,  # clip the global gradient norm; 0 = off
    ema_decay=0.999,  # EMA of the weights; 0 = off
    ema_warmup=None,  # decay min(ema_decay, (1+t)/(10+t)); None: on from scratch, off to fine-tune (DSL2)
    # evaluation, logging, checkpoints
    eval_interval=250,  # steps between evaluations (and at the start and end)
    eval_windows=32,  # fixed validation windows (same seed in every run)
    eval_grid=64,  # SNR grid points of the diffusion bound
    eval_ema=True,  # evaluate the EMA weights (the ones sampled) when there are any
    eval_bound='',  # '' = the objective's (DSL diffusion bound, MDLM NELBO, AR NLL); mdlm = NELBO of any
    # diffusion model: one yardstick for MDLM and DSL continuations
    patience=0,  # stop once the val bound has not improved for this many evals (max_iters := that step)
    min_delta=0.0,  # ... improved by more than this (nats), so that a plateau ends the run too
    patience_from=0,  # ... counting evals from this step on (an EMA from loaded weights lags 1/(1-decay))
    log_interval=50,  # steps between log lines
    ckpt_interval=250,  # steps between checkpoints (and at the end)
    out_dir='out',  # checkpoint folder: out_dir/ckpt.pt
    seed=1337,  # model init, batches, noise
    device='auto',  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    compile=True,  # torch.compile the forward (inductor); a compile failure runs eager, with one line
    # test hooks, off by default
    debug_nan_step=-1,  # >= 0: make the loss NaN at this step (tests the non-finite stop)
    debug_kill_step=-1,  # >= 0: SIGKILL this process at this step (tests exact resume)
)
# the keys of the mixed corruption (noise.snr_config)
SNR_KEYS = (
    'gamma_max',
    'gamma_min',
    'p_end',
    'reveal_floor',
    'log_snr_mean',
    'log_snr_std',
    'jitter',
    'smooth_endpoints',
)
# dense bf16 FLOP/s, for the MFU in the log
PEAK_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12, '4090': 165e12}


def main(argv):
    # --- setup: the config (the command line over the defaults, or over a resumed run's), processes, data
    given = cli.parse_args(argv, config)
    cfg = {**config, **given}
    cli.check_paths(cfg)
    # torchrun's rank 0 (RANK is set before any process group)
    master = int(os.environ.get('RANK', 0)) == 0
    log = print if master else (lambda *a, **k: None)
    ckpt_path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    ckpt = None
    if cfg['init_from'] == 'resume':
        cfg, ckpt = resume_config(cfg, given, log)
    # stored resolved; auto: a fine-tune's EMA starts at the loaded weights with no warmup (DSL2)
    if cfg['ema_warmup'] is None:
        cfg['ema_warmup'] = cfg['init_from'] == 'scratch'
    # after the resume: the checkpoint's device counts
    ddp, rank, world, device, device_type, autocast = common.setup_processes(cfg['device'])
    # auto: one micro-step per process, so any number of processes runs; stored resolved, so that a resume
    # replays the same global batches
    if cfg['grad_accum'] == 0:
        cfg['grad_accum'] = world
    if cfg['grad_accum'] % world:
        die(f"grad_accum={cfg['grad_accum']} must be divisible by the number of processes ({world})", 2)
    # the global batch stays batch_size * grad_accum
    micro_steps = cfg['grad_accum'] // world
    if cfg['objective'] == 'dsl' and cfg['roar_weight'] > 0 and cfg['batch_size'] < 2:
        die("--roar_weight > 0 needs --batch_size >= 2: each micro-batch holds ROAR and mixed rows", 2)
    cfg['data_dir'], meta = prepare_data(cfg, ddp, master)
    V, L = meta['vocab_size'], cfg['block_size']

    # --- the model, the SNR sampler, the EMA and the optimizer (restored when resuming)
    raw = build_model(cfg, ckpt, V, log)
    # one gamma_max for the model and the SNR sampler
    cfg['gamma_max'] = raw.config['gamma_max']
    snr_overrides = {k: cfg[k] for k in SNR_KEYS if cfg[k] is not None}
    snr = noise.snr_config(V, **snr_overrides, roar_weight=cfg['roar_weight'])
    raw.to(device)
    ema = None
    if master and cfg['ema_decay'] > 0:
        ema = copy.deepcopy(raw).requires_grad_(False).eval()
    params, opt = build_optimizer(raw, cfg, device_type)
    step, best_val, evals = 0, float('inf'), []
    if ckpt is not None:
        step, best_val, evals = restore(ckpt, opt, ema, device_type)
        # resumed on another val number: its own history (what --patience counts)
        if ckpt['config'].get('eval_bound', '') != cfg['eval_bound']:
            best_val, evals = float('inf'), []
    # the CPU copy of the weights and moments, no longer needed
    del ckpt
    # in place: checkpoints and the EMA copy above are unchanged
    if cfg['compile']:
        compile_model(raw, opt, cfg, snr, V, device, log)
    model = wrap_ddp(raw, device_type) if ddp else raw
    eval_model = ema if ema is not None and cfg['eval_ema'] else raw

    # --- evaluation and logging: fixed validation windows (N, L), the same in every run
    val_x = None
    if master:
        val_rng = np.random.default_rng(1234)
        val_x = data.get_batch(cfg['data_dir'], 'val', cfg['eval_windows'], L, val_rng, meta['dtype'], device)
    bound = cfg['eval_bound'] or cfg['objective']
    if bound == 'mdlm' and cfg['objective'] == 'ar':
        die("--eval_bound mdlm needs a diffusion model (--objective dsl or mdlm)", 2)
    bound_name = dict(dsl='diffusion bound', mdlm='MDLM bound', ar='NLL')[bound]
    tokens_per_step = cfg['batch_size'] * cfg['grad_accum'] * L
    n_params = raw.num_params()
    # PaLM appendix B
    flops_per_token = 6 * n_params + 12 * raw.config['n_layer'] * raw.config['n_embd'] * L
    peak = peak_flops(device, device_type)
    log(f"config: {cfg}")
    log(
        f"data: {cfg['data_dir']} ({meta['tokenizer']}, V={V}, {meta['train_tokens']:,} train tokens) | "
        f"model: {n_params / 1e6:.2f}M params, {cfg['objective']} | {world} process(es) on {device} | "
        f"global batch {cfg['batch_size'] * cfg['grad_accum']} x {L} tokens"
    )
    os.makedirs(cfg['out_dir'], exist_ok=True)
    save = make_save(ckpt_path, raw, ema, opt, cfg, snr, meta, device_type, evals)
    # Ctrl-C finishes the current step, saves and exits, so an interruption loses nothing: stop is non-empty
    # once pressed
    stop = catch_ctrl_c(log)
    # No host-device synchronisation in the hot loop (CUDA then runs ahead, so the next batch is read from
    # disk while the GPU computes): the first non-finite step is kept on the device and read only at log,
    # eval and checkpoint steps, before anything is saved, so a bad step never reaches a checkpoint.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    start_step = step
    last_saved = step
    t_log = time.time()
    n_log = 0
    stop_all = False

    while True:
        # before an eval or a checkpoint, every rank stops if a step so far was non-finite (the ranks see the
        # same all-reduced loss and gradients)
        if step % cfg['eval_interval'] == 0 or step % cfg['ckpt_interval'] == 0 or step == cfg['max_iters']:
            check_finite(first_bad, ckpt_path, last_saved, ddp, master)

        # --- evaluate (rank 0) on the validation windows; --patience may end the run here
        if master and (step % cfg['eval_interval'] == 0 or step == cfg['max_iters']):
            t = time.time()
            nats = noise.val_bound(eval_model, val_x, bound, cfg['batch_size'], cfg['eval_grid'])
            best_val = min(best_val, nats)
            evals.append((step, nats))
            r = noise.bound_report(nats)
            log(
                f"eval step {step} | val {bound_name} {nats:.4f} nats/token ({r['bits']:.4f} bits, "
                f"ppl {r['ppl']:.2f}) | {time.time() - t:.1f}s",
                flush=True,
            )
            # keep eval time out of ms/step
            t_log += time.time() - t
            if patience_ran_out(evals, cfg) and step < cfg['max_iters']:
                log(
                    f"early stop: no better val {bound_name} in {cfg['patience']} evals; "
                    f"max_iters set to {step}"
                )
                # stored: a resume stops here too unless given a larger --max_iters
                cfg['max_iters'] = step
        if ddp and cfg['patience'] and step % cfg['eval_interval'] == 0:
            cfg['max_iters'] = max_iters_of_rank_0(cfg['max_iters'])

        # --- checkpoint (rank 0), then stop at max_iters or after a Ctrl-C
        if master and step > start_step and (step % cfg['ckpt_interval'] == 0 or step == cfg['max_iters']):
            save(step, best_val)
            last_saved = step
        if step >= cfg['max_iters'] or stop_all:
            if stop_all and master and last_saved != step:
                save(step, best_val)
                log(f"saved {ckpt_path} at step {step}; continue with --init_from resume")
            break
        debug_kill(step, cfg)

        # --- one optimizer step over micro_steps micro-batches; DDP syncs only on the last (forward included)
        lr = get_lr(step, cfg)
        loss_sum = torch.zeros((), device=device)
        for micro in range(micro_steps):
            # micro-batch gidx of the global batch: its windows, noise and dropout from (seed, step, gidx)
            gidx = rank * micro_steps + micro
            rng, noise_seed, drop_seed = micro_seeds(cfg['seed'], step, gidx)
            x = data.get_batch(cfg['data_dir'], 'train', cfg['batch_size'], L, rng, meta['dtype'], device)
            gen = torch.Generator(device).manual_seed(noise_seed)
            torch.manual_seed(drop_seed)
            sync = model.no_sync() if ddp and micro < micro_steps - 1 else contextlib.nullcontext()
            with sync:
                with autocast:
                    # MDLM's antithetic t is stratified over the global batch: gidx of grad_accum slices
                    loss = noise.loss_fn(
                        cfg['objective'],
                        model,
                        x,
                        snr,
                        rank=gidx,
                        world_size=cfg['grad_accum'],
                        generator=gen,
                    )
                    loss = loss / micro_steps
                loss = debug_nan(loss, step, cfg)
                loss.backward()
            loss_sum += loss.detach()
        # the global mean loss, for logging (queued on the stream; nothing waits for it here)
        if ddp:
            dist.all_reduce(loss_sum)
            loss_sum /= world
        max_norm = cfg['grad_clip'] if cfg['grad_clip'] > 0 else float('inf')
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        first_bad = note_nonfinite(first_bad, step, loss_sum, gnorm)
        for group in opt.param_groups:
            group['lr'] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
        # ema <- d ema + (1 - d) w, with the warmup d = min(decay, (1+t)/(10+t))
        if ema is not None:
            d = cfg['ema_decay']
            if cfg['ema_warmup']:
                d = min(d, (1 + step) / (10 + step))
            torch._foreach_lerp_(list(ema.parameters()), list(raw.parameters()), 1 - d)
        step += 1
        n_log += 1
        # a host-side flag: free to read every step (DDP: the ranks agree at log steps, below)
        stop_all = bool(stop) and not ddp

        # --- log (the one host-device synchronisation of the loop)
        if step % cfg['log_interval'] == 0 or step == cfg['max_iters']:
            check_finite(first_bad, ckpt_path, last_saved, ddp, master)
            lossf, gnorm = loss_sum.item(), gnorm.item()
            if ddp:
                stop_all = any_rank_stopped(stop, device)
            # the mean over the interval
            dt = (time.time() - t_log) / n_log
            t_log = time.time()
            n_log = 0
            mfu = f" | MFU {flops_per_token * tokens_per_step / dt / (peak * world):.1%}" if peak else ''
            log(
                f"step {step} | loss {lossf:.4f} | lr {lr:.2e} | grad norm {gnorm:.3f} | "
                f"{dt * 1000:.1f} ms/step | {tokens_per_step / dt:,.0f} tok/s{mfu}",
                flush=True,
            )

    mem = ''
    if device_type == 'cuda':
        mem = f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    log(f"done: {step} steps, best val {bound_name} {best_val:.4f} nats/token, checkpoint {ckpt_path}{mem}")
    # wait for rank 0's last save: a gloo peer torn down early can abort the other (seen in CI)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The schedule and the seeds


def get_lr(step, cfg):
    """Linear warmup, then constant or cosine decay to min_lr at max_iters (nanoGPT)."""
    if step < cfg['warmup_iters']:
        return cfg['lr'] * (step + 1) / (cfg['warmup_iters'] + 1)
    if cfg['lr_decay'] == 'constant':
        return cfg['lr']
    ratio = min(1.0, (step - cfg['warmup_iters']) / max(1, cfg['max_iters'] - cfg['warmup_iters']))
    return cfg['min_lr'] + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg['lr'] - cfg['min_lr'])


def micro_seeds(seed, step, g):
    """Everything random in micro-batch g of a step comes from here: (numpy rng for windows, noise seed,
    dropout seed). A pure function of (seed, step, g): no state to save, identical under DDP."""
    rng = np.random.default_rng([seed, step, g])
    return rng, int(rng.integers(2**62)), int(rng.integers(2**62))


# ---------------------------------------------------------------------------------------------
# Setup: resume, data, model, optimizer, compile, DDP, checkpoints


def resume_config(cfg, given, log):
    """--init_from resume: out_dir/ckpt.pt (on the CPU, whatever device wrote it) and its config, with this
    command line's keys on top (e.g. a larger max_iters). Returns (cfg, ckpt)."""
    path = os.path.join(cfg['out_dir'], 'ckpt.pt')
    if not os.path.isfile(path):
        die(
            f"no checkpoint at {path} to resume from (train with --init_from scratch first, or set --out_dir)"
        )
    try:
        ckpt = checkpoint_io.load(path, cfg['trust_checkpoint'])
        missing = [k for k in ('model', 'model_config', 'optimizer', 'config', 'step') if k not in ckpt]
    except checkpoint_io.Refused as e:
        die(e)
    except Exception as e:
        die(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); "
            f"delete it, or resume from a copy"
        )
    if missing:
        die(f"checkpoint {path} is not a train.py checkpoint (missing {', '.join(missing)})")
    # an older checkpoint stores the SNR keys under their old names (mu, sigma, c)
    stored = noise.new_snr_keys(ckpt['config'])
    cfg = {**config, **stored, **given}
    # None: a checkpoint from before the key (it warmed up)
    cfg['ema_warmup'] = cfg['ema_warmup'] is not False
    overriding = f", overriding {sorted(given)}" if given else ''
    log(f"resuming {path} at step {ckpt['step']}{overriding}")
    # a run started with --device cuda stored that device; moved to a machine without it (a CPU-only one),
    # the weights load to the CPU anyway (map_location), so run where auto points unless told otherwise
    if 'device' not in given and cfg['device'] != 'auto' and common.device_error(cfg['device']):
        log(f"the checkpoint's device {cfg['device']} is not available on this machine; using device auto")
        cfg['device'] = 'auto'
    return cfg, ckpt


def prepare_data(cfg, ddp, master):
    """data.ensure: rank 0 prepares the data (download, tokenize) while the others wait. Returns (data_dir,
    meta)."""
    if master:
        data_dir, meta = data.ensure(cfg['dataset'], cfg['data'], cfg['tokenizer'], cfg['data_dir'])
    if ddp:
        dist.barrier()
        if not master:
            data_dir, meta = data.ensure(cfg['dataset'], cfg['data'], cfg['tokenizer'], cfg['data_dir'])
    return data_dir, meta


def build_model(cfg, ckpt, V, log):
    """The raw model, on the CPU: the checkpoint's when resuming, else a new one of --preset (scratch), else
    --init_from's (an MDLM or train.py checkpoint, or a hub id). It must fit the data and --objective."""
    # the same init on every rank
    torch.manual_seed(cfg['seed'])
    dsl, ar = cfg['objective'] == 'dsl', cfg['objective'] == 'ar'
    if ckpt is not None:
        raw = M.DiT(ckpt['model_config'])
        raw.load_state_dict(ckpt['model'])
    elif cfg['init_from'] == 'scratch':
        gamma_max = cfg['gamma_max'] or noise.snr_config(V)['gamma_max']
        shape = {k: cfg[k] for k in ('n_layer', 'n_embd', 'n_head') if cfg[k] is not None}
        try:
            raw = M.DiT(
                M.model_config(
                    cfg['preset'],
                    V,
                    dropout=cfg['dropout'],
                    causal=ar,
                    dsl=dsl,
                    noise_dim=cfg['noise_dim'],
                    gamma_max=gamma_max,
                    lookup_topk=cfg['lookup_topk'],
                    freeze_noise=cfg['freeze_noise'],
                    **shape,
                )
            )
        except ValueError as e:
            die(str(e), 2)
    else:
        # MDLM (safetensors / Lightning) or one of ours; DSL keeps every backbone weight (model.load_mdlm).
        # gamma_max, noise_dim: the command line's, else the checkpoint's / auto
        extra = {k: cfg[k] for k in ('gamma_max', 'noise_dim') if cfg[k]}
        try:
            raw = M.load_mdlm(
                cfg['init_from'],
                dsl=dsl,
                dropout=cfg['dropout'],
                causal=ar,
                freeze_noise=cfg['freeze_noise'],
                lookup_topk=cfg['lookup_topk'],
                trust=cfg['trust_checkpoint'],
                **extra,
            )
        except (KeyError, ValueError, FileNotFoundError) as e:
            # a missing file, mismatched keys or shapes: the message says which
            die(f"cannot initialise from {cfg['init_from']}: {e.args[0] if e.args else e}")
        except Exception as e:
            die(
                f"cannot read --init_from {cfg['init_from']}: "
                f"corrupt or not a checkpoint ({type(e).__name__})"
            )
        log(f"initialised from {cfg['init_from']}" + (' (converted to DSL)' if dsl else ''))
    if raw.vocab_size != V:
        die(f"the model's vocabulary ({raw.vocab_size}) does not match the data's ({V}, {cfg['data_dir']})")
    if raw.dsl != dsl or raw.config['causal'] != ar:
        die(
            f"the checkpoint's model (dsl={raw.dsl}, causal={raw.config['causal']}) does not fit "
            f"--objective {cfg['objective']}"
        )
    return raw


def build_optimizer(raw, cfg, device_type):
    """AdamW, weight decay on matrices only (nanoGPT); the fused kernel on CUDA. Returns (params, opt)."""
    # frozen DSL noise embeddings stay out
    params = [p for p in raw.parameters() if p.requires_grad]
    groups = [
        dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg['weight_decay']),
        dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0),
    ]
    betas = (cfg['beta1'], cfg['beta2'])
    opt = torch.optim.AdamW(groups, lr=cfg['lr'], betas=betas, fused=device_type == 'cuda')
    return params, opt


def restore(ckpt, opt, ema, device_type):
    """Resume the optimizer moments, the EMA weights and the global RNG streams. Returns (step, best_val,
    evals)."""
    # fused is a choice of this machine, not state: a CUDA run's fused=True would otherwise come back with
    # the groups. Set before loading, because load_state_dict places the step counters by it (fused: on the
    # device)
    groups = [
        dict(g, fused=opt.defaults['fused']) if 'fused' in g else g for g in ckpt['optimizer']['param_groups']
    ]
    opt.load_state_dict(dict(ckpt['optimizer'], param_groups=groups))
    if ema is not None:
        ema.load_state_dict(ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model'])
    # batches and noise are reseeded per micro-step; these cover everything else
    if ckpt.get('rng'):
        checkpoint_io.set_rng_state(ckpt['rng'], device_type == 'cuda')
    return ckpt['step'], ckpt.get('best_val', float('inf')), list(ckpt.get('evals', []))


def compile_model(raw, opt, cfg, snr, V, device, log):
    """torch.compile raw's forward in place (common.compile_forward): one training step on random tokens
    compiles it, its gradients then cleared. A compile failure leaves raw eager, with one line."""
    trial_x = torch.randint(0, V, (cfg['batch_size'], cfg['block_size']), device=device)

    def trial(m):
        gen = torch.Generator(device).manual_seed(0)
        noise.loss_fn(cfg['objective'], m, trial_x, snr, generator=gen).backward()
        opt.zero_grad(set_to_none=True)

    common.compile_forward(raw, trial, log)


def wrap_ddp(raw, device_type):
    """raw in DDP, with the attributes noise.loss_fn reads from a model forwarded to raw's. broadcast_buffers
    off: the only buffer (rotary inv_freq) is constant."""
    device_ids = [int(os.environ['LOCAL_RANK'])] if device_type == 'cuda' else None
    model = DDP(raw, device_ids=device_ids, broadcast_buffers=False)
    for name in ('E', 'endpoint_z', 'vocab_size', 'mask_id', 'dsl', 'config'):
        setattr(model, name, getattr(raw, name))
    return model


def peak_flops(device, device_type):
    """This GPU's dense bf16 FLOP/s (PEAK_FLOPS), None when unknown or on the CPU: then no MFU is logged."""
    if device_type != 'cuda':
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def make_save(path, raw, ema, opt, cfg, snr, meta, device_type, evals):
    """save(step, best_val) writes all an exact resume needs (and sample.py reads); evals: [(step, val
    bound)]."""

    def save(step, best_val):
        # the global RNG streams as tensors and plain types, as all of the file: it loads with
        # weights_only=True
        rng = checkpoint_io.rng_state(device_type == 'cuda')
        state = dict(
            model=raw.state_dict(),
            ema=ema.state_dict() if ema is not None else None,
            model_config=raw.config,
            optimizer=opt.state_dict(),
            config=cfg,
            snr_config=snr,
            meta=meta,
            step=step,
            best_val=best_val,
            rng=rng,
            data=dict(seed=cfg['seed'], step=step),
            evals=evals,
        )
        # then os.replace: a kill during the write never leaves a torn ckpt.pt
        torch.save(state, path + '.tmp')
        os.replace(path + '.tmp', path)

    return save


# ---------------------------------------------------------------------------------------------
# The loop's machinery: the non-finite stop, --patience, Ctrl-C, the test hooks


def note_nonfinite(first_bad, step, loss, gnorm):
    """first_bad (a device scalar, -1 while every step was finite) := step if this step's loss or gradient
    norm is not finite and no earlier one was. No host-device synchronisation."""
    finite = torch.isfinite(loss) & torch.isfinite(gnorm)
    return torch.where((first_bad < 0) & ~finite, step, first_bad)


def check_finite(first_bad, ckpt_path, last_saved, ddp, master):
    """Stop (exit 1) if any step so far was non-finite; reading first_bad synchronises with the device."""
    bad = int(first_bad)
    if bad < 0:
        return
    if os.path.exists(ckpt_path):
        kept = f"last good checkpoint {ckpt_path} (step {last_saved}) left untouched"
    else:
        kept = "no checkpoint was written yet"
    if ddp:
        dist.destroy_process_group()
    if master:
        die(f"non-finite loss or gradient at step {bad}; stopped, {kept}")
    sys.exit(1)


def patience_ran_out(evals, cfg):
    """--patience: have the last `patience` evals brought nothing better? The best is the last counted eval
    (at a step >= patience_from) that beat every earlier one by more than min_delta. evals: [(step, val)]."""
    if not cfg['patience']:
        return False
    best_at, best = len(evals) - 1, math.inf
    for i, (at, val) in enumerate(evals):
        if at >= cfg['patience_from'] and val < best - cfg['min_delta']:
            best_at, best = i, val
    return len(evals) - 1 - best_at >= cfg['patience']


def max_iters_of_rank_0(max_iters):
    """DDP: every rank stops where rank 0's --patience did."""
    box = [max_iters]
    dist.broadcast_object_list(box, 0)
    return box[0]


def catch_ctrl_c(log):
    """The first Ctrl-C appends to the returned list (the loop then saves and exits); a second one aborts."""
    stop = []

    def on_sigint(sig, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(sig)
        log("interrupted: finishing this step, then saving (Ctrl-C again to abort)", flush=True)

    signal.signal(signal.SIGINT, on_sigint)
    return stop


def any_rank_stopped(stop, device):
    """DDP: every rank stops if any was interrupted (Ctrl-C reaches them at different moments)."""
    flag = torch.tensor(float(bool(stop)), device=device)
    dist.all_reduce(flag)
    return bool(flag > 0)


def debug_kill(step, cfg):
    """Test hook (--debug_kill_step): SIGKILL this process at that step, as a crash would (exact resume)."""
    if step == cfg['debug_kill_step']:
        os.kill(os.getpid(), signal.SIGKILL)


def debug_nan(loss, step, cfg):
    """Test hook (--debug_nan_step): the loss made NaN at that step (the non-finite stop)."""
    if step == cfg['debug_nan_step']:
        return loss * float('nan')
    return loss


if __name__ == '__main__':
    main(sys.argv[1:])
