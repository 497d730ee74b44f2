"""
Evaluation: is a sample set any good, is a model calibrated, can it find its own wrong tokens (DESIGN.md §6).

    python evaluate.py metrics --samples out/samples_loop_T128_s0.jsonl --refs data/shakespeare_char --judge out/ar/ckpt.pt
    python evaluate.py metrics --samples s.jsonl --refs data/openwebtext                     # gpt2-large: the published protocol
    python evaluate.py calibration --ckpt out/ckpt.pt --data data/shakespeare_char
    python evaluate.py detect --ckpt out/ckpt.pt --data data/shakespeare_char
    python evaluate.py bounds --ckpt out/ckpt.pt --data data/shakespeare_char
    python evaluate.py sweep --ckpt out/ckpt.pt --ckpt out/mdlm/ckpt.pt --samplers mdlm,remdm-loop,uncertainty \
        --steps 16,32,64,128 --num_samples 256 --judge out/ar/ckpt.pt

Judges: 'gpt2-large' (Hugging Face) follows the ReMDM/DSL protocol exactly: MAUVE on last-token final hidden
states, 500 buckets at n = 5000 (n/10), scaling 5, seed 25; generative perplexity of the decoded text retokenized
with the judge's tokenizer, truncated to 1024, fp32, first token not scored, EOS after the first excluded,
token-weighted mean then exp. A path to this project's AR checkpoint is the offline judge: perplexity is its
teacher-forced likelihood exactly as trained (noise.ar_loss: a [MASK] start token, all L tokens scored) and MAUVE
features are its final hidden state after the last token. Numbers made that way compare only among themselves.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import data
import model as modellib
import noise

MAUVE_SEED, MAUVE_SCALE, GPT2_CONTEXT, GPT2_EOS = 25, 5, 1024, 50256


def need(module, pip, what, check=False):
    """Import an optional package (check: only make sure it is there, without the import's cost), or fail with
    one line saying what to install."""
    import importlib
    import importlib.util
    try:
        if check:
            if sys.modules.get(module, 0) is None or importlib.util.find_spec(module) is None:
                raise ImportError
            return None
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{what} needs the optional package '{pip}': pip install {pip}") from None


def versions():
    import importlib.metadata as md
    out = dict(python=sys.version.split()[0], torch=torch.__version__, numpy=np.__version__)
    for pkg in ('mauve-text', 'transformers', 'tiktoken'):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_atomic(path, text):
    """Temp file then os.replace: a kill never leaves a torn results file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


# ---------------------------------------------------------------------------------------------
# Inputs: checkpoints, sample files, reference chunks

def load(path, device='cpu'):
    """(model in eval mode, meta of its data or None, train config) of a train.py / MDLM checkpoint."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        m = modellib.load_mdlm(path)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e.args[0] if e.args else e}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a checkpoint ({type(e).__name__})") from None
    try:  # mmap: the dicts, without loading the weights twice
        ck = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
    except Exception:  # MDLM .safetensors carry no meta
        ck = {}
    ck = ck if isinstance(ck, dict) else {}
    return m.to(device).eval(), ck.get('meta'), ck.get('config') or {}


def read_samples(path):
    """Records of a sample.py JSONL file; all must carry 'ids' of one length. Returns (records, x (N, L))."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sample file {path}")
    records = []
    with open(path) as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = isinstance(r, dict) and isinstance(r.get('ids'), list) and len(r['ids']) > 0 and \
                    all(isinstance(i, int) and i >= 0 for i in r['ids'])
            except json.JSONDecodeError:
                ok = False
            if not ok:
                raise ValueError(f"{path}:{k}: not a sample record (a JSON object with a non-empty list of token 'ids')")
            records.append(r)
    if not records:
        raise ValueError(f"{path}: no samples (empty file)")
    if len({len(r['ids']) for r in records}) > 1:
        raise ValueError(f"{path}: samples of different lengths; MAUVE needs references of one length")
    return records, torch.tensor([r['ids'] for r in records])


def ref_tokens(refs, encode, meta=None):
    """1-D token stream of the references: a prepared folder's val.bin (its own tokenizer), or a text file
    encoded with `encode`. Returns (tokens, decode or None, meta of the folder or None)."""
    if os.path.isfile(os.path.join(refs, 'meta.json')):
        m = data.load_meta(refs)
        toks = np.memmap(os.path.join(refs, 'val.bin'), dtype=m.get('dtype', 'uint16'), mode='r')
        return toks, data.get_tokenizer(m)[1], m
    if not os.path.isfile(refs):
        raise FileNotFoundError(f"--refs {refs} is neither a prepared data folder (meta.json) nor a text file")
    with open(refs, encoding='utf-8', errors='replace') as f:
        text = f.read()
    try:
        return np.array(encode(text), dtype=np.int64), None, None
    except KeyError as e:
        raise ValueError(f"--refs {refs} has characters outside the judge's vocabulary ({e.args[0]!r})") from None


