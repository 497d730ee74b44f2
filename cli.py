"""
train.py's command line, generated from its config dict (nanoGPT's configurator.py is the precedent):
every key of the dict is a flag, `--key value`, `--key=value` or a bare `--flag` for booleans, typed by its
default, and `-h` prints the config block with each key's default and comment. A bad value is one line on
stderr and exit status 2, before any work.

The valid ranges are written in interval notation, (lo, hi, brackets): '[' and ']' include the bound, '(' and
')' exclude it, and NaN lies in no range. in_range and interval are the one range checker of the project
(rules.check_options checks the sampler's knobs with them).
"""

import math
import os
import re
import sys

import common
import data
import model
import noise

INF = math.inf
# the types of the keys whose default is None (auto)
AUTO_TYPES = dict(
    n_layer=int,
    n_embd=int,
    n_head=int,
    gamma_max=float,
    gamma_min=float,
    p_end=float,
    reveal_floor=float,
    log_snr_mean=float,
    log_snr_std=float,
    jitter=float,
    smooth_endpoints=bool,
    ema_warmup=bool,
)
CHOICES = dict(
    objective=('dsl', 'mdlm', 'ar'),
    lr_decay=('constant', 'cosine'),
    preset=tuple(model.PRESETS),
    eval_bound=('', 'mdlm'),
)
POSITIVE = (
    'block_size',
    'batch_size',
    'eval_interval',
    'eval_windows',
    'eval_grid',
    'log_interval',
    'ckpt_interval',
)
RANGES = dict(
    n_layer=(1, INF, '[)'),
    n_embd=(1, INF, '[)'),
    n_head=(1, INF, '[)'),
    noise_dim=(0, INF, '[)'),
    dropout=(0, 1, '[)'),
    gamma_max=(0, INF, '()'),
    gamma_min=(0, INF, '[)'),
    p_end=(0, 1, '[]'),
    reveal_floor=(0, 1, '[]'),
    log_snr_mean=(-INF, INF, '()'),
    log_snr_std=(0, INF, '[)'),
    jitter=(0, INF, '[)'),
    roar_weight=(0, INF, '[)'),
    max_iters=(0, INF, '[)'),
    lr=(0, INF, '()'),
    min_lr=(0, INF, '[)'),
    warmup_iters=(0, INF, '[)'),
    weight_decay=(0, INF, '[)'),
    beta1=(0, 1, '[)'),
    beta2=(0, 1, '[)'),
    grad_clip=(0, INF, '[)'),
    ema_decay=(0, 1, '[)'),
    # numpy seeds are >= 0
    seed=(0, INF, '[)'),
    grad_accum=(0, INF, '[)'),
    lookup_topk=(-1, INF, '[)'),
    patience=(0, INF, '[)'),
    min_delta=(0, INF, '[)'),
    patience_from=(0, INF, '[)'),
)


def in_range(v, bounds):
    """Does v lie in bounds = (lo, hi, brackets), e.g. (0, 1, '[)') for 0 <= v < 1? NaN lies in none."""
    lo, hi, brackets = bounds
    above = lo <= v if brackets[0] == '[' else lo < v
    below = v <= hi if brackets[1] == ']' else v < hi
    return above and below


def interval(bounds):
    """bounds as a reader writes them: (0, inf, '[)') -> '[0, inf)'."""
    lo, hi, brackets = bounds
    return f"{brackets[0]}{lo}, {hi}{brackets[1]}"


def die(msg, code=1):
    """User errors: one line on stderr, no traceback."""
    print(f"train.py: {msg}", file=sys.stderr)
    sys.exit(code)


def usage():
    """-h: the config block of train.py, key by key with its default and comment."""
    src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')).read()
    start = src.index('config = dict(')
    out = [
        'usage: python train.py [--key value | --key=value ...]   '
        '(DDP: torchrun --nproc_per_node=N train.py ...)'
    ]
    for line in src[start : src.index('\n)\n', start)].splitlines()[1:]:
        m = re.match(r"\s*(\w+)=(.*?),\s*#\s?(.*)", line)
        out.append(f"  --{m[1]:<17} {m[2]:<19} {m[3]}" if m else line.strip())
    return '\n'.join(out)


def parse_args(argv, config):
    """--key value | --key=value | --flag (bools), for the keys of config. Returns {key: typed value} of the
    keys given. The SNR keys' old names (--mu, --sigma, --c: noise.OLD_SNR_KEYS) still work."""
    given, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a in ('-h', '--help'):
            print(usage())
            sys.exit(0)
        key, eq, val = a[2:].partition('=')
        key = noise.OLD_SNR_KEYS.get(key, key)
        if not a.startswith('--') or key not in config:
            die(f"unknown key '{a}'; valid keys: {', '.join('--' + k for k in config)}", 2)
        if not eq:
            if type(config[key]) is bool and (i + 1 == len(argv) or argv[i + 1].startswith('--')):
                # a bare boolean flag
                val = 'true'
            elif i + 1 == len(argv):
                die(f"--{key} needs a value ({(AUTO_TYPES.get(key) or type(config[key])).__name__})", 2)
            else:
                i += 1
                val = argv[i]
        given[key] = convert(key, val, config)
        i += 1
    return given


def convert(key, val, config):
    """The string val of --key as the key's type, checked against its choices and range (else exit 2)."""
    typ = AUTO_TYPES.get(key) or type(config[key])
    if config[key] is None and val.lower() in ('none', 'auto'):
        return None
    if typ is bool:
        if val.lower() not in ('true', 'false', '1', '0', 'yes', 'no'):
            die(f"--{key} expects bool, got '{val}'", 2)
        v = val.lower() in ('true', '1', 'yes')
    else:
        try:
            v = typ(val)
        except ValueError:
            die(f"--{key} expects {typ.__name__}, got '{val}'", 2)
    if key in POSITIVE and v < 1:
        die(f"--{key} expects a positive int, got '{val}'", 2)
    if key in CHOICES and v not in CHOICES[key]:
        die(f"--{key} expects one of {', '.join(repr(c) for c in CHOICES[key])}, got '{val}'", 2)
    if key in RANGES and not in_range(v, RANGES[key]):
        kind = 'an int' if typ is int else 'a number'
        die(f"--{key} expects {kind} in {interval(RANGES[key])}, got '{val}'", 2)
    if key == 'tokenizer' and (err := data.tokenizer_error(v)):
        die(f"--tokenizer: {err}", 2)
    if key == 'device' and v != 'auto' and (err := common.device_error(v)):
        die(err + " (or auto)", 2)
    return v


def check_paths(cfg):
    """Folders the run writes and the checkpoint it starts from, checked before any work: a bad one fails at
    once (not after data preparation or training) and nothing is written."""
    for key in ('out_dir', 'data_dir'):
        if cfg[key] and (err := data.folder_error(cfg[key], f'--{key}')):
            die(err, 2)
    src = cfg['init_from']
    hub_id = src.count('/') == 1 and not src.startswith(('.', '/'))
    if src not in ('scratch', 'resume') and not os.path.exists(src) and not hub_id:
        die(f"--init_from {src}: no such file; pass scratch, resume, a checkpoint file or a hub id", 2)
