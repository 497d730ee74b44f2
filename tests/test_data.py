"""data.py: preparation (char and gpt2), batches, offline errors; on the generated corpus, plus one check
against nanoGPT's numbers that needs the real tiny-shakespeare text."""

import hashlib
import json
import os
import urllib.error

import numpy as np
import pytest
import torch

import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from conftest import SHAKESPEARE


@pytest.fixture(scope='module')
def prepared(tmp_path_factory, corpus):
    d = str(tmp_path_factory.mktemp('play_char'))
    data.prepare(data=corpus, out_dir=d)
    return d


@pytest.mark.skipif(
    SHAKESPEARE is None, reason='needs the real tinyshakespeare.txt (data/shakespeare_char/input.txt)'
)
def test_shakespeare_char_matches_nanogpt(tmp_path):
    prepared = str(tmp_path)
    data.prepare(data=SHAKESPEARE, out_dir=prepared)
    meta = data.load_meta(prepared)
    # nanoGPT's data/shakespeare_char/prepare.py: 65 characters, 90/10 split
    assert (meta['vocab_size'], meta['train_tokens'], meta['val_tokens']) == (65, 1_003_854, 111_540)
    assert meta['mask_id'] == 65 and meta['tokenizer'] == 'char' and meta['dtype'] == 'uint16'
    text = open(SHAKESPEARE, encoding='utf-8').read()
    assert meta['sha256'] == hashlib.sha256(text.encode()).hexdigest()
    train = np.fromfile(os.path.join(prepared, 'train.bin'), dtype=np.uint16)
    val = np.fromfile(os.path.join(prepared, 'val.bin'), dtype=np.uint16)
    _, decode = data.get_tokenizer(meta)
    assert decode(train[:200]) == text[:200] and decode(val[-50:]) == text[-50:]
    assert decode([65]) == '_'  # [MASK]


def test_char_preparation_round_trips(prepared, corpus):
    meta = data.load_meta(prepared)
    text = open(corpus, encoding='utf-8').read()
    n_train = int(len(text) * 0.9)
    assert (meta['vocab_size'], meta['train_tokens'], meta['val_tokens']) == (
        len(set(text)),
        n_train,
        len(text) - n_train,
    )
    assert meta['mask_id'] == meta['vocab_size'] and meta['chars'] == sorted(set(text))
    assert meta['sha256'] == hashlib.sha256(text.encode()).hexdigest()
    _, decode = data.get_tokenizer(meta)
    train = np.fromfile(os.path.join(prepared, 'train.bin'), dtype=np.uint16)
    val = np.fromfile(os.path.join(prepared, 'val.bin'), dtype=np.uint16)
    assert decode(train) == text[:n_train] and decode(val) == text[n_train:]


def test_batches_are_seeded_windows(prepared, corpus):
    meta = data.load_meta(prepared)
    text = open(corpus, encoding='utf-8').read()
    encode, decode = data.get_tokenizer(meta)
    x = data.get_batch(prepared, 'train', 8, 32, np.random.default_rng(5), meta['dtype'])
    assert x.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x, data.get_batch(prepared, 'train', 8, 32, np.random.default_rng(5), meta['dtype']))
    assert not torch.equal(
        x, data.get_batch(prepared, 'train', 8, 32, np.random.default_rng(6), meta['dtype'])
    )
    for row in x:
        assert decode(row) in text[: int(len(text) * 0.9)]
    assert decode(encode('FIRST CITIZEN: thou')) == 'FIRST CITIZEN: thou'


def test_gpt2_local_files(tmp_path):
    a, b = tmp_path / 'a.txt', tmp_path / 'b.txt'
    a.write_text('Hello world. ' * 40)
    b.write_text('The quick brown fox. ' * 40)
    d = str(tmp_path / 'prep')
    data_dir, meta = data.ensure(data=f'{a},{b}', tokenizer='gpt2', data_dir=d)
    assert data_dir == d and meta['vocab_size'] == 50257 and meta['mask_id'] == 50257 and meta['eos'] == 50256
    train = np.fromfile(os.path.join(d, 'train.bin'), dtype=np.uint16)
    assert train[:2].tolist() == [15496, 995]  # "Hello world"
    assert (train == 50256).sum() == 2  # EOS after each file's training part
    _, decode = data.get_tokenizer(meta)
    assert decode(train[:4]) == 'Hello world. Hello'
    # a changed file is prepared again; an unchanged one is reused
    mtime = os.path.getmtime(os.path.join(d, 'meta.json'))
    assert data.ensure(data=f'{a},{b}', tokenizer='gpt2', data_dir=d)[1]['sha256'] == meta['sha256']
    assert os.path.getmtime(os.path.join(d, 'meta.json')) == mtime
    b.write_text('Something else. ' * 40)
    assert data.ensure(data=f'{a},{b}', tokenizer='gpt2', data_dir=d)[1]['sha256'] != meta['sha256']


