"""
Throughput: (a) training forward+backward tokens/s, token mode (MDLM loss) vs DSL mode (mixed-corruption loss
through the converter), with MFU on CUDA; (b) sampling samples/s at batch 1 vs 32 and the share of the step
time spent outside the model forward (the sampler's own overhead). Prints a small table.

    python bench.py                                   # preset mini, char vocab 65, L = 256, CPU
    python bench.py --preset small --vocab 50257 --block_size 1024 --batch 16 --device cuda --compile
    bash bench_gpu.sh                                 # the GPU measurement, JSON (--cpu-smoke: tiny, CPU)

MFU = 6 N tokens/s / peak (N = parameters outside the embedding table, whose lookup has no flops; attention
flops and the DSL converter's soft lookup are not counted, so DSL's extra cost shows up as lower MFU).
"""

import argparse
import contextlib
import json
import math
import time

import torch

import common
import model as modellib
import noise
import reference
import sample


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def timed(fns, iters, warmup, reps, device):
    """Seconds per call of each fn: warm-up, then `reps` interleaved rounds of `iters` calls, best round kept
    (interleaving and the minimum make the comparison robust to other load on the machine)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [math.inf] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            sync(device)
            best[i] = min(best[i], (time.perf_counter() - t0) / iters)
    return best


@torch.no_grad()
def weights(DiT, cfg):
    """The same weights on every call: the seeded init, perturbed (the zero-initialised adaLN gates and head
    make an untrained model's output constant, so a loss or sample comparison would prove nothing)."""
    torch.manual_seed(0)
    m = DiT(cfg)
    for p in m.parameters():
        p.add_(0.02 * torch.randn_like(p))
    return m


def train_step(args, mode, amp, compiled=False):
    """A closure running one forward+backward of `mode` (mdlm, dsl, dsl-dense, dsl-topk, dsl-two-pass or ar)
    on a fixed random batch, the model, and the loss at a fixed noise seed (the same weights for every
    `compiled`: a comparison of losses). dsl uses the model's default soft lookup (top-k above 2048 tokens),
    dsl-dense the exact dense one, dsl-topk the top-64 one at any vocabulary; dsl-two-pass times
    reference.dsl_loss, the objective with a second forward for the ROAR term (what noise.dsl_loss estimates
    in one)."""
    objective = mode.split('-')[0]
    extra = dict(lookup_topk=0) if mode == 'dsl-dense' else dict(lookup_topk=64) if mode == 'dsl-topk' else {}
    cfg = modellib.model_config(
        args.preset, args.vocab, dsl=objective == 'dsl', causal=objective == 'ar', **extra
    )
    m = weights(modellib.DiT, cfg).to(args.device).train()
    snr = noise.snr_config(args.vocab, roar_weight=args.roar_weight)
    g = torch.Generator(args.device).manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.block_size), device=args.device, generator=g)

    def loss(m, generator):
        if mode == 'dsl-two-pass':  # the objective written plainly: a second forward for the ROAR term
            return reference.dsl_loss(m, x, snr, args.roar_weight, generator)
        return noise.loss_fn(objective, m, x, snr, generator=generator)

    def step(m=m):
        with amp:
            value = loss(m, g)
        value.backward()
        m.zero_grad(set_to_none=True)

    def loss_at_seed():
        with amp:
            return loss(m, torch.Generator(args.device).manual_seed(1)).item()

    if compiled:  # the first step compiles (in the warm-up, not timed)
        common.compile_forward(m, step)
    return step, m, loss_at_seed


def saved_bytes(step, m):
    """Bytes of activations autograd keeps for the backward of one step (weights excluded): the memory a
    training step needs beyond weights, gradients and optimizer state, measured on any device."""
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def bench_train(args, amp):
    """One row per mode (and per mode compiled, with --compile: the two timed interleaved in one run)."""
    runs = [
        (mode, c)
        for mode in args.modes.split(',')
        if mode
        for c in ([False, True] if args.compile else [False])
    ]
    steps, models, losses = zip(*[train_step(args, mode, amp, c) for mode, c in runs])
    rows, cuda, tokens = [], args.device.startswith('cuda'), args.batch * args.block_size
    for (mode, c), step, m, loss, dt in zip(
        runs, steps, models, losses, timed(steps, args.iters, args.warmup, args.reps, args.device)
    ):
        n = m.num_params() - m.vocab_embed.embedding.numel()
        mfu = 6 * n * tokens / dt / args.peak_flops if cuda else None
        if cuda:  # the real peak of one step, everything included (weights, grads, activations, workspace)
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if cuda else None
        act = saved_bytes(step, m) if args.memory else None
        rows.append(
            dict(
                mode=mode,
                compiled=c,
                ms=1e3 * dt,
                tok_s=tokens / dt,
                mfu=mfu,
                params=m.num_params(),
                peak_gb=peak / 2**30 if peak else None,
                act_kb_per_token=act / tokens / 2**10 if act else None,
                loss=loss(),
            )
        )
    return rows


