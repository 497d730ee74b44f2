"""Offline test setup: no hub access, GPT-2 BPE files from ../shared/tiktoken (copied to a writable
place, because tiktoken deletes cached files it cannot verify and CI lays shared/ read-only)."""
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), 'shared')
sys.path.insert(0, ROOT)
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
if 'TIKTOKEN_CACHE_DIR' not in os.environ and os.path.isdir(os.path.join(SHARED, 'tiktoken')):
    cache = os.path.join(tempfile.gettempdir(), 'dsl-tiktoken-cache')
    shutil.copytree(os.path.join(SHARED, 'tiktoken'), cache, dirs_exist_ok=True)
    os.environ['TIKTOKEN_CACHE_DIR'] = cache

# the tiny-shakespeare text for data/train tests: ../shared/data (CI), else a quick-start copy; else skip
SHAKESPEARE = next((p for p in (os.path.join(SHARED, 'data', 'tinyshakespeare.txt'),
                                os.path.join(ROOT, 'data', 'shakespeare_char', 'input.txt')) if os.path.exists(p)), None)