def chunks(tokens, L, n, seed=0, skip=0):
    """n disjoint length-L windows of the stream, chosen without replacement with a fixed seed (so references
    are the same in every run and never overlap each other); skip: take the n after the first `skip`."""
    k = len(tokens) // L
    if k < n + skip:
        raise ValueError(f"only {k} reference chunks of {L} tokens, fewer than the {n + skip} needed "
                         f"({n} samples{' x 2 for the reference row' if skip else ''})")
    idx = np.random.default_rng(seed).permutation(k)[skip:skip + n]
    return torch.from_numpy(np.stack([np.asarray(tokens[i * L:(i + 1) * L], dtype=np.int64) for i in idx]))


# ---------------------------------------------------------------------------------------------
# Judges: a dict {kind, name, model, ...}; 'ar' reads token ids, 'hf' reads retokenized text

def ar_judge(path, pool='mean'):
    m, meta, cfg = load(path)
    if not m.config.get('causal'):
        raise ValueError(f"judge {path} is not an autoregressive checkpoint (train.py --objective ar)")
    enc, dec = data.get_tokenizer(meta) if meta else (None, None)
    return dict(kind='ar', name=path, model=m, meta=meta, encode=enc, decode=dec, pool=pool,
                block_size=cfg.get('block_size'))


def gpt2_encode():
    """GPT-2 BPE from tiktoken (the same merges as the HF tokenizer). '<|endoftext|>' in text is the EOS token,
    as the HF tokenizer reads it: the EOS rule of generative perplexity depends on it."""
    enc = data.gpt2_encoding()
    return lambda text: enc.encode(text, allowed_special={'<|endoftext|>'})


def hf_judge(name='gpt2-large', model=None, encode=None, eos=GPT2_EOS, device='cpu'):
    """A Hugging Face causal LM in fp32. model/encode may be passed in (tests: a tiny random GPT-2)."""
    if model is None:
        tf = need('transformers', 'transformers', f"judge '{name}'")
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(name)
        except Exception as e:
            raise ValueError(f"cannot load judge '{name}' ({type(e).__name__}); offline, pass --judge path/to/ar.pt") from None
    if encode is None:
        try:
            tok = need('transformers', 'transformers', 'a Hugging Face tokenizer').AutoTokenizer.from_pretrained(name)
            encode, eos = (lambda t: tok(t)['input_ids']), tok.eos_token_id
        except Exception:  # offline: the GPT-2 family shares tiktoken's BPE
            encode = gpt2_encode()
    return dict(kind='hf', name=name, model=model.float().to(device).eval(), encode=encode, eos=eos,
                max_len=GPT2_CONTEXT)


def get_judge(spec, pool='mean'):
    return ar_judge(spec, pool) if os.path.exists(spec) or spec.endswith(('.pt', '.ckpt')) else hf_judge(spec)


def judge_inputs(judge, x, texts, where):
    """What the judge reads: AR: the ids themselves, which must be in the judge's tokenizer; HF: the text,
    retokenized and truncated to 1024 tokens (ReMDM's eval_retokenize)."""
    if judge['kind'] == 'hf':
        if any(t is None for t in texts):
            raise ValueError(f"{where}: samples without text; judge '{judge['name']}' reads decoded text")
        return [judge['encode'](t)[:judge['max_len']] for t in texts]
    V, dec = judge['model'].vocab_size, judge['decode']
    if int(x.max()) >= V or (dec and any(t is not None and dec(row) != t for row, t in zip(x.tolist(), texts))):
        raise ValueError(f"{where}: the samples' tokenizer differs from judge {judge['name']}'s "
                         f"({judge['meta']['tokenizer'] if judge['meta'] else '?'}, V={V}): use a judge trained on the same data")
    if judge['block_size'] and x.shape[1] > judge['block_size']:
        raise ValueError(f"{where}: samples of L={x.shape[1]} are longer than judge {judge['name']}'s context "
                         f"({judge['block_size']})")
    return x