def bench_sample(args, sampler, batch, amp, compiled=False):
    """Samples/s of one (sampler, batch), and the samples of the first timed round (the same weights and seed
    for every `compiled`: a comparison of samples)."""
    ar = sample.sampler_name(sampler) == 'ar'  # needs a causal model; the others a diffusion one
    dsl = not ar and (sample.sampler_name(sampler) in sample.DSL_ONLY or args.sample_mode == 'dsl')
    m = weights(modellib.DiT, modellib.model_config(args.preset, args.vocab, dsl=dsl, causal=ar)).to(
        args.device
    )
    warm = lambda m: sample.generate(m, batch, args.block_size, 2, sampler)
    with amp:
        common.compile_forward(m, warm, dynamic=True) if compiled else warm(
            m
        )  # the head's rows change every step
        best, first = None, None
        for _ in range(args.reps):  # best of reps: the least disturbed by other processes
            x, info = sample.generate(
                m,
                batch,
                args.block_size,
                args.steps,
                sampler,
                generator=torch.Generator(args.device).manual_seed(0),
            )
            first = x if first is None else first
            best = info if best is None or info['total_s'] < best['total_s'] else best
    return dict(
        sampler=sampler,
        batch=batch,
        compiled=compiled,
        samples_s=batch / best['total_s'],
        nfe_s=best['calls'] / best['total_s'],
        ms_step=1e3 * best['total_s'] / best['calls'],
        outside=1 - best['model_s'] / best['total_s'],
    ), first


@torch.no_grad()
def lookup_error(args):
    """The top-k soft lookup against the dense one on one DSL checkpoint and held-out windows, at the states
    training uses (noise.sample_gamma) with the same noise for every k: the mass outside the top k, the
    relative error of h, and the change of the DSL training loss and of the diffusion bound. Prints a
    table."""
    import numpy as np

    import data

    # keys or shapes that do not fit, or a file that needs --trust_checkpoint: one line, as ap.error writes it
    try:
        m = modellib.load_mdlm(args.lookup_error, trust=args.trust_checkpoint).to(args.device).eval()
    except (KeyError, ValueError) as e:
        raise SystemExit(f"bench.py: error: {e.args[0] if e.args else e}")
    meta = data.load_meta(args.data)
    x = data.get_batch(
        args.data, 'val', args.batch, args.block_size, np.random.default_rng(0), meta['dtype'], args.device
    )  # (B, L)
    snr = noise.snr_config(m.vocab_size, gamma_max=m.config['gamma_max'])
    gamma = noise.sample_gamma(*x.shape, snr, x.device, torch.Generator(args.device).manual_seed(1))[0]
    z = noise.localize(m.E()[x], gamma, torch.Generator(args.device).manual_seed(2))  # (B, L, d)
    p = m.converter(z)  # (B, L, V+1) dense probabilities, for the dropped mass
    trained_k, rows = m.config['lookup_topk'], []
    for k in [0] + [int(k) for k in args.topk.split(',')]:
        m.config['lookup_topk'] = k
        h = m.embed(z=z)
        logits = m(z=z)[..., : m.vocab_size]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x.flatten()).item()
        # the diffusion bound at every cut-off g*: its minimum, and the full path (g* = g_end), which
        # integrates the mmse through every SNR (the minimum can sit at g* = 0 for a weak model and then sees
        # no lookup)
        cum, nll = noise.path_integral(
            m,
            x,
            noise.snr_grid(4 * m.config['gamma_max'], args.grid),
            torch.Generator(args.device).manual_seed(3),
        )
        per_cut = (cum + nll).mean(1) / x.shape[1]  # (S,)
        bound, full = per_cut.min().item(), per_cut[-1].item()
        if k == 0:
            h0, loss0, bound0, full0 = h, loss, bound, full
        r = 1 - p[..., : m.vocab_size].topk(k, -1).values.sum(-1) - p[..., -1] if k else torch.zeros(1)
        rows.append(
            (
                k,
                r.mean().item(),
                r.max().item(),
                ((h - h0).norm(dim=-1) / h0.norm(dim=-1)).mean().item(),
                loss,
                loss - loss0,
                bound,
                bound - bound0,
                full,
                full - full0,
            )
        )
    m.config['lookup_topk'] = trained_k
    print(
        f"soft lookup vs dense on {args.lookup_error} (trained with lookup_topk={trained_k}), "
        f"{x.numel()} held-out tokens of {args.data}, training's SNR mixture; "
        f"bound on a {args.grid}-point grid"
    )
    print(
        f"{'k':>5} {'tail mass':>10} {'max':>7} {'|dh|/|h|':>9} {'DSL loss':>9} {'change':>8} {'bound':>8} "
        f"{'change':>8}"
        f" {'full path':>9} {'change':>8}"
    )
    for k, rm, rx, dh, lo, dlo, b, db, f, df in rows:
        print(
            f"{k if k else 'dense':>5} {rm:>10.4f} {rx:>7.3f} {dh:>9.4f} {lo:>9.4f} {dlo:>+8.4f} {b:>8.4f} "
            f"{db:>+8.4f}"
            f" {f:>9.4f} {df:>+8.4f}"
        )
    return rows


