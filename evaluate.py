"""
Scoring generated text (docs/evaluation.md §1-3): is a sample set any good? MAUVE, generative perplexity
under a judge, unigram entropy, distinct-n. Probing a model on held-out data (bounds, calibration, error
detection) is probe.py; the step sweep is sweep.py.

    python evaluate.py --samples out/samples_loop_T128_s0.jsonl --refs data/shakespeare_char \
        --judge out/ar/ckpt.pt
    python evaluate.py --samples s.jsonl --refs data/openwebtext     # gpt2-large: the published protocol

Judges: 'gpt2-large' (Hugging Face) follows the ReMDM/DSL protocol exactly: MAUVE on last-token final hidden
states, 500 buckets at n = 5000 (n/10), scaling 5, seed 25; generative perplexity of the decoded text
retokenized with the judge's tokenizer, truncated to 1024, fp32, first token not scored, EOS after the first
excluded, token-weighted mean then exp. A path to this project's AR checkpoint is the offline judge:
perplexity is its teacher-forced likelihood exactly as trained (noise.ar_loss: a [MASK] start token, all L
tokens scored) and MAUVE features are its final hidden states (mean-pooled by default). Numbers made that way
compare only among themselves.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

import checkpoint_io
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


def load(path, device='cpu', trust=False):
    """(model in eval mode, meta of its data or None, train config) of a train.py / MDLM checkpoint. trust:
    unpickle it in full (checkpoint_io.load), only for files from a source you trust."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        m = modellib.load_mdlm(path, trust=trust)
    except checkpoint_io.Refused:
        raise
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: {e.args[0] if e.args else e}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a checkpoint ({type(e).__name__})") from None
    try:  # mmap: the dicts, without loading the weights twice
        ck = checkpoint_io.load(path, trust, mmap=True)
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
                ok = (
                    isinstance(r, dict)
                    and isinstance(r.get('ids'), list)
                    and len(r['ids']) > 0
                    and all(isinstance(i, int) and i >= 0 for i in r['ids'])
                )
            except json.JSONDecodeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{path}:{k}: not a sample record (a JSON object with a non-empty list of token 'ids')"
                )
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
        raise FileNotFoundError(
            f"--refs {refs} is neither a prepared data folder (meta.json) nor a text file"
        )
    with open(refs, encoding='utf-8', errors='replace') as f:
        text = f.read()
    try:
        return np.array(encode(text), dtype=np.int64), None, None
    except KeyError as e:
        raise ValueError(
            f"--refs {refs} has characters outside the judge's vocabulary ({e.args[0]!r})"
        ) from None


def chunks(tokens, L, n, seed=0, skip=0):
    """n disjoint length-L windows of the stream, chosen without replacement with a fixed seed (so references
    are the same in every run and never overlap each other); skip: take the n after the first `skip`."""
    k = len(tokens) // L
    if k < n + skip:
        raise ValueError(
            f"only {k} reference chunks of {L} tokens, fewer than the {n + skip} needed "
            f"({n} samples{' x 2 for the reference row' if skip else ''})"
        )
    idx = np.random.default_rng(seed).permutation(k)[skip : skip + n]
    return torch.from_numpy(np.stack([np.asarray(tokens[i * L : (i + 1) * L], dtype=np.int64) for i in idx]))


# ---------------------------------------------------------------------------------------------
# Judges: a dict {kind, name, model, ...}; 'ar' reads token ids, 'hf' reads retokenized text


def ar_judge(path, pool='mean', trust=False):
    m, meta, cfg = load(path, trust=trust)
    if not m.config.get('causal'):
        raise ValueError(f"judge {path} is not an autoregressive checkpoint (train.py --objective ar)")
    enc, dec = data.get_tokenizer(meta) if meta else (None, None)
    return dict(
        kind='ar',
        name=path,
        model=m,
        meta=meta,
        encode=enc,
        decode=dec,
        pool=pool,
        block_size=cfg.get('block_size'),
    )


def gpt2_encode():
    """GPT-2 BPE from tiktoken (the same merges as the HF tokenizer). '<|endoftext|>' in text is the EOS
    token, as the HF tokenizer reads it: the EOS rule of generative perplexity depends on it."""
    enc = data.gpt2_encoding()
    return lambda text: enc.encode(text, allowed_special={'<|endoftext|>'})