@torch.no_grad()
def ar_nll(m, x, batch_size=64):
    """Teacher-forced -log p(x) per sequence (float64, nats), conditioned as noise.ar_loss trains: input
    [MASK], x_0..x_{L-2} predicts x_0..x_{L-1}, all L tokens scored. Returns (nll (N,), tokens (N,))."""
    out = []
    for xb in x.split(batch_size):
        start = torch.full_like(xb[:, :1], m.mask_id)
        logits = m(x=torch.cat([start, xb[:, :-1]], dim=1))  # (B, L, V+1)
        out.append(-noise.token_logprobs(logits, xb, m.vocab_size).double().sum(1))
    return torch.cat(out), torch.full((len(x),), x.shape[1], dtype=torch.float64)


@torch.no_grad()
def ar_features(m, x, pool='mean', batch_size=64):
    """Final hidden states (the input of the output head) after reading the whole sample, input [MASK], x_0..x_{L-1}:
    'last' = the state at the last token (MAUVE's GPT-2 featurizer), 'mean' = averaged over positions (default).
    A small model's last state encodes the last few tokens, not the text: on a 32-character test corpus a tiny AR
    featurizer gave MAUVE 0.82 for random letters against real text with 'last', 0.02 with 'mean'.
    A forward hook reads the states, so model.py needs no extra output."""
    feats, grab = [], lambda mod, inp, out: feats.append(inp[0].double())
    hook = m.output_layer.linear.register_forward_hook(grab)
    try:
        for xb in x.split(batch_size):
            inp = torch.cat([torch.full_like(xb[:, :1], m.mask_id), xb], dim=1)  # (B, L+1)
            last = torch.zeros(inp.shape, dtype=torch.bool)
            last[:, -1] = True
            m(x=inp, out_idx=last if pool == 'last' else None)
            feats[-1] = feats[-1][0] if pool == 'last' else feats[-1][:, 1:].mean(1)  # (B, D)
    finally:
        hook.remove()
    return torch.cat(feats).numpy()


def _pad(seqs, pad):
    L = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (L - len(s)) for s in seqs])  # (B, L), right padding
    return ids, torch.arange(L)[None] < torch.tensor([len(s) for s in seqs])[:, None]


@torch.no_grad()
def hf_nll(m, seqs, eos, batch_size=8):
    """Generative NLL of a Hugging Face causal LM (DESIGN.md §6, ReMDM's compute_generative_perplexity): targets
    x_1..x_{n-1} (the first token is not scored: nothing precedes it), every non-EOS token plus the first EOS of the
    sequence (later EOS are padding-like filler). Returns (nll (N,), scored tokens (N,)), float64."""
    nll, cnt = [], []
    for i in range(0, len(seqs), batch_size):
        ids, valid = _pad(seqs[i:i + batch_size], eos)
        logits = m(input_ids=ids, attention_mask=valid.long()).logits.float()  # (B, L, V) fp32
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].double()  # (B, L-1)
        is_eos = (ids == eos) & valid
        first = is_eos & (is_eos.cumsum(1) == 1)
        scored = ((~is_eos | first) & valid)[:, 1:]
        nll.append(-(lp * scored).sum(1))
        cnt.append(scored.sum(1).double())
    return torch.cat(nll), torch.cat(cnt)


@torch.no_grad()
def hf_features(m, seqs, batch_size=8):
    """MAUVE's featurizer: the last layer's hidden state (after the final LayerNorm) at the last token."""
    feats = []
    for i in range(0, len(seqs), batch_size):
        ids, valid = _pad(seqs[i:i + batch_size], 0)
        h = m(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True).hidden_states[-1]
        feats.append(h[torch.arange(len(ids)), valid.sum(1) - 1].double())  # (B, D)
    return torch.cat(feats).numpy()


def gen_nll(judge, inp):
    """Token-weighted mean NLL (nats/token) over all samples: sum of NLLs / number of scored tokens."""
    nll, cnt = ar_nll(judge['model'], inp) if judge['kind'] == 'ar' else hf_nll(judge['model'], inp, judge['eos'])
    return (nll.sum() / cnt.sum()).item()


def features(judge, inp):
    return ar_features(judge['model'], inp, judge['pool']) if judge['kind'] == 'ar' else hf_features(judge['model'], inp)


def mauve(p_feats, q_feats, seed=MAUVE_SEED):
    """MAUVE (Pillutla et al. 2021) of generated p vs reference q features: k-means into n/10 buckets, area under
    the divergence frontier with scaling factor 5. ReMDM/DSL settings."""
    mv = need('mauve', 'mauve-text', 'MAUVE')
    n = min(len(p_feats), len(q_feats))
    out = mv.compute_mauve(p_features=p_feats, q_features=q_feats, num_buckets=max(2, round(n / 10)),
                           mauve_scaling_factor=MAUVE_SCALE, seed=seed, verbose=False)
    return float(out.mauve)