def check_args(ap, args):
    """Every argument before any model is built: a mistake is one line (ap.error), not a traceback minutes
    in."""
    for k in ('vocab', 'block_size', 'batch', 'iters', 'reps', 'steps'):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1, got {getattr(args, k)}")
    for k in ('warmup', 'threads'):
        if getattr(args, k) < 0:
            ap.error(f"--{k} must be >= 0, got {getattr(args, k)}")
    if not args.peak_flops > 0:
        ap.error(f"--peak_flops must be > 0, got {args.peak_flops}")
    if err := common.device_error(args.device):
        ap.error(err)
    modes = ('mdlm', 'dsl', 'dsl-dense', 'dsl-topk', 'dsl-two-pass', 'ar')
    bad = [m for m in args.modes.split(',') if m and m not in modes]
    if bad:
        ap.error(f"--modes: unknown mode '{bad[0]}': choose from {', '.join(modes)}")
    if args.lookup_error and not args.data:
        ap.error("--lookup_error needs --data, the prepared folder whose val.bin it reads")
    for s in args.samplers.split(','):
        try:
            s and sample.sampler_name(s)
        except ValueError as e:
            ap.error(f"--samplers: {e}")
    if not all(b.isdigit() and int(b) >= 1 for b in args.sample_batches.split(',')):
        ap.error(f"--sample_batches expects comma-separated batch sizes >= 1, got '{args.sample_batches}'")


