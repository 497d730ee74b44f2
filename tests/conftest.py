"""Offline test setup: no hub access, GPT-2 BPE files from ../shared/tiktoken (copied to a writable
place, because tiktoken deletes cached files it cannot verify and CI lays shared/ read-only)."""

import os
import random
import shutil
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
sys.path.insert(0, ROOT)
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(os.path.join(SHARED, 'tiktoken')):
    cache = os.path.join(tempfile.gettempdir(), 'dsl-tiktoken-cache')
    shutil.copytree(os.path.join(SHARED, 'tiktoken'), cache, dirs_exist_ok=True)
    os.environ['TIKTOKEN_CACHE_DIR'] = cache

# the real tiny-shakespeare text, for the few checks that need it: ../shared/data (CI), else a quick-start
# copy; else those checks skip. Everything else runs on the generated corpus below, so a bare clone tests it
# too.
SHAKESPEARE = next(
    (
        p
        for p in (
            os.path.join(SHARED, 'data', 'tinyshakespeare.txt'),
            os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt'),
        )
        if os.path.exists(p)
    ),
    None,
)


WORDS = (
    'the king queen lord lady good night day love death heart hand blood crown sword fair sweet noble '
    'speak come go make know see hear tell give take stay fly weep swear pray what why how where now then '
    'thou thee thy my mine his her our your not no yes and but or if so for with upon from to of in'
).split()
NAMES = ('ROMEO', 'JULIET', 'KING HENRY', 'LADY ANNE', 'FIRST CITIZEN', 'GLOUCESTER', 'NURSE', 'MERCUTIO')


def make_corpus(n_chars=200_000, seed=0):
    """A play-shaped text from a fixed word list and a seeded first-order chain over words: speakers, lines,
    punctuation. It has the structure a tiny model learns in a few steps, is the same on every machine, and
    needs no download."""
    rng = random.Random(seed)
    nxt = {w: rng.sample(WORDS, 6) for w in WORDS}  # each word is followed by one of six others
    out, n = [], 0
    while n < n_chars:
        lines = []
        for _ in range(rng.randint(1, 4)):
            w, line = rng.choice(WORDS), []
            for _ in range(rng.randint(4, 10)):
                line.append(w)
                w = rng.choice(nxt[w])
            lines.append(' '.join(line).capitalize() + rng.choice(',.;!?'))
        block = f"{rng.choice(NAMES)}:\n" + '\n'.join(lines) + '\n\n'
        out.append(block)
        n += len(block)
    return ''.join(out)


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
    """Path of the generated corpus as a text file."""
    path = tmp_path_factory.mktemp('corpus') / 'play.txt'
    path.write_text(make_corpus(), encoding='utf-8')
    return str(path)