def entropy(x):
    """Mean over samples of the unigram entropy of each sample's token ids, nats (float64). Low entropy with a
    low generative perplexity is repetitive text."""
    H = []
    for row in x.tolist():
        c = np.unique(row, return_counts=True)[1] / len(row)
        H.append(-(c * np.log(c)).sum())
    return float(np.mean(H))


def distinct(x, n):
    """distinct-n (Li et al. 2016), per sample: unique n-grams / n-grams, averaged over samples."""
    out = []
    for row in x.tolist():
        grams = [tuple(row[i:i + n]) for i in range(len(row) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else 0.0)
    return float(np.mean(out))


def score(x, texts, judge, featurizer, q_feats, where='samples'):
    """One row of metrics for samples x (N, L) with their decoded texts, against reference features q_feats."""
    jin = judge_inputs(judge, x, texts, where)
    fin = jin if featurizer is judge else judge_inputs(featurizer, x, texts, where)
    nats = gen_nll(judge, jin)
    row = dict(n=len(x), L=x.shape[1], mauve=mauve(features(featurizer, fin), q_feats), gen_nll=nats,
               gen_ppl=math.exp(min(nats, 700)), entropy=entropy(x))
    row.update({f'distinct_{k}': distinct(x, k) for k in (1, 2, 3, 4)})
    return row


def references(refs, judge, L, n, seed=0, skip=0):
    """n reference chunks of L tokens (ids, texts) in the judge's tokenizer (AR) or text (HF)."""
    enc = judge['encode']
    if enc is None:
        raise ValueError(f"judge {judge['name']} has no tokenizer (no meta in the checkpoint)")
    toks, dec, meta = ref_tokens(refs, enc)
    if judge['kind'] == 'ar' and meta is not None and judge['meta'] is not None and \
            (meta['tokenizer'], meta['vocab_size'], meta.get('chars')) != \
            (judge['meta']['tokenizer'], judge['meta']['vocab_size'], judge['meta'].get('chars')):
        raise ValueError(f"--refs {refs} uses a different tokenizer than judge {judge['name']}")
    x = chunks(toks, L, n, seed, skip)
    dec = dec or judge.get('decode') or (lambda ids: data.gpt2_encoding().decode(list(ids)))
    return x, [dec(r) for r in x.tolist()]


def metrics(sample_paths, refs, judge='gpt2-large', featurizer=None, seed=0, out='', pool='mean'):
    """One row per sample file: MAUVE, generative perplexity, entropy, distinct-n. Writes JSON to out."""
    need('mauve', 'mauve-text', 'MAUVE', check=True)  # bad input fails before any model is loaded or any work is done
    files = {p: read_samples(p) for p in sample_paths}
    J = get_judge(judge, pool) if isinstance(judge, str) else judge
    F = J if featurizer in (None, judge) else get_judge(featurizer, pool) if isinstance(featurizer, str) else featurizer
    for p, (recs, x) in files.items():
        for K in {id(J): J, id(F): F}.values():
            judge_inputs(K, x, [r.get('text') for r in recs], p)
    n_ref = {}  # per length: as many reference chunks as the largest file has samples, the same for every file
    for recs, x in files.values():
        n_ref[x.shape[1]] = max(n_ref.get(x.shape[1], 0), len(x))
    q = {}
    for L, n in n_ref.items():
        rx, rt = references(refs, J, L, n, seed)
        q[L] = features(F, judge_inputs(F, rx, rt, f'--refs {refs}'))
    rows = []
    for p, (recs, x) in files.items():
        row = dict(file=p, sampler=recs[0].get('sampler'), steps=recs[0].get('steps'), nfe=recs[0].get('nfe'),
                   seeds=sorted({r.get('seed') for r in recs}, key=str), top_p=recs[0].get('top_p'))
        row.update(score(x, [r.get('text') for r in recs], J, F, q[x.shape[1]], p))
        rows.append(row)
    report = dict(judge=J['name'], featurizer=F['name'], pool=F.get('pool', 'last'), refs=refs, ref_seed=seed, mauve_seed=MAUVE_SEED,
                  mauve_scaling=MAUVE_SCALE, versions=versions(), rows=rows)
    if out:
        write_atomic(out, json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------------------------------------
# Calibration, error detection, bounds: teacher-forced on fixed held-out windows

def windows(data_dir, n, L, seed=0):
    """The same n validation windows for every model (data.get_batch with a fixed seed)."""
    meta = data.load_meta(data_dir) if os.path.isfile(os.path.join(data_dir, 'meta.json')) else None
    if meta is None:
        raise FileNotFoundError(f"--data {data_dir} is not a prepared data folder (no meta.json; run data.py)")
    return data.get_batch(data_dir, 'val', n, L, np.random.default_rng(seed), meta.get('dtype', 'uint16')), meta


def check_data(m, meta, where):
    if meta['vocab_size'] != m.vocab_size:
        raise ValueError(f"{where}: the model's vocabulary ({m.vocab_size}) does not match the data's ({meta['vocab_size']})")


def ece(conf, correct, n_bins=15):
    """Expected calibration error (Guo et al. 2017): sum_b n_b/N |acc_b - conf_b| over equal-width confidence bins.
    Returns (ece, bins: list of (lo, hi, count, mean confidence, accuracy))."""
    conf, correct = torch.as_tensor(conf, dtype=torch.float64), torch.as_tensor(correct, dtype=torch.float64)
    b = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1  # bin (k/n, (k+1)/n]; 0 goes to the first
    bins, total = [], 0.0
    for k in range(n_bins):
        sel = b == k
        if sel.any():
            c, a = conf[sel].mean().item(), correct[sel].mean().item()
            total += sel.sum().item() / len(conf) * abs(a - c)
            bins.append((k / n_bins, (k + 1) / n_bins, int(sel.sum()), c, a))
    return total, bins


@torch.no_grad()
def corrupted_predictions(m, x, level, g):
    """Teacher-forced (confidence, correct) on corrupted windows. DSL: one shared SNR gamma = level per sequence
    (noise.localize), every position is corrupted and scored. MDLM: mask fraction t = level; only masked
    positions are scored (visible ones are copied through, trivially correct)."""
    if m.dsl:
        logits = m(z=noise.localize(m.E()[x], torch.tensor(float(level)), g))
        where = torch.ones_like(x, dtype=torch.bool)
    else:
        xt, where = noise.mdlm_corrupt(x, torch.full((len(x),), float(level)), m.mask_id, g)
        logits = m(x=xt)
    p = torch.softmax(logits[..., :m.vocab_size].double(), -1)[where]  # (N, V)
    conf, pred = p.max(-1)
    return conf, (pred == x[where]).double()


def calibration(ckpt, data_dir, levels=None, n=64, L=None, seed=0, out=''):
    """ECE at each level (DSL: SNRs, default gamma_max x {0.03, 0.1, 0.3, 1}; MDLM: mask rates {0.15, 0.5, 0.85})
    and a reliability diagram PNG (out). Returns rows."""
    m, _, cfg = load(ckpt)
    if m.config.get('causal'):
        raise ValueError(f"{ckpt}: calibration needs a DSL or MDLM checkpoint, not an autoregressive one")
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    gmax = m.config['gamma_max']
    levels = levels or ([gmax * f for f in (0.03, 0.1, 0.3, 1.0)] if m.dsl else [0.15, 0.5, 0.85])
    g, rows = torch.Generator().manual_seed(seed), []
    for lv in levels:
        conf, correct = corrupted_predictions(m, x, lv, g)
        e, bins = ece(conf, correct)
        rows.append(dict(level=('gamma' if m.dsl else 't'), value=lv, ece=e, accuracy=correct.mean().item(),
                         confidence=conf.mean().item(), n=len(conf), bins=bins))
    if out:
        plt = need('matplotlib.pyplot', 'matplotlib', 'the reliability diagram')
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], 'k:', lw=1)
        for r in rows:
            ax.plot([b[3] for b in r['bins']], [b[4] for b in r['bins']], 'o-', ms=3,
                    label=f"{r['level']} = {r['value']:g}: ECE {r['ece']:.3f}")
        ax.set(xlabel='confidence (max probability)', ylabel='accuracy', title=os.path.basename(ckpt))
        ax.legend(fontsize=7)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        fig.savefig(out + '.tmp.png', dpi=100)
        os.replace(out + '.tmp.png', out)
        plt.close(fig)
    return rows


