"""
Quality at matched diversity (the verdict of repro.py). Generative NLL falls with entropy (a lower top-p), so
two sample sets compare only at one entropy. Each (model, sampler, T) of a sweep run at several top-p values
gives a curve of points (entropy, gen NLL), one per top-p; two arms are compared on their curves at one
entropy (the data's where both reach it), each at its best rule there, with a percentile bootstrap over the
samples of every cell (per_sample.jsonl: each sample's judge NLL, token count and unigram entropy).

    python compare.py results/char_plateau      # the verdict table of a finished repro.py sweep folder
"""

import argparse
import csv
import gzip
import json
import os
import sys

import numpy as np

# the rules each arm may use: MDLM runs ReMDM's; the DSL model runs the same (same rule, both models) and the
# rules only its denoiser serves (budget, remdm-cap and roar are left out: they decided nothing in earlier
# runs)
BASELINE = ['mdlm', 'remdm-loop']
DSL_EXTRA = ['uncertainty', 'hybrid']


def rows_of(folder):
    """A sweep folder's results.csv, as string dicts."""
    with open(os.path.join(folder, 'results.csv')) as f:
        return list(csv.DictReader(f))


def per_sample_of(folder):
    """per_sample.jsonl as {(ckpt, sampler, steps, top_p): dict(nll, cnt, H)} (the last record of a cell
    wins)."""
    out = {}
    path = os.path.join(folder, 'per_sample.jsonl')
    # a committed folder may hold it gzipped (git keeps large generated files small)
    opened = open(path) if os.path.isfile(path) else gzip.open(path + '.gz', 'rt')
    with opened as f:
        for line in f:
            r = json.loads(line)
            if not isinstance(r['cnt'], list):  # one count for every sample
                r['cnt'] = [r['cnt']] * len(r['nll'])
            out[(r['ckpt'], r['sampler'], r['steps'], r['top_p'])] = r
    return out


def at_entropy(points, H, extrapolate=False, tol=1e-4):
    """Generative NLL of a curve [(entropy, gen_nll), ...] at entropy H, by linear interpolation between the
    two neighbouring points; outside the curve's entropy range None, or with extrapolate the end segment's
    line (a bootstrap resample's curve moves a little around a point estimate taken inside the range).
    An H within tol of an end point reads that end point: results.csv's entropy and the mean of the rounded
    per-sample entropies differ by ~1e-5, and a curve's end is where a compared entropy often sits."""
    pts = sorted(points)
    if pts and not extrapolate:
        if pts[0][0] - tol <= H < pts[0][0]:
            H = pts[0][0]
        if pts[-1][0] < H <= pts[-1][0] + tol:
            H = pts[-1][0]
    if len(pts) == 0 or not (extrapolate and len(pts) > 1) and not pts[0][0] <= H <= pts[-1][0]:
        return None
    if len(pts) == 1:
        return pts[0][1]
    (h0, y0), (h1, y1) = pts[:2] if H < pts[0][0] else pts[-2:] if H > pts[-1][0] else (pts[0], pts[0])
    if h0 != h1:  # outside the range: the end segment extended
        return float(y0 + (y1 - y0) * (H - h0) / (h1 - h0))
    return float(np.interp(H, [p[0] for p in pts], [p[1] for p in pts]))


def common_entropy(curves, target):
    """The entropy at which curves are compared: target (the data's) clipped into the range every curve
    reaches, [max of the minima, min of the maxima]; None when the ranges do not overlap."""
    lo = max(min(h for h, _ in c) for c in curves)
    hi = min(max(h for h, _ in c) for c in curves)
    return None if lo > hi else min(max(target, lo), hi)


