"""
Every figure the project draws, one small function each, from plain data (lists, dicts, tensors) that the
science files return. matplotlib is imported here alone, lazily (Agg, no display), so sampling, training and
scoring never need it; each figure is written to a temporary file and renamed, so a kill never leaves a torn
PNG.

    trajectory   one sample's refinement, rows = denoiser calls (sample.py --trajectory)
    toy_repair   the toy's draft repair per arm (toy.py, paper Fig. 3)
    sweep        MAUVE and generative perplexity against NFE (sweep.py)
    frontier     generative NLL against entropy over top-p, one panel per T (repro.py: matched diversity)
    curves       validation bounds during training, one line per run (repro.py: convergence)
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


def _save(fig, path, dpi, colors=0):
    """Atomic write. colors > 0: a palette PNG of that many colours (Pillow, a matplotlib dependency), for
    token grids: a few flat colours, so the same pixels in a third of the bytes (a 128-token trajectory: 0.9
    -> 0.3 MB)."""
    plt = _plt()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=dpi)
    if colors:
        from PIL import Image

        with Image.open(path + '.tmp.png') as im:
            q = im.convert('RGB').quantize(colors=colors)
        q.save(path + '.tmp.png', optimize=True)
    os.replace(path + '.tmp.png', path)
    plt.close(fig)
    return path


def _token_grid(ax, cells, fontsize=7):
    """cells[k][i] = (text, colour, pink background?, bold?): row k = a denoiser call, column i = a
    position."""
    plt = _plt()
    K, L = len(cells), len(cells[0])
    for k, row in enumerate(cells):
        for i, (text, colour, shade, bold) in enumerate(row):
            if shade:
                ax.add_patch(plt.Rectangle((i - 0.5, k - 0.5), 1, 1, color=PINK, lw=0))
            ax.text(
                i,
                k,
                text,
                ha='center',
                va='center',
                fontsize=fontsize,
                family='monospace',
                color=colour,
                weight='bold' if bold else 'normal',
            )
    ax.set(xlim=(-0.5, L - 0.5), ylim=(K - 0.5, -0.5))
    ax.tick_params(length=0, labelsize=7)
    for sp in ax.spines.values():
        sp.set_visible(False)


def trajectory(states, mask_id, piece, path, title=''):
    """One sample's refinement (the toy's Fig. 3 on real text): states = the (L,) ids after each call,
    piece(id) -> its text. Grey '_' = hidden; bold = revealed at this call; red on pink = remasked at this
    call (visible before, hidden now) or replaced by another token."""
    plt = _plt()
    S = [[int(v) for v in s] for s in states]  # (K, L)
    K, L = len(S), len(S[0])
    # a byte-level token can be a control byte or half of a UTF-8 character: shown as '?', never a missing
    # glyph
    show = lambda v: (
        ''.join(c if c.isprintable() else '?' for c in piece(v).replace('\n', '⏎').replace(' ', '·'))[:6]
        or '?'
    )
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
    return _save(fig, path, 110, colors=32)


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
    """MAUVE and generative perplexity against NFE (log x), one line per (model, sampler): colour = sampler,
    line style = model, so 15 lines stay tellable apart; the reference data and the AR model as horizontal
    lines. rows: dicts with model, sampler, nfe, mauve, gen_ppl (strings or numbers)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    # one top-p per line (the reference row's: the sweep's first); the others belong to the frontier figure
    main_tp = next(
        (r.get('top_p') for r in rows if r['model'] == 'reference'), rows[0].get('top_p') if rows else None
    )
    rows = [r for r in rows if r.get('top_p') == main_tp or r['model'] == 'reference' or r['sampler'] == 'ar']
    title = f"{title}, top-p {main_tp}" if main_tp is not None else title
    names = list(
        dict.fromkeys(r['model'] for r in rows if r['model'] != 'reference' and r['sampler'] != 'ar')
    )
    samplers = list(dict.fromkeys(r['sampler'] for r in rows))
    colour = lambda s: plt.cm.tab20(samplers.index(s) % 20)
    style = lambda name: ('-', '--', ':', '-.')[names.index(name) % 4]
    for ax, col in zip(axes, ('mauve', 'gen_ppl')):
        series = {}
        for r in rows:
            series.setdefault((r['model'], r['sampler']), []).append((float(r['nfe']), float(r[col])))
        for (name, s), pts in series.items():
            if name == 'reference' or s == 'ar':
                ax.axhline(
                    pts[0][1],
                    ls='--',
                    lw=1,
                    color='k' if name == 'reference' else 'gray',
                    label='reference data' if name == 'reference' else f'{name} (AR, {pts[0][0]:g} NFE)',
                )
            else:
                ax.plot(
                    *zip(*sorted(pts)), marker='o', ms=3, color=colour(s), ls=style(name), label=f'{name} {s}'
                )
        ax.set(xscale='log', xlabel='NFE (denoiser calls)', ylabel=col.replace('_', ' '))
        if col == 'gen_ppl':
            ax.set_yscale('log')
    axes[1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1))  # outside: many lines
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 90)