def auroc(scores, labels):
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting 1/2
    (Mann-Whitney U from average ranks)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    n1, n0 = y.sum(), (~y).sum()
    if n1 == 0 or n0 == 0:
        return float('nan')
    order = np.argsort(s, kind='mergesort')
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    vals, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.bincount(inv, ranks) / counts)[inv]  # tied scores share their average rank
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# How a sampler presents a visible token to the model: name -> fn(model, ids with mask_id where hidden, generator)
# -> logits (B, L, V+1). Discrete samplers today: a DSL model sees z = gamma_max e_x (z = 0 hidden), an MDLM
# model sees the ids. A commit state at a lower SNR is one more entry here.
STATES = dict(endpoint=lambda m, x, g: m(z=m.endpoint_z(x)),
              tokens=lambda m, x, g: m(x=x))


def commit_states(gammas):
    """The commit states of sample.py's --gamma_commit g (DSL): every visible token at z = g e_x, deterministic
    ('commit@g') or as a channel sample z = g e_x + sqrt(g) eps ('commit@g+noise', --commit_noise 1)."""
    def state(gc, noisy):
        def fn(m, x, g):
            z = m.endpoint_z(x, gc)  # (B, L, d), 0 where hidden
            if noisy:
                vis = (x != m.mask_id)[..., None]
                z = z + vis * gc ** 0.5 * torch.randn(z.shape, generator=g, device=z.device)
            return m(z=z)
        return fn
    return [(f"commit@{gc:g}{'+noise' if noisy else ''}", state(gc, noisy)) for gc in gammas for noisy in (0, 1)]