def bootstrap_matched(arms, H, B=1000, seed=0):
    """Percentile bootstrap of gen NLL at entropy H. arms: {name: [per-sample dict(nll, cnt, H) of each top-p
    cell]}; each resample draws every cell's samples with replacement (independently), rebuilds each curve and
    reads it at H (the end segment extended when a resampled curve ends short of H). Returns {name: (point,
    lo, hi)}: the estimate from all samples and the 95% interval; for two arms a, b also the difference a - b
    as key 'a-b'. A resample that cannot be read at H (a one-point curve) is dropped, counted in 'dropped'."""
    rng = np.random.default_rng(seed)
    draws = {}
    for name, cells in arms.items():
        per = []
        for c in cells:
            nll, cnt, h = (np.asarray(c[k], dtype=np.float64) for k in ('nll', 'cnt', 'H'))
            idx = rng.integers(0, len(nll), (B, len(nll)))
            per.append(np.stack([nll[idx].sum(1) / cnt[idx].sum(1), h[idx].mean(1)], 1))  # (B, 2): gen NLL, H
        draws[name] = [at_entropy([(p[b, 1], p[b, 0]) for p in per], H, extrapolate=True) for b in range(B)]
    names = list(arms)
    if len(names) == 2:
        a, b = names
        draws[f'{a}-{b}'] = [
            u - v if u is not None and v is not None else None for u, v in zip(draws[a], draws[b])
        ]
    out = {'dropped': {k: sum(v is None for v in d) for k, d in draws.items()}}
    for k, d in draws.items():
        d = np.array([v for v in d if v is not None])
        out[k] = (
            (float(np.median(d)), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
            if len(d)
            else None
        )
    point = {
        name: at_entropy(
            [(float(np.mean(c['H'])), float(np.sum(c['nll']) / np.sum(c['cnt']))) for c in cells], H
        )
        for name, cells in arms.items()
    }  # the point estimate from all samples, not the bootstrap median
    if len(names) == 2 and None not in point.values():
        point[f'{a}-{b}'] = point[a] - point[b]
    for k, p in point.items():
        if out.get(k) is not None and p is not None:
            out[k] = (p,) + out[k][1:]
    return out


def curve_of(rows, model, sampler, T):
    """The (entropy, gen NLL) points of one (model, sampler, T) over its top-p cells, with the cells."""
    cells = [r for r in rows if r['model'] == model and r['sampler'] == sampler and int(r['steps']) == T]
    return [(float(r['entropy']), float(r['gen_nll'])) for r in cells], cells


def match(curves, target, group=None):
    """Where curves {key: [(entropy, gen NLL)]} are compared, and which. Without group: at the target (the
    data's entropy) clipped into the range all curves share, all of them. With group (key -> arm): at the
    entropy nearest the target that some curve of every arm reaches, the curves that reach it (so both arms
    reach the data's entropy, it is the data's). Returns (H, {key: points}), or (None, {}) when no such
    entropy exists."""
    rng = {k: (min(p[0] for p in c), max(p[0] for p in c)) for k, c in curves.items()}
    if group is None:
        H = common_entropy(list(curves.values()), target) if curves else None
        return H, (curves if H is not None else {})
    arms = sorted({group(k) for k in curves})
    cands = []  # the target clipped into every overlap of one curve per arm (two arms here)
    for ka in (k for k in curves if group(k) == arms[0]):
        for kb in (k for k in curves if len(arms) > 1 and group(k) == arms[1]):
            lo, hi = max(rng[ka][0], rng[kb][0]), min(rng[ka][1], rng[kb][1])
            if lo <= hi:
                cands.append(min(max(target, lo), hi))
    if not cands:
        return None, {}
    H = min(cands, key=lambda h: abs(h - target))
    return H, {k: c for k, c in curves.items() if rng[k][0] <= H <= rng[k][1]}


def choose(rows, models, sampler, T, ref_entropy):
    """The tuning criterion, fixed before any test cell is drawn: the lowest generative NLL under the judge at
    matched entropy (match: the data's where variants reach it), each variant's curve the sampler at T over
    the tuning top-p values on the tuning seed. Returns (winner, H, {model: gen NLL at H})."""
    H, use = match({m: curve_of(rows, m, sampler, T)[0] for m in models}, ref_entropy)
    if H is None:  # no common entropy: fall back to each curve's value nearest the data's entropy
        use = {
            m: [min(curve_of(rows, m, sampler, T)[0], key=lambda p: abs(p[0] - ref_entropy))] for m in models
        }
    at = {m: at_entropy(c, H) if H is not None else c[0][1] for m, c in use.items()}
    return min(at, key=at.get), H, at


def models_of(rows):
    mdlm = next(r['model'] for r in rows if r['model'].endswith(':mdlm_ft'))
    dsl = next(r['model'] for r in rows if r['model'].endswith(':dsl_ft'))
    return mdlm, dsl


def versus(rows, per, a, b, ref_entropy, B=1000):
    """Generative NLL at matched entropy, arm a against arm b. An arm is (model, [rules], T): its candidate
    curves are each rule's top-p cells at T; they are compared at the entropy H that match picks (the data's
    when both arms reach it); each arm takes its best rule at H. Returns a dict with H, the two rules, (point,
    lo, hi) of each arm and of the difference a - b (95% percentile bootstrap over samples), mean NFE; or None
    when the curves share no entropy."""
    curves = {}
    for arm, (model, rules, T) in (('a', a), ('b', b)):
        for s in rules:
            pts, cells = curve_of(rows, model, s, T)
            if len(pts) >= 2:
                curves[(arm, s)] = (pts, cells)
    H, use = match({k: v[0] for k, v in curves.items()}, ref_entropy, group=lambda k: k[0])
    if {k[0] for k in use} != {'a', 'b'}:
        return None
    pick = {arm: min((k for k in use if k[0] == arm), key=lambda k: at_entropy(use[k], H)) for arm in 'ab'}
    arms = {
        arm: [per[(r['ckpt'], r['sampler'], r['steps'], r['top_p'])] for r in curves[pick[arm]][1]]
        for arm in 'ab'
    }
    bs = bootstrap_matched(arms, H, B)
    nfe = {
        arm: sum(float(r['nfe']) for r in curves[pick[arm]][1]) / len(curves[pick[arm]][1]) for arm in 'ab'
    }
    return dict(
        H=H,
        rule_a=pick['a'][1],
        rule_b=pick['b'][1],
        a=bs['a'],
        b=bs['b'],
        diff=bs['a-b'],
        nfe_a=nfe['a'],
        nfe_b=nfe['b'],
        dropped=bs['dropped'],
    )


def call(diff):
    """'better' when the whole 95% interval of a - b (gen NLL) is below 0, 'worse' above, else 'tie'."""
    return 'better' if diff[2] < 0 else 'worse' if diff[1] > 0 else 'tie'


ci = lambda t: f"{t[0]:.3f} [{t[1]:.3f}, {t[2]:.3f}]"


def verdict(rows, per, steps, dsl_steps, ref_entropy, B=1000):
    """Per DSL T: the DSL model (its best of every rule) against MDLM + ReMDM's rules (its best) at T and at
    4T, generative NLL at matched entropy with bootstrap intervals. Returns (markdown lines, summary,
    comparisons)."""
    mdlm, dsl = models_of(rows)
    lines = [
        '| DSL T | MDLM T | entropy H | DSL: gen NLL at H [95% CI] (rule, NFE) | MDLM: gen NLL at H [95% CI] '
        '(rule, NFE) | DSL - MDLM [95% CI] | DSL is |',
        '|' + '---|' * 7,
    ]
    out = []
    for T in dsl_steps:
        for k in (1, 4):
            if k * T not in steps:
                continue
            v = versus(rows, per, (dsl, BASELINE + DSL_EXTRA, T), (mdlm, BASELINE, k * T), ref_entropy, B)
            if v is None:
                lines.append(f"| {T} | {k * T} | no common entropy | | | | |")
                continue
            v.update(T=T, vs=k * T, call=call(v['diff']))
            out.append(v)
            lines.append(
                f"| {T} | {k * T} | {v['H']:.3f} | {ci(v['a'])} ({v['rule_a']}, {v['nfe_a']:.1f}) | "
                f"{ci(v['b'])} ({v['rule_b']}, {v['nfe_b']:.1f}) | {ci(v['diff'])} | {v['call']} |"
            )
    count = lambda k: ', '.join(
        f"{c} in {sum(v['call'] == c for v in out if v['vs'] == k * v['T'])}"
        for c in ('better', 'tie', 'worse')
    )
    say = (
        f"At matched entropy, DSL at T steps against MDLM + ReMDM at 4T: {count(4)} of "
        f"{sum(v['vs'] == 4 * v['T'] for v in out)} comparisons; at equal T: {count(1)} of "
        f"{sum(v['vs'] == v['T'] for v in out)} ('better' = the whole 95% interval of the generative NLL "
        f"difference below 0). Each arm takes its best rule at the compared entropy: DSL of "
        f"{', '.join(BASELINE + DSL_EXTRA)}; MDLM of {', '.join(BASELINE)}."
    )
    return lines, say, out


def same_rule(rows, per, dsl_steps, ref_entropy, B=1000):
    """ReMDM's rules on both models at equal T and matched entropy: what fine-tuning with DSL did to a
    sampler."""
    mdlm, dsl = models_of(rows)
    lines = [
        '| rule | T | entropy H | gen NLL, MDLM model | gen NLL, DSL model | DSL - MDLM [95% CI] | DSL is |',
        '|' + '---|' * 7,
    ]
    for s in BASELINE:
        for T in dsl_steps:
            v = versus(rows, per, (dsl, [s], T), (mdlm, [s], T), ref_entropy, B)
            if v:
                lines.append(
                    f"| {s} | {T} | {v['H']:.3f} | {ci(v['b'])} | {ci(v['a'])} | {ci(v['diff'])} | "
                    f"{call(v['diff'])} |"
                )
    return lines


def own_rules(rows, per, steps, dsl_steps, ref_entropy, B=1000, each=False):
    """The DSL-only rules, each alone, against MDLM + ReMDM (its best rule) at T and 4T: read at the entropy
    nearest the data's that both reach (these rules sample at lower entropy, so the verdict's entropy may
    leave them out). each: against every MDLM rule alone, each pair at its own entropy. A best-of-rules arm
    drops a rule whose curve stops short of the compared entropy, however little; this table shows what that
    choice did."""
    mdlm, dsl = models_of(rows)
    lines = [
        '| DSL rule | DSL T | MDLM T | entropy H | DSL | MDLM + ReMDM (rule) | DSL - MDLM [95% CI] | DSL '
        'is |',
        '|' + '---|' * 8,
    ]
    for s, T, k, b in (
        (s, T, k, b)
        for s in DSL_EXTRA
        for T in dsl_steps
        for k in (1, 4)
        for b in ([[r] for r in BASELINE] if each else [BASELINE])
    ):
        v = versus(rows, per, (dsl, [s], T), (mdlm, b, k * T), ref_entropy, B) if k * T in steps else None
        if v:
            lines.append(
                f"| {s} | {T} | {k * T} | {v['H']:.3f} | {ci(v['a'])} | {ci(v['b'])} ({v['rule_b']}) "
                f"| {ci(v['diff'])} | {call(v['diff'])} |"
            )
    return lines


def against(rows, per, base, ref_entropy, B=1000):
    """Every other model of a sweep against model `base`, rule by rule at equal T: generative NLL at matched
    entropy (the data's where both curves reach it), with 95% bootstrap intervals of each and of the
    difference."""
    models = sorted({r['model'] for r in rows} - {base, 'reference'})
    cells = sorted({(r['sampler'], int(r['steps'])) for r in rows if r['model'] == base})
    lines = [
        f"| model | rule | T | entropy H | model: gen NLL at H | {base}: gen NLL at H | difference [95% CI] "
        f"| model is | NFE (model, {base}) |",
        '|' + '---|' * 9,
    ]
    for m in models:
        for s, T in cells:
            if not any(r['model'] == m and r['sampler'] == s and int(r['steps']) == T for r in rows):
                continue
            v = versus(rows, per, (m, [s], T), (base, [s], T), ref_entropy, B)
            if v is None:
                lines.append(f"| {m} | {s} | {T} | no common entropy | | | | | |")
                continue
            lines.append(
                f"| {m} | {s} | {T} | {v['H']:.3f} | {ci(v['a'])} | {ci(v['b'])} | {ci(v['diff'])} | "
                f"{call(v['diff'])} | {v['nfe_a']:.1f}, {v['nfe_b']:.1f} |"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# Over training seeds (verdict.py): a hierarchical, paired bootstrap and the pre-registered decision rule


def frontier_arrays(cells):
    """One arm's per-sample numbers as arrays (S, G, N): cells[s][g] is the per_sample.jsonl record of
    training seed s at frontier point g (a top-p or temperature), every record over the same N samples."""
    return {
        k: np.array([[np.broadcast_to(c[k], len(c['nll'])) for c in row] for row in cells], dtype=np.float64)
        for k in ('nll', 'cnt', 'H', 'D3')
    }


def pooled(a, seeds, idx):
    """The arm's frontier pooled over the chosen training seeds and, per chosen seed, the chosen samples:
    seeds (B, k) and idx (B, k, N) -> {'nll': gen NLL (B, G) = total nats / total tokens, 'H', 'D3': means
    (B, G)}. Each chosen seed counts as many times as it was drawn (a seed is a model)."""
    out = {}
    take = lambda v: v.transpose(0, 2, 1)[seeds[:, :, None], idx]  # (B, k, N, G)
    out['nll'] = take(a['nll']).sum((1, 2)) / take(a['cnt']).sum((1, 2))
    for k in ('H', 'D3'):
        out[k] = take(a[k]).mean((1, 2))
    return out


def pooled_all(a, seeds=None):
    """pooled() over the given training seeds (default: all) with all their samples: {key: (G,)}."""
    seeds = np.arange(len(a['nll'])) if seeds is None else np.asarray(seeds)
    N = a['nll'].shape[2]
    p = pooled(a, seeds[None], np.broadcast_to(np.arange(N), (1, len(seeds), N)))
    return {k: v[0] for k, v in p.items()}


def matched(a, targets, extrapolate=False):
    """One arm's pooled generative NLL (all seeds, all samples) read at each target: {axis: value or None}."""
    p = pooled_all(a)
    return {
        axis: at_entropy(list(zip(p[axis], p['nll'])), t, extrapolate=extrapolate)
        for axis, t in targets.items()
    }


def hierarchical(arms, targets, B=1000, seed=0, paired=True):
    """Generative NLL of two arms at matched diversity, with a two-level bootstrap (Davison & Hinkley 1997,
    §3.8): resample the training seeds, then within each drawn seed the samples. arms: {name:
    frontier_arrays(...)}, two arms with the same S and N. paired: both arms take the same seed indices and
    the same sample indices (continuation seed s of both arms saw the same batches; sample i of every model
    drew the same uniforms: common random numbers), else each arm its own. targets: {axis ('H' or 'D3'):
    the value both curves are read at}. Returns {axis: dict(point={a, b, 'a-b'}, lo, hi, dropped,
    extended)} for the difference a - b: the point from all seeds and samples read inside the curves (None
    outside them: the comparison is unreadable), the 95% percentile interval from resamples read with the
    end segments extended (extended: how many resamples needed that)."""
    (na, a), (nb, b) = arms.items()
    S, _, N = a['nll'].shape
    if b['nll'].shape[0] != S or b['nll'].shape[2] != N:
        raise ValueError('the two arms need the same number of training seeds and of samples per cell')
    rng = np.random.default_rng(seed)
    draw = lambda: (rng.integers(0, S, (B, S)), rng.integers(0, N, (B, S, N)))
    ia = draw()
    ib = ia if paired else draw()
    res = {na: pooled(a, *ia), nb: pooled(b, *ib)}
    point = {na: matched(a, targets), nb: matched(b, targets)}
    out = {}
    for axis, target in targets.items():
        read = lambda p, j: at_entropy(list(zip(p[axis][j], p['nll'][j])), target, extrapolate=True)
        pa, pb = point[na][axis], point[nb][axis]
        diffs = [read(res[na], j) - read(res[nb], j) for j in range(B)]
        diffs = np.array([d for d in diffs if d is not None and np.isfinite(d)])
        # how many resamples a curve of which ends short of the target (read on its end segment, extended)
        short = lambda p: (p[axis].min(1) > target) | (p[axis].max(1) < target)
        out[axis] = dict(
            point={na: pa, nb: pb, f'{na}-{nb}': None if None in (pa, pb) else pa - pb},
            lo=float(np.percentile(diffs, 2.5)),
            hi=float(np.percentile(diffs, 97.5)),
            dropped=B - len(diffs),
            extended=int((short(res[na]) | short(res[nb])).sum()),
        )
    return out


def decide(res):
    """The pre-registered rule on hierarchical()'s answer for the difference a - b in generative NLL (a
    better: lower). 'better': a's interval lies below 0 at matched unigram entropy and does not lie above 0 at
    matched distinct-3 (a rule that buys likelihood with repetition cannot win: issue #28 (e)); 'worse': the
    mirror image; 'mixed': the two axes disagree, each interval excluding 0; 'tie' otherwise; 'unreadable':
    a point estimate lies outside a curve (no extrapolation)."""
    if any(None in r['point'].values() for r in res.values()):
        return 'unreadable'
    h, d = res['H'], res['D3']
    if h['hi'] < 0 and d['lo'] > 0 or h['lo'] > 0 and d['hi'] < 0:
        return 'mixed'
    if h['hi'] < 0:
        return 'better'
    if h['lo'] > 0:
        return 'worse'
    return 'tie'


def main(argv=None):
    ap = argparse.ArgumentParser(
        description='the verdict tables of a sweep folder, recomputed from its files'
    )
    ap.error = lambda msg: (print(f"compare.py: error: {msg}", file=sys.stderr), sys.exit(2))  # one line
    ap.add_argument(
        'folder', help='a sweep folder holding results.csv and per_sample.jsonl (e.g. results/char_plateau)'
    )
    ap.add_argument(
        '--mdlm',
        default='',
        help="another sweep folder whose ':mdlm_ft' cells replace the MDLM arm's "
        "(e.g. the MDLM continuation trained on for as many steps as DSL's)",
    )
    ap.add_argument(
        '--against',
        default='',
        metavar='MODEL',
        help="instead of the verdict: every model of the folder against this one (a results.csv model "
        "label, e.g. dsl:two_pass), rule by rule at equal T",
    )
    a = ap.parse_args(argv)
    for d in filter(None, (a.folder, a.mdlm)):
        if not any(os.path.isfile(os.path.join(d, f)) for f in ('per_sample.jsonl', 'per_sample.jsonl.gz')):
            ap.error(f"{d}: no results.csv and per_sample.jsonl (a sweep folder)")
    rows, per = rows_of(a.folder), per_sample_of(a.folder)
    if a.mdlm:  # the other arm's cells; the DSL cells and the reference stay
        rows = [r for r in rows if not r['model'].endswith(':mdlm_ft')] + [
            r for r in rows_of(a.mdlm) if r['model'].endswith(':mdlm_ft')
        ]
        per.update(per_sample_of(a.mdlm))
    H = float(next(r for r in rows if r['model'] == 'reference')['entropy'])
    if a.against:
        if a.against not in {r['model'] for r in rows}:
            ap.error(f"--against {a.against}: no such model in {a.folder}/results.csv")
        print('\n'.join(against(rows, per, a.against, H)))
        return
    steps = sorted({int(r['steps']) for r in rows if r['model'].endswith(':mdlm_ft')})
    dsl_steps = sorted({int(r['steps']) for r in rows if r['model'].endswith(':dsl_ft')})
    lines, say, _ = verdict(rows, per, steps, dsl_steps, H)
    own = [own_rules(rows, per, steps, dsl_steps, H, each=e) for e in (False, True)]
    print(
        '\n'.join(lines + ['', say, ''] + same_rule(rows, per, dsl_steps, H) + [''] + own[0] + [''] + own[1])
    )


if __name__ == '__main__':
    main()