def frontier(curves, path, title, ref_entropy=None, marks=()):
    """Generative NLL against entropy, one panel per T and one line per (model, sampler), each point a top-p
    value (labelled). curves: {T: {label: [(entropy, gen_nll, top_p), ...]}}; ref_entropy: a vertical line
    (the data's); marks: [(T, entropy, gen_nll, label)] for the matched-entropy estimates."""
    plt = _plt()
    Ts = sorted(curves)
    fig, axes = plt.subplots(1, len(Ts), figsize=(4.2 * len(Ts), 4), squeeze=False)
    labels = list(dict.fromkeys(k for c in curves.values() for k in c))
    for ax, T in zip(axes[0], Ts):
        for k, pts in curves[T].items():
            pts = sorted(pts)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker='o',
                ms=3,
                label=k,
                color=plt.cm.tab10(labels.index(k) % 10),
            )
            for h, nll, tp in pts:
                ax.annotate(f'{tp:g}', (h, nll), fontsize=6, xytext=(2, 2), textcoords='offset points')
        if ref_entropy is not None:
            ax.axvline(ref_entropy, ls='--', lw=1, color='k', label='data entropy')
        for t, h, nll, k in marks:
            if t == T:
                ax.plot([h], [nll], marker='x', ms=8, color='k')
        ax.set(title=f'T = {T}', xlabel='unigram entropy (nats)', ylabel='generative NLL (nats/token)')
    # one legend for every panel's lines: the last panel alone may lack some (e.g. no DSL cells at large T)
    seen = {}
    for ax in axes[0]:
        for h, k in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(k, h)
    axes[0][-1].legend(
        list(seen.values()), list(seen), fontsize=7, loc='upper left', bbox_to_anchor=(1.02, 1)
    )
    fig.suptitle(textwrap.fill(title, 160), fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 90)


def matched(panels, path, title):
    """Generative NLL against a diversity axis, one panel each. panels: {panel title: (x label, the data's
    value (a vertical line), {curve label: [(x, gen_nll, point label), ...]}, marks [(x, gen_nll)])}; a
    curve whose label starts with '  ' is drawn thin and pale (one training seed under its pooled curve)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (name, (xlabel, ref, curves, marks)) in zip(axes[0], panels.items()):
        strong = [k for k in curves if not k.startswith('  ')]
        for k, pts in curves.items():
            pts = sorted(pts)
            pale = k.startswith('  ')
            # a seed's curve takes the colour of the pooled curve whose label it extends
            owner = next((s for s in strong if k.strip().startswith(s)), k)
            color = plt.cm.tab10(strong.index(owner) % 10) if owner in strong else 'grey'
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker='' if pale else 'o',
                ms=3,
                lw=0.6 if pale else 1.6,
                alpha=0.35 if pale else 1.0,
                color=color,
                label=None if pale else k,
            )
            for x, y, tag in [] if pale else pts:
                ax.annotate(tag, (x, y), fontsize=6, xytext=(2, 2), textcoords='offset points')
        ax.axvline(ref, ls='--', lw=1, color='k', label='held-out text')
        for x, y in marks:
            ax.plot([x], [y], marker='x', ms=8, color='k')
        ax.set(title=name, xlabel=xlabel, ylabel='generative NLL (nats/token)')
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 140), fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 90)


def curves(panels, path, title):
    """Validation curves, one panel per {panel title: {label: [(step, value), ...]}}."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for k, pts in series.items():
            if pts:
                ax.plot(*zip(*sorted(pts)), marker='.', ms=4, label=k)
        ax.set(title=name, xlabel='optimizer step', ylabel='nats/token')
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(title, 140), fontsize=8)
    fig.tight_layout()
    return _save(fig, path, 90)


def reliability(rows, path, title=''):
    """Accuracy against confidence per level; rows: dicts with level, value, ece and bins [(lo, hi, n,
    conf, acc)]."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], 'k:', lw=1)
    for r in rows:
        ax.plot(
            [b[3] for b in r['bins']],
            [b[4] for b in r['bins']],
            'o-',
            ms=3,
            label=f"{r['level']} = {r['value']:g}: ECE {r['ece']:.3f}",
        )
    ax.set(xlabel='confidence (max probability)', ylabel='accuracy', title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, 100)