@torch.no_grad()
def corrupt(x, hide, frac, how, V, mask_id, g, proposer=None):
    """Hide a fraction `hide` of positions, replace a fraction `frac` of the visible ones by a wrong token:
    'uniform' over the V-1 others, or 'plausible': drawn from the proposer's prediction at that position with
    it (and every other corrupted or hidden position) hidden, the true token excluded.
    Returns (state ids with mask_id where hidden, hidden (B, L), corrupted (B, L))."""
    hidden = torch.rand(x.shape, generator=g) < hide
    wrong = ~hidden & (torch.rand(x.shape, generator=g) < frac)
    if how == 'uniform':
        y = (x + torch.randint(1, V, x.shape, generator=g)) % V  # never x itself
    elif how == 'plausible':
        logits = proposer(x=x.masked_fill(hidden | wrong, mask_id))  # (B, L, V+1)
        p = torch.softmax(logits[..., :V].double(), -1).scatter(-1, x[..., None], 0.0) + 1e-30
        p = p.scatter(-1, x[..., None], 0.0)  # the true token excluded, other probabilities renormalised
        y = x.clone()
        if wrong.any():
            y[wrong] = torch.multinomial(p[wrong], 1, generator=g)[:, 0]
    else:
        raise ValueError(f"unknown corruption '{how}': choose uniform or plausible")
    return torch.where(wrong, y, x).masked_fill(hidden, mask_id), hidden, wrong


@torch.no_grad()
def detect_auroc(m, x, states, hows=('uniform', 'plausible'), hide=0.25, frac=0.1, proposer=None, seed=0):
    """AUROC of u_i = 1 - p(x_i | state) for corrupted vs true visible tokens, per (state, corruption).
    The same corruptions (fixed seed) for every state; proposer defaults to the model itself."""
    rows = []
    for how in hows:
        g = torch.Generator().manual_seed(seed)
        xs, hidden, wrong = corrupt(x, hide, frac, how, m.vocab_size, m.mask_id, g, proposer or m)
        for name in states:
            logits = STATES[name](m, xs, g) if isinstance(name, str) else name[1](m, xs, g)
            p = torch.softmax(logits[..., :m.vocab_size].double(), -1)
            u = 1 - p.gather(-1, xs.clamp(max=m.vocab_size - 1)[..., None])[..., 0]  # (B, L)
            vis = ~hidden
            rows.append(dict(state=name if isinstance(name, str) else name[0], corruption=how,
                             auroc=auroc(u[vis], wrong[vis]), u_wrong=u[wrong].mean().item(),
                             u_true=u[vis & ~wrong].mean().item(), n_wrong=int(wrong.sum()), n_true=int((vis & ~wrong).sum())))
    return rows


def detect(ckpt, data_dir, n=64, L=None, hide=0.25, frac=0.1, proposer='', seed=0, gamma_commit=None):
    """Error-detection AUROC for every state a sampler can present visible tokens in: DSL models at the endpoint
    and at the commit states of gamma_commit (default gamma_max / 3 and / 10), MDLM models as ids."""
    m, _, cfg = load(ckpt)
    if m.config.get('causal'):
        raise ValueError(f"{ckpt}: detect needs a DSL or MDLM checkpoint, not an autoregressive one")
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    prop = load(proposer)[0] if proposer else m
    if prop.config.get('causal') or prop.vocab_size != m.vocab_size:
        raise ValueError(f"--proposer {proposer} must be a DSL or MDLM checkpoint with the model's vocabulary")
    gmax = m.config['gamma_max']
    gammas = [gmax / 3, gmax / 10] if gamma_commit is None else gamma_commit
    if m.dsl and not all(0 < gc <= gmax for gc in gammas):
        raise ValueError(f"--gamma_commit values must lie in (0, gamma_max = {gmax:g}], got {gammas}")
    states = ['endpoint'] + commit_states(gammas) if m.dsl else ['tokens']
    return detect_auroc(m, x, states, hide=hide, frac=frac, proposer=prop, seed=seed)


