"""
Every figure the project draws, one small function each, from plain data (lists, dicts, tensors) that the science
files return. matplotlib is imported here alone, lazily (Agg, no display), so sampling, training and scoring never
need it; each figure is written to a temporary file and renamed, so a kill never leaves a torn PNG.

    trajectory   one sample's refinement, rows = denoiser calls (sample.py --trajectory)
    toy_repair   the toy's draft repair per arm (toy.py, paper Fig. 3)
    sweep        MAUVE and generative perplexity against NFE (sweep.py)
    reliability  a reliability diagram per SNR or mask rate (probe.py calibration)
"""
import importlib.util
import os
import sys
import textwrap

RED, PINK, GREY = '#d62728', '#fbd5d5', '#bbbbbb'


def check():
    """Fail now, with one line, if matplotlib is missing (a long run checks before its work, not after)."""
    if sys.modules.get('matplotlib', 0) is None or importlib.util.find_spec('matplotlib') is None:
        raise ImportError("figures need the optional package 'matplotlib': pip install matplotlib")


def _plt():
    check()
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi):
    plt = _plt()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=dpi)
    os.replace(path + '.tmp.png', path)
    plt.close(fig)
    return path


def _token_grid(ax, cells, fontsize=7):
    """cells[k][i] = (text, colour, pink background?, bold?): row k = a denoiser call, column i = a position."""
    plt = _plt()
    K, L = len(cells), len(cells[0])
    for k, row in enumerate(cells):
        for i, (text, colour, shade, bold) in enumerate(row):
            if shade:
                ax.add_patch(plt.Rectangle((i - .5, k - .5), 1, 1, color=PINK, lw=0))
            ax.text(i, k, text, ha='center', va='center', fontsize=fontsize, family='monospace', color=colour,
                    weight='bold' if bold else 'normal')
    ax.set(xlim=(-.5, L - .5), ylim=(K - .5, -.5))
    ax.tick_params(length=0, labelsize=7)
    for sp in ax.spines.values():
        sp.set_visible(False)


def trajectory(states, mask_id, piece, path, title=''):
    """One sample's refinement (the toy's Fig. 3 on real text): states = the (L,) ids after each call, piece(id) ->
    its text. Grey '_' = hidden; bold = revealed at this call; red on pink = remasked at this call (visible before,
    hidden now) or replaced by another token."""
    plt = _plt()
    S = [[int(v) for v in s] for s in states]  # (K, L)
    K, L = len(S), len(S[0])
    show = lambda v: piece(v).replace('\n', '⏎').replace(' ', '·')[:6] or '?'
    cells = []
    for k in range(K):
        row = []
        for i in range(L):
            v, prev = S[k][i], S[k - 1][i] if k else mask_id
            if v == mask_id:
                bad = prev != mask_id  # remasked now
                row.append(('_', RED if bad else GREY, bad, False))
            else:
                changed = prev != mask_id and prev != v
                row.append((show(v), RED if changed else 'black', changed, prev != v))
        cells.append(row)
    w = max(1, max(len(c[0]) for c in cells[-1]))  # the widest final token sets the column width
    fig, ax = plt.subplots(figsize=(0.11 * w * L + 1, 0.2 * K + 1))
    _token_grid(ax, cells)
    ax.set(xlabel='position', ylabel='denoiser call')
    ax.set_yticks(range(0, K, max(1, K // 16)))
    ax.set_title(title + '\nbold = revealed now, red = remasked or replaced now, grey _ = hidden', fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 110)


def toy_repair(panels, path, suptitle):
    """Tokens by call for each arm of the toy: panels = [(title, cells)], cells as _token_grid's."""
    plt = _plt()
    K, L = len(panels[0][1]), len(panels[0][1][0])
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 0.32 * K + 1.1))
    for ax, (title, cells) in zip(axes, panels):
        _token_grid(ax, cells, fontsize=11)
        ax.set_xticks(range(L), [str(i) for i in range(L)], fontsize=7)
        ax.set_yticks(range(K), [str(k) for k in range(K)], fontsize=7)
        ax.set_xlabel('position', fontsize=7)
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel('denoiser call (0 = draft)', fontsize=8)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return _save(fig, path, 130)


def sweep(rows, path, title):
    """MAUVE and generative perplexity against NFE (log x), one line per (model, sampler): colour = sampler, line
    style = model, so 15 lines stay tellable apart; the reference data and the AR model as horizontal lines.
    rows: dicts with model, sampler, nfe, mauve, gen_ppl (strings or numbers)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    names = list(dict.fromkeys(r['model'] for r in rows if r['model'] != 'reference' and r['sampler'] != 'ar'))
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    colour = lambda s: plt.cm.tab20(samplers.index(s) % 20)
    style = lambda name: ('-', '--', ':', '-.')[names.index(name) % 4]
    for ax, col in zip(axes, ('mauve', 'gen_ppl')):
        series = {}
        for r in rows:
            series.setdefault((r['model'], r['sampler']), []).append((float(r['nfe']), float(r[col])))
        for (name, s), pts in series.items():
            if name == 'reference' or s == 'ar':
                ax.axhline(pts[0][1], ls='--', lw=1, color='k' if name == 'reference' else 'gray',
                           label='reference data' if name == 'reference' else f'{name} (AR, {pts[0][0]:g} NFE)')
            else:
                ax.plot(*zip(*sorted(pts)), marker='o', ms=3, color=colour(s), ls=style(name), label=f'{name} {s}')
        ax.set(xscale='log', xlabel='NFE (denoiser calls)', ylabel=col.replace('_', ' '))
        if col == 'gen_ppl':
            ax.set_yscale('log')
    axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))  # outside: many lines
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 90)


def reliability(rows, path, title=''):
    """Accuracy against confidence per level; rows: dicts with level, value, ece and bins [(lo, hi, n, conf, acc)]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], 'k:', lw=1)
    for r in rows:
        ax.plot([b[3] for b in r['bins']], [b[4] for b in r['bins']], 'o-', ms=3,
                label=f"{r['level']} = {r['value']:g}: ECE {r['ece']:.3f}")
    ax.set(xlabel='confidence (max probability)', ylabel='accuracy', title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, 100)