def hf_judge(name='gpt2-large', model=None, encode=None, eos=GPT2_EOS, device='cpu'):
    """A Hugging Face causal LM in fp32. model/encode may be passed in (tests: a tiny random GPT-2)."""
    if model is None:
        tf = need('transformers', 'transformers', f"judge '{name}'")
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(name)
        except Exception as e:
            raise ValueError(
                f"cannot load judge '{name}' ({type(e).__name__}); offline, pass --judge path/to/ar.pt"
            ) from None
    if encode is None:
        try:
            tok = need(
                'transformers', 'transformers', 'a Hugging Face tokenizer'
            ).AutoTokenizer.from_pretrained(name)
            encode, eos = (lambda t: tok(t)['input_ids']), tok.eos_token_id
        except Exception:  # offline: the GPT-2 family shares tiktoken's BPE
            encode = gpt2_encode()
    return dict(
        kind='hf',
        name=name,
        model=model.float().to(device).eval(),
        encode=encode,
        eos=eos,
        max_len=GPT2_CONTEXT,
    )


def get_judge(spec, pool='mean', trust=False):
    if os.path.exists(spec) or spec.endswith(('.pt', '.ckpt')):
        return ar_judge(spec, pool, trust)
    return hf_judge(spec)


def judge_inputs(judge, x, texts, where):
    """What the judge reads: AR: the ids themselves, which must be in the judge's tokenizer; HF: the text,
    retokenized and truncated to 1024 tokens (ReMDM's eval_retokenize)."""
    if judge['kind'] == 'hf':
        if any(t is None for t in texts):
            raise ValueError(f"{where}: samples without text; judge '{judge['name']}' reads decoded text")
        return [judge['encode'](t)[: judge['max_len']] for t in texts]
    V, dec = judge['model'].vocab_size, judge['decode']
    if int(x.max()) >= V or (
        dec and any(t is not None and dec(row) != t for row, t in zip(x.tolist(), texts))
    ):
        raise ValueError(
            f"{where}: the samples' tokenizer differs from judge {judge['name']}'s "
            f"({judge['meta']['tokenizer'] if judge['meta'] else '?'}, V={V}): use a judge trained on the "
            "same data"
        )
    if judge['block_size'] and x.shape[1] > judge['block_size']:
        raise ValueError(
            f"{where}: samples of L={x.shape[1]} are longer than judge {judge['name']}'s context "
            f"({judge['block_size']})"
        )
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
    """Final hidden states (the input of the output head) after reading the whole sample, input [MASK],
    x_0..x_{L-1}: 'last' = the state at the last token (MAUVE's GPT-2 featurizer), 'mean' = averaged over
    positions (default). A small model's last state encodes the last few tokens, not the text: on a
    32-character test corpus a tiny AR featurizer gave MAUVE 0.82 for random letters against real text with
    'last', 0.02 with 'mean'. A forward hook reads the states, so model.py needs no extra output."""
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
    """Generative NLL of a Hugging Face causal LM (docs/evaluation.md §2, ReMDM's
    compute_generative_perplexity): targets x_1..x_{n-1} (the first token is not scored: nothing precedes it),
    every non-EOS token plus the first EOS of the sequence (later EOS are padding-like filler). Returns (nll
    (N,), scored tokens (N,)), float64."""
    nll, cnt = [], []
    for i in range(0, len(seqs), batch_size):
        ids, valid = _pad(seqs[i : i + batch_size], eos)
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
        ids, valid = _pad(seqs[i : i + batch_size], 0)
        h = m(input_ids=ids, attention_mask=valid.long(), output_hidden_states=True).hidden_states[-1]
        feats.append(h[torch.arange(len(ids)), valid.sum(1) - 1].double())  # (B, D)
    return torch.cat(feats).numpy()


def judge_nll(judge, inp):
    """Per-sample (nll (N,), scored tokens (N,)) under the judge, float64."""
    return ar_nll(judge['model'], inp) if judge['kind'] == 'ar' else hf_nll(judge['model'], inp, judge['eos'])


def gen_nll(judge, inp):
    """Token-weighted mean NLL (nats/token) over all samples: sum of NLLs / number of scored tokens."""
    nll, cnt = judge_nll(judge, inp)
    return (nll.sum() / cnt.sum()).item()


