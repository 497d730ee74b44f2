"""
Datasets -> token files, and random-window batches (docs/method.md §18).

    python data.py                                  # shakespeare_char (the quick start), char vocabulary
    python data.py text8                            # 27 characters, 90M / 5M / 5M split
    python data.py openwebtext                      # GPT-2 BPE, last 100k documents held out
    python data.py --data a.txt,b.txt --tokenizer gpt2 [--out_dir data/mine]
    python data.py --data a.txt,b.txt --tokenizer bpe:2048   # a byte-level BPE trained on the training split

A prepared folder holds train.bin / val.bin (uint16 when V < 65536, else uint32) and meta.json
(tokenizer, vocab_size, mask_id = V, eos/bos, chars for char vocabularies, the trained BPE for bpe:N, source,
sha256 of the raw text, token counts). meta.json is written last, so its presence means the folder is
complete. bpe:N also writes tokenizer.json (Hugging Face `tokenizers` format); meta.json carries the same
tokenizer, so a checkpoint (which stores meta) decodes without the folder.

Token stream: documents (or files) are concatenated, with EOS after each one for gpt2 (char
vocabularies have no EOS). Training windows are random length-L slices of that stream, so a window
may straddle a document boundary (nanoGPT-style); MDLM's [BOS] + 1022 + [EOS] wrapping is not used.
"""

import hashlib
import json
import os
import urllib.request

import numpy as np
import torch

import checkpoint_io

ROOT = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
TEXT8_URL = 'http://mattmahoney.net/dc/text8.zip'
OWT_HF = 'Skylion007/openwebtext'  # MDLM's openwebtext-split: its last 100k documents are validation
OWT_VAL_DOCS = 100_000
DEFAULT_TOKENIZER = dict(shakespeare_char='char', text8='char', openwebtext='gpt2')


def default_dir(dataset):
    return os.path.join(ROOT, 'data', dataset)


# ---------------------------------------------------------------------------------------------
# Tokenizers: encode(str) -> list[int], decode(ids) -> str


def gpt2_encoding():
    import tiktoken

    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # offline: tiktoken tries to download vocab.bpe / encoder.json
        raise SystemExit(
            f"data: cannot load the gpt2 BPE files ({type(e).__name__}); offline, set "
            f"TIKTOKEN_CACHE_DIR to a writable folder holding tiktoken's cached GPT-2 BPE files"
        )


def tokenizer_error(spec):
    """None if spec names a tokenizer ('', char, gpt2, bpe:N with N >= 256), else a one-line reason."""
    if spec in ('', 'char', 'gpt2'):
        return None
    n = spec[4:] if spec.startswith('bpe:') else None
    if n is None:
        return f"unknown tokenizer '{spec}': choose char, gpt2 or bpe:N (a byte-level BPE of N tokens)"
    if not (n.isdigit() and int(n) >= 256):
        return (
            f"tokenizer '{spec}': bpe:N needs a whole number N >= 256 (the 256 bytes come first), "
            "e.g. bpe:2048"
        )
    return None


def train_bpe(texts, size):
    """A byte-level BPE of at most `size` tokens trained on `texts` with Hugging Face tokenizers: GPT-2's
    pre-tokenizer (its regex, bytes shown as unicode) and decoder, the 256 bytes first, no special tokens
    (texts are joined without EOS, as char vocabularies), so decoding is exact for any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return tok


def bpe_codec(meta):
    """(encode, decode) of a bpe:N meta; [MASK] (id V) decodes as '_' between the decoded runs."""
    from tokenizers import Tokenizer

    tok, V = Tokenizer.from_str(json.dumps(meta['bpe'])), meta['vocab_size']

    def decode(ids):  # each run between [MASK]s decoded whole: a token may be half of a UTF-8 character
        ids = [int(i) for i in ids]
        cuts = [-1] + [k for k, i in enumerate(ids) if i >= V] + [len(ids)]
        return '_'.join(tok.decode(ids[a + 1 : b]) for a, b in zip(cuts, cuts[1:]))

    return (lambda s: tok.encode(s).ids), decode


def get_tokenizer(meta):
    """(encode, decode) for a prepared folder's meta dict."""
    if meta['tokenizer'] == 'gpt2':
        enc = gpt2_encoding()
        return enc.encode_ordinary, lambda ids: enc.decode([int(i) for i in ids])
    if meta['tokenizer'].startswith('bpe:'):
        return bpe_codec(meta)
    stoi = {ch: i for i, ch in enumerate(meta['chars'])}
    itos = meta['chars'] + ['_']  # the [MASK] id V decodes as '_'

    def encode(s):
        bad = next((ch for ch in s if ch not in stoi), None)
        if bad is not None:  # name the character: a bare KeyError would print just the character
            vocab = ''.join(meta['chars'])
            raise ValueError(
                f"character {bad!r} (U+{ord(bad):04X}) is not in this model's {len(vocab)}-character "
                f"vocabulary; use only these characters: {vocab!r}"
            )
        return [stoi[ch] for ch in s]

    return encode, (lambda ids: ''.join(itos[int(i)] for i in ids))