@torch.no_grad()
def bounds(ckpt, data_dir, n=64, L=None, seed=0, batch_size=16, grid=64):
    """NLL bounds on fixed windows, nats/token: MDLM NELBO and any-order AR for every diffusion model, the
    diffusion (I-MMSE) bound for DSL models; an AR model's exact NLL. Each with bits and perplexity."""
    m, _, cfg = load(ckpt)
    x, meta = windows(data_dir, n, L or cfg.get('block_size') or 64, seed)
    check_data(m, meta, ckpt)
    xs, out = x.split(batch_size), {}
    mean = lambda f: sum(f(xb, torch.Generator().manual_seed(seed + i)) * len(xb) for i, xb in enumerate(xs)) / n
    if m.config.get('causal'):
        out['ar_nll'] = mean(lambda xb, g: noise.ar_loss(m, xb).item())
    else:
        out['mdlm_bound'] = mean(lambda xb, g: noise.mdlm_bound(m, xb, generator=g))
        out['roar_bound'] = mean(lambda xb, g: noise.roar_bound(m, xb, generator=g))
    if m.dsl:  # as train.py's eval: the min over the cut-off g* after averaging over all windows
        gr = noise.snr_grid(4 * m.config['gamma_max'], grid)
        per = torch.cat([sum(noise.path_integral(m, xb, gr, torch.Generator().manual_seed(seed + i)))
                         for i, xb in enumerate(xs)], dim=1)  # (S, N)
        out['diffusion_bound'] = per.mean(1).min().item() / x.shape[1]
    return {k: noise.bound_report(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------
# CLI

def table(rows, cols):
    cells = [[f'{r[c]:.4f}' if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    w = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]  # fit the widest cell
    return '\n'.join('  '.join(f'{v:>{w[i]}}' for i, v in enumerate(row)) for row in [cols] + cells)


def parse_args(argv):
    ap = argparse.ArgumentParser(description='metrics, calibration, error detection, bounds and step sweeps (DESIGN.md §6)')
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('metrics', help='MAUVE, generative perplexity, entropy, distinct-n per sample file')
    p.add_argument('--samples', nargs='+', required=True)
    p.add_argument('--refs', required=True, help='prepared data folder (its val split) or a text file')
    p.add_argument('--judge', default='gpt2-large', help="'gpt2-large' (Hugging Face) or an AR checkpoint")
    p.add_argument('--featurizer', default=None, help='MAUVE features (default: the judge)')
    p.add_argument('--pool', default='mean', choices=['mean', 'last'], help='AR featurizer: mean or last hidden state')
    p.add_argument('--out', default='metrics.json')
    for name in ('calibration', 'detect', 'bounds'):
        p = sub.add_parser(name)
        p.add_argument('--ckpt', required=True)
        p.add_argument('--data', required=True, help='prepared data folder; its val split')
        p.add_argument('--num_windows', type=int, default=64)
        p.add_argument('--seq_len', type=int, default=0, help="0 = the checkpoint's block_size")
        if name == 'calibration':
            p.add_argument('--levels', default='', help='comma-separated SNRs (DSL) or mask rates (MDLM)')
            p.add_argument('--out', default='reliability.png')
        if name == 'detect':
            p.add_argument('--hide', type=float, default=0.25, help='fraction of positions hidden')
            p.add_argument('--frac', type=float, default=0.1, help='fraction of visible tokens corrupted')
            p.add_argument('--proposer', default='', help='checkpoint proposing plausible corruptions (default: the model)')
            p.add_argument('--gamma_commit', default='', help='DSL commit SNRs to test, comma-separated '
                                                              '(default gamma_max/3, gamma_max/10)')
    p = sub.add_parser('sweep', help='sample and score every valid (checkpoint, sampler, steps) cell')
    p.add_argument('--ckpt', action='append', required=True)
    p.add_argument('--samplers', default='mdlm,remdm-cap,remdm-loop,uncertainty')
    p.add_argument('--steps', default='16,32,64,128')
    p.add_argument('--num_samples', type=int, default=64)
    p.add_argument('--judge', required=True, help="an AR checkpoint or 'gpt2-large'")
    p.add_argument('--featurizer', default=None)
    p.add_argument('--pool', default='mean', choices=['mean', 'last'], help='AR featurizer: mean or last hidden state')
    p.add_argument('--refs', default='', help="default: the first checkpoint's data folder")
    p.add_argument('--seq_len', type=int, default=0)
    p.add_argument('--top_p', type=float, default=0.9)
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--out_dir', default='sweep')
    p.add_argument('--debug_kill_after', type=int, default=-1, help=argparse.SUPPRESS)
    p = sub.add_parser('repro', help="the paper's protocol at small scale: train, bounds, sweep, verdict (repro.py)")
    p.add_argument('--preset', default='cpu', help='cpu (~80 min on 2 cores) | gpu | toy')
    p.add_argument('--corpora', default='', help="comma-separated: char, speech (needs --text), owt; '' = the preset's")
    p.add_argument('--text', default='', help='the speech corpus: comma-separated local .txt files, GPT-2 BPE')
    p.add_argument('--launcher', default='', help='how to start train.py, e.g. "torchrun --nproc_per_node=8"')
    p.add_argument('--results', default='results', help='tables, figures, README per corpus')
    p.add_argument('--runs', default='out/repro', help='checkpoints and sweep state')
    for k in ('pre_iters', 'ft_iters', 'num_samples', 'block_size', 'batch_size'):
        p.add_argument(f'--{k}', type=int, default=None, help="default: the preset's")
    p.add_argument('--steps', default=None, help="comma-separated; default: the preset's")
    p.add_argument('--ft_lr', type=float, default=None, help="both continuations' learning rate; default: the preset's")
    for p in sub.choices.values():
        p.error = ap.error
        p.add_argument('--seed', type=int, default=0, help='references, windows, corruptions and samples')
    return ap.parse_args(argv)


def die(msg):
    print(f"evaluate.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run(a):
    if a.cmd == 'metrics':
        rep = metrics(a.samples, a.refs, a.judge, a.featurizer, a.seed, a.out, a.pool)
        print(f"judge {rep['judge']}, featurizer {rep['featurizer']}, refs {a.refs} (seed {a.seed}), MAUVE seed {MAUVE_SEED}")
        print(table(rep['rows'], ['n', 'L', 'nfe', 'mauve', 'gen_ppl', 'entropy', 'distinct_2']))
        print(f"wrote {a.out}", file=sys.stderr)
    elif a.cmd == 'calibration':
        levels = [float(v) for v in a.levels.split(',') if v]
        rows = calibration(a.ckpt, a.data, levels, a.num_windows, a.seq_len, a.seed, a.out)
        print(table(rows, ['level', 'value', 'ece', 'accuracy', 'confidence', 'n']))
        print(f"wrote {a.out}", file=sys.stderr)
    elif a.cmd == 'detect':
        gc = [float(v) for v in a.gamma_commit.split(',') if v] or None
        rows = detect(a.ckpt, a.data, a.num_windows, a.seq_len, a.hide, a.frac, a.proposer, a.seed, gc)
        print(table(rows, ['state', 'corruption', 'auroc', 'u_wrong', 'u_true', 'n_wrong', 'n_true']))
    elif a.cmd == 'bounds':
        for k, r in bounds(a.ckpt, a.data, a.num_windows, a.seq_len, a.seed).items():
            print(f"{k:>16}: {r['nats']:.4f} nats/token, {r['bits']:.4f} bits/token, perplexity {r['ppl']:.2f}")
    elif a.cmd == 'repro':
        import repro  # the protocol is its own file; it calls train.py, this file's functions and sweep.py
        repro.repro(a.preset, a.corpora, a.text, a.launcher, a.results, a.runs, pre_iters=a.pre_iters,
                    ft_iters=a.ft_iters, num_samples=a.num_samples, block_size=a.block_size,
                    batch_size=a.batch_size, steps=a.steps, ft_lr=a.ft_lr)
    else:
        steps = [int(s) for s in a.steps.split(',') if s]
        import sweep  # the step sweep is its own file; it scores cells with this file's functions
        rows, notes = sweep.sweep(a.ckpt, [s for s in a.samplers.split(',') if s], steps, a.num_samples, a.judge, a.refs,
                            a.featurizer, a.out_dir, a.seq_len, a.seed, a.top_p, a.batch_size, a.pool,
                            a.debug_kill_after)
        print(open(os.path.join(a.out_dir, 'results.md')).read())


def main(argv=None):
    a = parse_args(argv)
    try:
        run(a)
    except (ValueError, FileNotFoundError, KeyError, ImportError, RuntimeError) as e:  # user errors: one line
        die(str(e.args[0]) if e.args else type(e).__name__)


if __name__ == '__main__':
    main()