def features(judge, inp):
    return (
        ar_features(judge['model'], inp, judge['pool'])
        if judge['kind'] == 'ar'
        else hf_features(judge['model'], inp)
    )


def mauve(p_feats, q_feats, seed=MAUVE_SEED):
    """MAUVE (Pillutla et al. 2021) of generated p vs reference q features: k-means into n/10 buckets, area
    under the divergence frontier with scaling factor 5. ReMDM/DSL settings."""
    mv = need('mauve', 'mauve-text', 'MAUVE')
    n = min(len(p_feats), len(q_feats))
    out = mv.compute_mauve(
        p_features=p_feats,
        q_features=q_feats,
        num_buckets=max(2, round(n / 10)),
        mauve_scaling_factor=MAUVE_SCALE,
        seed=seed,
        verbose=False,
    )
    return float(out.mauve)


def entropies(x):
    """The unigram entropy of each sample's token ids, nats (float64, (N,)). Low entropy with a low generative
    perplexity is repetitive text."""
    H = []
    for row in x.tolist():
        c = np.unique(row, return_counts=True)[1] / len(row)
        H.append(-(c * np.log(c)).sum())
    return np.array(H)


def entropy(x):
    """Mean over samples of entropies(x), nats."""
    return float(np.mean(entropies(x)))


def distincts(x, n):
    """distinct-n (Li et al. 2016) of each sample: unique n-grams / n-grams (float64, (N,))."""
    out = []
    for row in x.tolist():
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else 0.0)
    return np.array(out)


def distinct(x, n):
    """Mean over samples of distincts(x, n)."""
    return float(np.mean(distincts(x, n)))


def score(x, texts, judge, featurizer, q_feats, where='samples', per_sample=False):
    """One row of metrics for samples x (N, L) with their decoded texts, against reference features q_feats.
    per_sample: also row['per_sample'] = dict(nll, cnt, H, D3) per sample (D3: distinct-3), what a bootstrap
    resamples."""
    jin = judge_inputs(judge, x, texts, where)
    fin = jin if featurizer is judge else judge_inputs(featurizer, x, texts, where)
    nll, cnt = judge_nll(judge, jin)
    H = entropies(x)
    nats = (nll.sum() / cnt.sum()).item()
    row = dict(
        n=len(x),
        L=x.shape[1],
        mauve=mauve(features(featurizer, fin), q_feats),
        gen_nll=nats,
        gen_ppl=math.exp(min(nats, 700)),
        entropy=float(H.mean()),
    )
    row.update({f'distinct_{k}': distinct(x, k) for k in (1, 2, 3, 4)})
    if per_sample:
        c = (
            cnt.tolist()
        )  # one number when every sample scores the same count (an AR judge: L); results stay small
        row['per_sample'] = dict(
            nll=[round(v, 2) for v in nll.tolist()],
            cnt=int(c[0]) if len(set(c)) == 1 else c,
            H=[round(v, 3) for v in H.tolist()],
            D3=[round(v, 4) for v in distincts(x, 3).tolist()],
        )
    return row


def references(refs, judge, L, n, seed=0, skip=0):
    """n reference chunks of L tokens (ids, texts) in the judge's tokenizer (AR) or text (HF)."""
    enc = judge['encode']
    if enc is None:
        raise ValueError(f"judge {judge['name']} has no tokenizer (no meta in the checkpoint)")
    toks, dec, meta = ref_tokens(refs, enc)
    codec = lambda mt: (mt['tokenizer'], mt['vocab_size'], mt.get('chars'), mt.get('bpe'))  # what decodes ids
    if (
        judge['kind'] == 'ar'
        and meta is not None
        and judge['meta'] is not None
        and codec(meta) != codec(judge['meta'])
    ):
        raise ValueError(f"--refs {refs} uses a different tokenizer than judge {judge['name']}")
    x = chunks(toks, L, n, seed, skip)
    dec = dec or judge.get('decode') or (lambda ids: data.gpt2_encoding().decode(list(ids)))
    return x, [dec(r) for r in x.tolist()]