def checkpoint_codec(ckpt_path, vocab_size, meta_path='', trust=False):
    """(encode, decode, train config) of a checkpoint: the tokenizer of its data (the meta dict train.py
    stores in it, or the meta.json at meta_path), GPT-2 BPE for 50257-token models, else (None, None, config):
    ids only. trust: as checkpoint_io.load."""
    try:  # mmap: reading the dicts does not load the weights a second time
        ck = checkpoint_io.load(ckpt_path, trust, mmap=True)
    except Exception:  # MDLM .safetensors / hub ids carry no meta
        ck = {}
    ck = ck if isinstance(ck, dict) else {}
    meta = load_meta(os.path.dirname(meta_path) or '.') if meta_path else ck.get('meta')
    if meta and meta['vocab_size'] == vocab_size:
        return (*get_tokenizer(meta), ck.get('config') or {})
    if vocab_size == 50257:
        return (*get_tokenizer(dict(tokenizer='gpt2')), ck.get('config') or {})
    return None, None, ck.get('config') or {}


def prompt_ids(encode, prompt, suffix, L, mask_id):
    """(L,) ids of a sampling template: the prompt at the start, the suffix at the end, mask_id between (None
    without either)."""
    if not (prompt or suffix):
        return None
    if encode is None:
        raise ValueError(
            "cannot encode --prompt/--suffix: no tokenizer found (pass --meta path/to/meta.json)"
        )
    try:
        pre, suf = encode(prompt), encode(suffix)
    except ValueError as e:  # a character outside a char vocabulary
        raise ValueError(f"--prompt/--suffix: {e}")
    if len(pre) + len(suf) > L:
        raise ValueError(f"the prompt ({len(pre) + len(suf)} tokens) is longer than the sequence (L = {L})")
    x = torch.full((L,), mask_id, dtype=torch.long)
    x[: len(pre)] = torch.tensor(pre, dtype=torch.long)
    if suf:
        x[L - len(suf) :] = torch.tensor(suf, dtype=torch.long)
    return x


def folder_error(path, flag='--out_dir'):
    """None if `path` is a folder or can be made one, else why not, naming the command-line flag. The CLIs
    check their output folders before any work: a bad one fails at once, not after training, and writes
    nothing."""
    p = os.path.abspath(path)
    while not os.path.exists(p):  # the nearest existing ancestor
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        return f"{flag} {path}: {p} is a file, not a folder; choose another {flag}"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{flag} {path}: the folder {p} is not writable; choose another {flag}"
    return None


def load_meta(data_dir):
    with open(os.path.join(data_dir, 'meta.json')) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Preparation


def _fetch(url, dest, offline_hint):
    """Download url to dest; offline (or any failure) is one line naming the file to provide."""
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(url, timeout=15) as r, open(dest + '.tmp', 'wb') as f:
            bar = tqdm(
                total=int(r.headers.get('Content-Length') or 0),
                unit='B',
                unit_scale=True,
                desc=f'download {os.path.basename(url)}',
            )
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
            bar.close()
        os.replace(dest + '.tmp', dest)
    except Exception as e:
        raise SystemExit(f"data: could not download {url} ({type(e).__name__}); offline, {offline_hint}")