def main(argv=None):
    ap = argparse.ArgumentParser(description='training and sampling throughput (tokens/s, MFU, samples/s)')
    ap.add_argument('--preset', default='mini', choices=sorted(modellib.PRESETS))
    ap.add_argument('--vocab', type=int, default=65, help='V (65: shakespeare_char, 50257: GPT-2)')
    ap.add_argument('--block_size', type=int, default=256, help='sequence length L')
    ap.add_argument('--batch', type=int, default=32, help='training batch')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--iters', type=int, default=10, help='timed training iterations')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--reps', type=int, default=3, help='timed rounds; the best is reported')
    ap.add_argument(
        '--peak_flops', type=float, default=989e12, help='peak bf16 flop/s (H100 SXM dense: 989e12)'
    )
    ap.add_argument(
        '--compile',
        action='store_true',
        help='also time every row with the forward torch.compiled (inductor), and print the speed-up',
    )
    ap.add_argument('--roar_weight', type=float, default=0.0, help="dsl modes: the ROAR term's weight")
    ap.add_argument(
        '--memory', action='store_true', help='also measure the activations kept for the backward'
    )
    ap.add_argument('--json', default='', help='also write the results to this JSON file')
    ap.add_argument(
        '--lookup_error',
        default='',
        metavar='CKPT',
        help='instead of timing: the top-k soft lookup against the dense one on this DSL checkpoint',
    )
    ap.add_argument(
        '--trust_checkpoint',
        action='store_true',
        help='unpickle --lookup_error in full, which can run code in it: only for files from a source '
        'you trust',
    )
    ap.add_argument('--data', default='', help='--lookup_error: prepared data folder (its val.bin)')
    ap.add_argument(
        '--topk', default='16,64,256', help='--lookup_error: the k to compare with the dense lookup'
    )
    ap.add_argument(
        '--grid', type=int, default=32, help='--lookup_error: SNR grid points of the diffusion bound'
    )
    ap.add_argument(
        '--modes',
        default='mdlm,dsl',
        help='training modes to time (mdlm, dsl, dsl-dense, dsl-topk, dsl-two-pass, ar)',
    )
    ap.add_argument('--samplers', default='mdlm,uncertainty', help="samplers to time ('' skips sampling)")
    ap.add_argument('--sample_batches', default='1,32')
    ap.add_argument('--steps', type=int, default=32, help='sampling steps (NFE) per sample')
    ap.add_argument(
        '--sample_mode', default='dsl', choices=['dsl', 'mdlm'], help='model for token-mode samplers'
    )
    ap.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    ap.error = lambda msg: ap.exit(2, f"bench.py: error: {msg}\n")  # one line, no usage dump
    args = ap.parse_args(argv)
    check_args(ap, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lookup_error:
        return lookup_error(args)
    cuda = args.device.startswith('cuda')
    amp = torch.autocast('cuda', dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    name = torch.cuda.get_device_name() if cuda else f'cpu, {torch.get_num_threads()} threads'
    print(
        f"bench: preset {args.preset}, V={args.vocab}, L={args.block_size}, device {args.device} ({name}), "
        f"torch {torch.__version__}{', bf16 autocast' if cuda else ', fp32'}"
        f"{', eager and compiled (inductor)' if args.compile else ''}"
    )
    rows = bench_train(args, amp) if args.modes else []
    if rows:
        roar = f", roar_weight {args.roar_weight}" if args.roar_weight else ''
        print(
            f"\ntraining fwd+bwd, batch {args.batch} x {args.block_size}, {rows[0]['params'] / 1e6:.2f}M "
            f"params{roar}"
        )
        print(
            f"{'mode':<12} {'compiled':>8} {'ms/iter':>9} {'tokens/s':>11} {'vs first':>9} {'vs eager':>9} "
            f"{'MFU':>7} "
            f"{'peak GB':>8} {'act KB/tok':>10} {'loss':>9}"
        )
        eager = {r['mode']: r for r in rows if not r['compiled']}
        for r in rows:
            mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] is not None else '-'
            peak = f"{r['peak_gb']:.1f}" if r['peak_gb'] is not None else '-'
            act = f"{r['act_kb_per_token']:.1f}" if r['act_kb_per_token'] is not None else '-'
            r['speedup'] = eager[r['mode']]['ms'] / r['ms']  # eager time / this row's time
            print(
                f"{r['mode']:<12} {'yes' if r['compiled'] else 'no':>8} {r['ms']:>9.1f} {r['tok_s']:>11,.0f} "
                f"{r['tok_s'] / rows[0]['tok_s']:>9.2f} {r['speedup']:>9.2f} {mfu:>7} {peak:>8} {act:>10} "
                f"{r['loss']:>9.5f}"
            )
        if args.compile:  # the same weights, batch and noise seed: the losses must agree to float rounding
            diff = max(abs(r['loss'] - eager[r['mode']]['loss']) for r in rows)
            print(f"largest |compiled - eager| loss at the same weights, batch and noise: {diff:.2e}")
    samplers, srows = [s for s in args.samplers.split(',') if s], []
    if samplers:
        print(
            f"\nsampling, L={args.block_size}, T={args.steps} steps, top_p 0.9 ({args.sample_mode} model "
            f"for token-mode samplers; outside = step time not in the model forward)"
        )
        print(
            f"{'sampler':<12} {'batch':>5} {'compiled':>8} {'samples/s':>10} {'NFE/s':>8} {'ms/step':>9} "
            f"{'vs eager':>9} {'outside':>8} {'same samples':>12}"
        )
        for s in samplers:
            for b in [int(b) for b in args.sample_batches.split(',')]:
                for c in [False, True] if args.compile else [False]:
                    r, x = bench_sample(args, s, b, amp, c)
                    if not c:  # the eager row comes first: the reference of the compiled one
                        x0, ms0 = x, r['ms_step']
                    r.update(
                        speedup=ms0 / r['ms_step'], same_samples=int((x == x0).all(1).sum())
                    )  # of `batch`
                    srows.append(r)
                    print(
                        f"{s:<12} {b:>5} {'yes' if c else 'no':>8} {r['samples_s']:>10.2f} "
                        f"{r['nfe_s']:>8.1f} "
                        f"{r['ms_step']:>9.1f} {r['speedup']:>9.2f} {100 * r['outside']:>7.1f}% "
                        f"{str(r['same_samples']) + '/' + str(b):>12}"
                    )
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(
                dict(device=name, torch=torch.__version__, args=vars(args), train=rows, sample=srows),
                f,
                indent=1,
            )


if __name__ == '__main__':
    main()