def metrics(
    sample_paths, refs, judge='gpt2-large', featurizer=None, seed=0, out='', pool='mean', trust=False
):
    """One row per sample file: MAUVE, generative perplexity, entropy, distinct-n. Writes JSON to out.
    trust: unpickle the judge's and featurizer's checkpoints in full (checkpoint_io.load)."""
    need(
        'mauve', 'mauve-text', 'MAUVE', check=True
    )  # bad input fails before any model is loaded or any work is done
    files = {p: read_samples(p) for p in sample_paths}
    J = get_judge(judge, pool, trust) if isinstance(judge, str) else judge
    F = (
        J
        if featurizer in (None, judge)
        else get_judge(featurizer, pool, trust)
        if isinstance(featurizer, str)
        else featurizer
    )
    for p, (recs, x) in files.items():
        for K in {id(J): J, id(F): F}.values():
            judge_inputs(K, x, [r.get('text') for r in recs], p)
    # per length: as many reference chunks as the largest file has samples, the same for every file
    n_ref = {}
    for recs, x in files.values():
        n_ref[x.shape[1]] = max(n_ref.get(x.shape[1], 0), len(x))
    q = {}
    for L, n in n_ref.items():
        rx, rt = references(refs, J, L, n, seed)
        q[L] = features(F, judge_inputs(F, rx, rt, f'--refs {refs}'))
    rows = []
    for p, (recs, x) in files.items():
        row = dict(
            file=p,
            sampler=recs[0].get('sampler'),
            steps=recs[0].get('steps'),
            nfe=recs[0].get('nfe'),
            seeds=sorted({r.get('seed') for r in recs}, key=str),
            top_p=recs[0].get('top_p'),
        )
        row.update(score(x, [r.get('text') for r in recs], J, F, q[x.shape[1]], p))
        rows.append(row)
    report = dict(
        judge=J['name'],
        featurizer=F['name'],
        pool=F.get('pool', 'last'),
        refs=refs,
        ref_seed=seed,
        mauve_seed=MAUVE_SEED,
        mauve_scaling=MAUVE_SCALE,
        versions=versions(),
        rows=rows,
    )
    if out:
        write_atomic(out, json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------------------------------------
# CLI


def table(rows, cols):
    cells = [[f'{r[c]:.4f}' if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    w = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]  # fit the widest cell
    return '\n'.join('  '.join(f'{v:>{w[i]}}' for i, v in enumerate(row)) for row in [cols] + cells)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description='score sample files: MAUVE, generative perplexity, entropy, distinct-n '
        '(docs/evaluation.md §3)'
    )
    ap.error = lambda msg: die(msg)  # one line, no usage dump
    ap.add_argument('--samples', nargs='+', required=True, help='sample.py JSONL files')
    ap.add_argument('--refs', required=True, help='prepared data folder (its val split) or a text file')
    ap.add_argument('--judge', default='gpt2-large', help="'gpt2-large' (Hugging Face) or an AR checkpoint")
    ap.add_argument('--featurizer', default=None, help='MAUVE features (default: the judge)')
    ap.add_argument(
        '--pool', default='mean', choices=['mean', 'last'], help='AR featurizer: mean or last hidden state'
    )
    ap.add_argument('--out', default='metrics.json')
    ap.add_argument('--seed', type=int, default=0, help='which reference chunks')
    ap.add_argument(
        '--trust_checkpoint',
        action='store_true',
        help='unpickle checkpoints in full, which can run code in them: only for files from a source '
        'you trust',
    )
    return ap.parse_args(argv)


def die(msg):
    print(f"evaluate.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    a = parse_args(argv)
    try:
        rep = metrics(a.samples, a.refs, a.judge, a.featurizer, a.seed, a.out, a.pool, a.trust_checkpoint)
    except (
        ValueError,
        FileNotFoundError,
        KeyError,
        ImportError,
    ) as e:  # user errors: one line; bugs keep tracebacks
        die(str(e.args[0]) if e.args else type(e).__name__)
    print(
        f"judge {rep['judge']}, featurizer {rep['featurizer']}, refs {a.refs} (seed {a.seed}), MAUVE seed "
        f"{MAUVE_SEED}"
    )
    print(table(rep['rows'], ['n', 'L', 'nfe', 'mauve', 'gen_ppl', 'entropy', 'distinct_2']))
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == '__main__':
    main()