def _write_meta(out_dir, meta):
    path = os.path.join(out_dir, 'meta.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(path + '.tmp', path)


def _write(out_dir, splits, meta):
    """splits: {name: 1-D int array}. Writes <name>.bin atomically, then meta.json."""
    os.makedirs(out_dir, exist_ok=True)
    dtype = np.uint16 if meta['vocab_size'] < 65536 else np.uint32
    for name, ids in splits.items():
        path = os.path.join(out_dir, f'{name}.bin')
        np.asarray(ids, dtype=dtype).tofile(path + '.tmp')
        os.replace(path + '.tmp', path)
        meta[f'{name}_tokens'] = int(len(ids))
    meta.update(mask_id=meta['vocab_size'], dtype=np.dtype(dtype).name)
    _write_meta(out_dir, meta)
    print(
        f"data: {out_dir}: vocab {meta['vocab_size']}, "
        + ', '.join(f"{k} {len(v):,} tokens" for k, v in splits.items())
    )
    return meta


def _encode_texts(texts, tokenizer, chars=None, desc='encode', bpe=None):
    """Concatenate and encode a list of texts. char: ids into `chars`; gpt2: EOS after each text; bpe: the
    trained tokenizer `bpe`, each text whole (so the ids are exactly those of encode(text))."""
    from tqdm import tqdm

    if bpe is not None:
        return np.array(
            [i for t in tqdm(texts, desc=desc, disable=len(texts) < 100) for i in bpe.encode(t).ids],
            dtype=np.int64,
        )
    if tokenizer == 'char':
        table = {ch: i for i, ch in enumerate(chars)}
        out = []
        for t in texts:
            for i in tqdm(range(0, len(t), 1 << 20), desc=desc, disable=len(t) < 1 << 22):
                out.append(np.fromiter((table[ch] for ch in t[i : i + (1 << 20)]), dtype=np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)
    enc = gpt2_encoding()
    ids = []
    for t in tqdm(texts, desc=desc, disable=len(texts) < 100):
        ids.extend(enc.encode_ordinary(t))
        ids.append(enc.eot_token)
    return np.array(ids, dtype=np.int64)


def prepare_text(texts, out_dir, tokenizer='char', source='', val_frac=0.1, chars=None):
    """Local text(s) -> out_dir: the last val_frac of each text's characters is validation (nanoGPT's
    90/10 split for shakespeare_char); char vocabulary = the sorted set of characters seen; bpe:N = a
    byte-level BPE trained on the training split alone."""
    if err := tokenizer_error(tokenizer or 'char'):
        raise SystemExit(f"data: {err}")
    sha = hashlib.sha256(''.join(texts).encode()).hexdigest()
    cut = [int(len(t) * (1 - val_frac)) for t in texts]
    train, val = [t[:c] for t, c in zip(texts, cut)], [t[c:] for t, c in zip(texts, cut)]
    bpe = None
    if tokenizer.startswith('bpe:'):
        bpe = train_bpe(train, int(tokenizer[4:]))
        os.makedirs(out_dir, exist_ok=True)
        bpe.save(os.path.join(out_dir, 'tokenizer.json'))
        meta = dict(
            tokenizer=tokenizer,
            vocab_size=bpe.get_vocab_size(),
            eos=None,
            bos=None,
            tokenizer_file='tokenizer.json',
            bpe=json.loads(bpe.to_str()),
        )
        if meta['vocab_size'] < int(tokenizer[4:]):  # a small corpus runs out of pairs to merge
            print(f"data: {tokenizer}: the training split allows only {meta['vocab_size']} tokens")
    elif tokenizer == 'char':
        chars = chars or sorted(set(''.join(texts)))
        meta = dict(tokenizer='char', vocab_size=len(chars), chars=chars, eos=None, bos=None)
    else:
        meta = dict(tokenizer='gpt2', vocab_size=50257, eos=50256, bos=None)  # MDLM: V+1 = 50258 with [MASK]
    meta.update(source=source, sha256=sha)
    splits = dict(
        train=_encode_texts(train, tokenizer, chars, 'encode train', bpe),
        val=_encode_texts(val, tokenizer, chars, 'encode val', bpe),
    )
    return _write(out_dir, splits, meta)


def read_files(paths):
    texts = []
    for p in paths:
        if not os.path.isfile(p):
            what = f"'{p}' is a folder" if os.path.isdir(p) else f"no such file '{p}'"
            raise SystemExit(f"data: {what} (--data takes comma-separated local text files)")
        with open(p, encoding='utf-8', errors='replace') as f:
            texts.append(f.read())
        if not texts[
            -1
        ]:  # checked before anything is written: an empty vocabulary fails much later, unclearly
            raise SystemExit(f"data: {p} is empty; --data needs text files with something to train on")
    return texts


def files_sha256(paths):
    return hashlib.sha256(''.join(read_files(paths)).encode()).hexdigest()


def prepare_text8(out_dir):
    import zipfile

    raw = os.path.join(out_dir, 'text8')
    if not os.path.exists(raw):
        os.makedirs(out_dir, exist_ok=True)
        _fetch(TEXT8_URL, raw + '.zip', f"unzip text8.zip (from {TEXT8_URL}) to {raw}")
        with zipfile.ZipFile(raw + '.zip') as z:
            z.extract('text8', out_dir)
    with open(raw, 'rb') as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    chars = ' abcdefghijklmnopqrstuvwxyz'
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.frombuffer(chars.encode(), np.uint8)] = np.arange(27)
    ids = lut[data]
    if (ids == 255).any():
        raise SystemExit(f"data: {raw} is not text8 (characters outside ' a-z')")
    meta = dict(
        tokenizer='char',
        vocab_size=27,
        chars=list(chars),
        eos=None,
        bos=None,
        source=TEXT8_URL,
        sha256=hashlib.sha256(data.tobytes()).hexdigest(),
    )
    return _write(
        out_dir, dict(train=ids[:90_000_000], val=ids[90_000_000:95_000_000], test=ids[95_000_000:]), meta
    )


def prepare_openwebtext(out_dir, num_proc=8):
    """Hugging Face openwebtext, last 100k documents = validation (MDLM's openwebtext-split); GPT-2 BPE
    with EOS after every document. Tokens are streamed into the .bin files in shards (nanoGPT)."""
    from tqdm import tqdm

    try:
        from datasets import load_dataset

        ds = load_dataset(OWT_HF, split='train', num_proc=num_proc)
    except Exception as e:
        raise SystemExit(
            f"data: could not load the Hugging Face dataset {OWT_HF} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''}); offline, set HF_DATASETS_OFFLINE=1 "
            f"with a populated HF_HOME cache, or pass --data with local .txt files"
        )
    enc = gpt2_encoding()
    n = len(ds)
    parts = dict(train=ds.select(range(n - OWT_VAL_DOCS)), val=ds.select(range(n - OWT_VAL_DOCS, n)))
    os.makedirs(out_dir, exist_ok=True)
    meta = dict(
        tokenizer='gpt2',
        vocab_size=50257,
        eos=50256,
        bos=None,
        source=OWT_HF,
        sha256=None,
        mask_id=50257,
        dtype='uint16',
    )
    for name, part in parts.items():

        def tokenize(ex):
            ids = enc.encode_ordinary(ex['text']) + [enc.eot_token]
            return {'ids': ids, 'len': len(ids)}

        tok = part.map(tokenize, remove_columns=['text'], num_proc=num_proc, desc=f'tokenize {name}')
        lens = np.asarray(tok['len'], dtype=np.int64)
        path = os.path.join(out_dir, f'{name}.bin')
        arr = np.memmap(path + '.tmp', dtype=np.uint16, mode='w+', shape=(int(lens.sum()),))
        pos, shards = 0, min(len(tok), 1024 if name == 'train' else 16)
        for i in tqdm(range(shards), desc=f'write {name}.bin'):
            shard = tok.shard(num_shards=shards, index=i, contiguous=True).with_format('numpy')
            ids = np.concatenate(shard['ids'])
            arr[pos : pos + len(ids)] = ids
            pos += len(ids)
        arr.flush()
        del arr
        os.replace(path + '.tmp', path)
        meta[f'{name}_tokens'] = int(lens.sum())
        print(f"data: {name}: {len(part):,} documents, {int(lens.sum()):,} tokens")
    _write_meta(out_dir, meta)
    return meta


def prepare(dataset='shakespeare_char', data='', tokenizer='', out_dir=''):
    """Prepare a folder and return its meta. `data`: comma-separated local files (override the
    named dataset's download); out_dir '' = data/<dataset>."""
    out_dir = out_dir or default_dir(dataset)
    tokenizer = tokenizer or DEFAULT_TOKENIZER.get(dataset, 'char')
    if data:
        paths = [p for p in data.split(',') if p]
        return prepare_text(
            read_files(paths), out_dir, tokenizer, source=','.join(os.path.abspath(p) for p in paths)
        )
    if dataset == 'shakespeare_char':
        raw = os.path.join(out_dir, 'input.txt')
        if not os.path.exists(raw):
            os.makedirs(out_dir, exist_ok=True)
            _fetch(
                SHAKESPEARE_URL,
                raw,
                f"copy tinyshakespeare.txt (any tiny-shakespeare input.txt) "
                f"to {raw}, or pass --data path/to/file.txt",
            )
        return prepare_text(read_files([raw]), out_dir, tokenizer, source=SHAKESPEARE_URL)
    if dataset == 'text8':
        return prepare_text8(out_dir)
    if dataset == 'openwebtext':
        return prepare_openwebtext(out_dir)
    raise SystemExit(
        f"data: unknown dataset '{dataset}': choose shakespeare_char, text8, openwebtext, "
        f"or pass local files with --data a.txt[,b.txt]"
    )


def resolve_dir(dataset='shakespeare_char', data='', tokenizer='', data_dir=''):
    """data_dir if given; else data/<first file's stem>_<tokenizer> for --data files, else data/<dataset>."""
    if data_dir:
        return data_dir
    if data:
        stem = os.path.splitext(os.path.basename(data.split(',')[0]))[0]
        return default_dir(f"{stem}_{(tokenizer or 'char').replace(':', '')}")  # bpe:2048 -> <stem>_bpe2048
    return default_dir(dataset)


def ensure(dataset='shakespeare_char', data='', tokenizer='', data_dir=''):
    """Resolve the prepared folder for a training config, preparing it if missing (or if the --data
    files changed since). Returns (data_dir, meta)."""
    data_dir = resolve_dir(dataset, data, tokenizer, data_dir)
    if os.path.exists(os.path.join(data_dir, 'meta.json')):
        meta = load_meta(data_dir)
        fresh = (not data or meta.get('sha256') == files_sha256([p for p in data.split(',') if p])) and (
            not tokenizer or meta['tokenizer'] == tokenizer
        )
        if fresh:
            return data_dir, meta
    return data_dir, prepare(dataset, data, tokenizer, data_dir)


# ---------------------------------------------------------------------------------------------
# Batches


def get_batch(data_dir, split, batch_size, block_size, rng, dtype='uint16', device='cpu'):
    """(batch_size, block_size) int64 random windows of split.bin. The memmap is reopened on every call
    (as nanoGPT: a long-lived np.memmap keeps growing resident memory). rng: np.random.Generator, so a batch
    is a pure function of the caller's seed: that is what makes resume and DDP reproducible."""
    data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=dtype, mode='r')
    if len(data) < block_size:
        raise SystemExit(f"data: {split}.bin has {len(data)} tokens, fewer than block_size={block_size}")
    ix = rng.integers(0, len(data) - block_size + 1, size=batch_size)
    x = torch.from_numpy(np.stack([data[i : i + block_size].astype(np.int64) for i in ix]))  # (B, L)
    if device != 'cpu' and torch.device(device).type == 'cuda':
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


if __name__ == '__main__':
    import argparse

    ap = argparse.ArgumentParser(description='prepare a dataset into train.bin / val.bin / meta.json')
    ap.add_argument(
        'dataset', nargs='?', default='shakespeare_char', help='shakespeare_char | text8 | openwebtext'
    )
    ap.add_argument('--data', default='', help='comma-separated local text files (override the download)')
    ap.add_argument(
        '--tokenizer',
        default='',
        help="char | gpt2 | bpe:N (trained on the training split); '' = the dataset's default",
    )
    ap.add_argument('--out_dir', default='', help="'' = data/<dataset>")
    ap.error = lambda msg: ap.exit(2, f"data.py: error: {msg}\n")  # one line, no usage dump
    a = ap.parse_args()
    if a.out_dir and (err := folder_error(a.out_dir)) or (err := tokenizer_error(a.tokenizer)):
        ap.error(err)
    prepare(a.dataset, a.data, a.tokenizer, resolve_dir(a.dataset, a.data, a.tokenizer, a.out_dir))