def test_offline_shakespeare_is_one_clear_line(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(data.urllib.request, 'urlopen', offline)
    with pytest.raises(SystemExit) as e:
        data.prepare('shakespeare_char', out_dir=str(tmp_path / 'sc'))
    msg = str(e.value.code)
    assert '\n' not in msg and 'tinyshakespeare.txt' in msg and 'input.txt' in msg and '--data' in msg
    with pytest.raises(SystemExit) as e:
        data.prepare(data=str(tmp_path / 'missing.txt'), out_dir=str(tmp_path / 'm'))
    assert 'missing.txt' in str(e.value.code) and '\n' not in str(e.value.code)


def test_input_txt_is_used_when_present(tmp_path):
    d = tmp_path / 'sc'
    d.mkdir()
    (d / 'input.txt').write_text('abcabcabd\n' * 50)
    meta = data.prepare('shakespeare_char', out_dir=str(d))
    assert meta['vocab_size'] == 5 and json.load(open(d / 'meta.json'))['chars'] == ['\n', 'a', 'b', 'c', 'd']


def test_openwebtext_pipeline_on_a_stand_in(tmp_path, monkeypatch):
    """The openwebtext path (map, shards, memmap) on a 12-document stand-in for the hub dataset."""
    import datasets

    docs = [f'Document number {i}. ' * (i + 1) for i in range(12)]
    monkeypatch.setattr(datasets, 'load_dataset', lambda *a, **k: datasets.Dataset.from_dict({'text': docs}))
    monkeypatch.setattr(data, 'OWT_VAL_DOCS', 2)
    meta = data.prepare_openwebtext(str(tmp_path), num_proc=1)
    train = np.fromfile(tmp_path / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'val.bin', dtype=np.uint16)
    enc = data.gpt2_encoding()
    want = [t for d in docs[:10] for t in enc.encode_ordinary(d) + [50256]]
    assert train.tolist() == want and meta['train_tokens'] == len(want)
    assert (val == 50256).sum() == 2 and data.load_meta(str(tmp_path))['mask_id'] == 50257


def test_bpe_depends_on_the_training_split_alone_and_round_trips(tmp_path, corpus):
    """bpe:N trains on the training split only: changing only the validation text leaves the tokenizer (and
    the training ids) unchanged; decoding the validation split gives its text back exactly; the folder is
    reused."""
    text = open(corpus, encoding='utf-8').read()[:60_000]
    cut = int(len(text) * 0.9)  # prepare_text's 90/10 split
    a, b = tmp_path / 'a.txt', tmp_path / 'b.txt'
    a.write_text(text, encoding='utf-8')
    # a validation part that differs from a's, with characters the training part never had
    new_val = 'Zebras quietly juggle €uro signs; naïve café ☃!'[: len(text) - cut]
    b.write_text(text[:cut] + new_val.ljust(len(text) - cut, 'x'), encoding='utf-8')
    ma = data.prepare(data=str(a), tokenizer='bpe:300', out_dir=str(tmp_path / 'pa'))
    mb = data.prepare(data=str(b), tokenizer='bpe:300', out_dir=str(tmp_path / 'pb'))
    assert ma['tokenizer'] == 'bpe:300' and ma['vocab_size'] == 300 and ma['mask_id'] == 300
    assert ma['bpe'] == mb['bpe']  # the same merges: the validation text never reached the trainer
    assert (tmp_path / 'pa' / 'tokenizer.json').read_text() == (
        tmp_path / 'pb' / 'tokenizer.json'
    ).read_text()
    assert np.array_equal(
        np.fromfile(tmp_path / 'pa' / 'train.bin', np.uint16),
        np.fromfile(tmp_path / 'pb' / 'train.bin', np.uint16),
    )
    enc, dec = data.get_tokenizer(mb)
    val = np.fromfile(tmp_path / 'pb' / 'val.bin', np.uint16)
    assert dec(val) == b.read_text(encoding='utf-8')[cut:]  # exact, non-ASCII included (byte-level)
    val_a = np.fromfile(tmp_path / 'pa' / 'val.bin', np.uint16)
    assert dec(val_a) == text[cut:] and len(val_a) < 0.8 * (
        len(text) - cut
    )  # word pieces: fewer tokens than chars
    assert dec([*enc('the king'), 300, *enc(' speaks')]) == 'the king_ speaks'  # [MASK] shows as '_'
    # reuse: the same files, kind and size -> the folder as it is; another size -> prepared again
    stamp = os.path.getmtime(tmp_path / 'pa' / 'meta.json')
    assert data.ensure(data=str(a), tokenizer='bpe:300', data_dir=str(tmp_path / 'pa'))[1]['bpe'] == ma['bpe']
    assert os.path.getmtime(tmp_path / 'pa' / 'meta.json') == stamp
    assert (
        data.ensure(data=str(a), tokenizer='bpe:320', data_dir=str(tmp_path / 'pa'))[1]['vocab_size'] == 320
    )
    assert data.resolve_dir(data=str(a), tokenizer='bpe:300').endswith(os.path.join('data', 'a_bpe300'))


def test_bpe_spec_errors_are_one_line(tmp_path, corpus):
    for spec in ('bpe:x', 'bpe:0', 'bpe:100', 'bpe'):
        with pytest.raises(SystemExit, match='bpe:N|unknown tokenizer'):
            data.prepare(data=corpus, tokenizer=spec, out_dir=str(tmp_path / 'x'))
    assert not (tmp_path / 'x').exists()  # checked before anything is written


def test_a_prompt_encodes_through_bpe(tmp_path, corpus):
    meta = data.prepare(data=corpus, tokenizer='bpe:400', out_dir=str(tmp_path / 'p'))
    enc, dec = data.get_tokenizer(meta)
    x = data.prompt_ids(enc, 'ROMEO:\nThe king', ' is dead.', 32, meta['mask_id'])
    n_pre, n_suf = len(enc('ROMEO:\nThe king')), len(enc(' is dead.'))
    assert n_pre < len('ROMEO:\nThe king')  # word pieces, not characters
    assert dec(x[:n_pre].tolist()) == 'ROMEO:\nThe king' and dec(x[32 - n_suf :].tolist()) == ' is dead.'
    assert (x[n_pre : 32 - n_suf] == meta['mask_id']).all()
