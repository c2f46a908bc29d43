"""Model-level sparsity sweep of the `sparse` experiment: accuracy against realised speed-up and training cost.

For each representation (CSR, BSR 4x4, BSR 32x32) and sparsity it runs one `sparse.fit` cell (the study's two models, data,
budget and seed) with the pattern chosen by gradual magnitude pruning (trained masked dense), and for CSR once more with a
random pattern trained through the CSR kernel; beside a dense cell of the same seed it prints, per model: accuracy - dense,
the inference speed-up through the real kernels, and the training time, training state and training peak memory as ratios
to dense. Then, per model, the Pareto front of speed-up against accuracy drop and the break-even sparsity of each
representation. A model whose dense cell is within `CHANCE_MARGIN` of chance (the study's gate on accuracy claims) has learned
too little for its accuracy drops to mean anything: it gets no Pareto front, and its figure panel says so. One seed by default: point estimates, exploratory (the study's arms carry the claims and their intervals).
Saved to results/bench/sparse_sweep.json and .png; the `sparse` report shows both as saved.

Run on an otherwise idle machine, with the mirror (LWSTUDY_DATA_DIR): python bench/sparse_sweep.py
"""
import argparse, datetime as dt, io, json, time, warnings
import numpy as np
from sparse import break_even  # bench/sparse.py: the kernel sweep's break-even rule
from lwstudy.core import atomic_write, device_name, project_root
from lwstudy.report import pareto_front
from lwstudy.techniques.sparse import CHANCE_MARGIN, CSR, GMP, SWEEP_JSON, SWEEP_PNG, fit, rep_name, spec

COSTS = {'speedup': 'infer_ms', 'train_time': 'train_time_s', 'train_state': 'train_state_mb', 'train_peak': 'train_peak_mb'}


def sweep_points(sparsities, blocks) -> list[tuple[str, dict]]:
    "(label, arm overrides): gmp at every (block, sparsity), and CSR trained through the kernel at every sparsity."
    pts = [(f'{rep_name(b)} gmp', dict(GMP, sparsity=s, block=b)) for b in blocks for s in sparsities]
    return pts + ([('CSR trained sparse', dict(CSR, sparsity=s, block=1)) for s in sparsities] if 1 in blocks else [])


def rows_of(label:str, out:dict, dense:dict, sparsity:float) -> list[dict]:
    "One row per model: accuracy - dense and the cost ratios (speed-up = dense time / sparse time)."
    rows = []
    for p in ('cnn', 'tf'):
        r = {k: out[f'{p}_{m}'] / dense[f'{p}_{m}'] for k, m in COSTS.items()}
        r['speedup'] = 1 / r['speedup']  # dense time / sparse time
        rows.append(dict(model=p, how=label, sparsity=sparsity, acc=out[f'{p}_test_accuracy'],
                         acc_drop=dense[f'{p}_test_accuracy'] - out[f'{p}_test_accuracy'], **r))
    return rows


def at_chance(dense:dict) -> dict:
    "Per model, why its accuracy drops say nothing (dense within `CHANCE_MARGIN` of chance), or '' when the dense cell learned."
    return {p: '' if dense[f'{p}_acc_over_chance'] > CHANCE_MARGIN else f"dense {dense[f'{p}_test_accuracy']:.3f} does not beat "
            f"chance ({dense[f'{p}_chance']:.3f}) by more than {CHANCE_MARGIN:g}: its accuracy drops are uninformative" for p in ('cnn', 'tf')}


def fronts(rows:list[dict], chance:dict) -> dict:
    "Per model, its Pareto front as lines of text, or the one line saying why it has none."
    return {m: [why] if (why := chance[m]) else [f"{r['how']} {r['sparsity']:.0%}: {r['speedup']:.2f}x, {-100 * r['acc_drop']:+.2f} points"
                                                 for r in pareto_front([r for r in rows if r['model'] == m])] for m in chance}


def figure(rows:list[dict], title:str, chance:dict):
    "Speed-up against accuracy drop, one panel per model, one marker per representation; the Pareto front as a line (none at chance)."
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r['model'] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models):
        sub = [r for r in rows if r['model'] == m]
        for how in dict.fromkeys(r['how'] for r in sub):
            pts = [r for r in sub if r['how'] == how]
            ax.scatter([100 * r['acc_drop'] for r in pts], [r['speedup'] for r in pts], label=how)
            for r in pts: ax.annotate(f"{r['sparsity']:.0%}", (100 * r['acc_drop'], r['speedup']), fontsize=7)
        if not chance[m]:
            front = pareto_front(sub)
            ax.plot([100 * r['acc_drop'] for r in front], [r['speedup'] for r in front], 'k:', lw=1, label='Pareto front')
        ax.axhline(1, ls='--', c='grey', lw=0.8); ax.set_yscale('log')
        name = dict(cnn='CNN', tf='Transformer')[m] + ('\n(dense at chance: accuracy uninformative, no front)' if chance[m] else '')
        ax.set(xlabel='accuracy drop vs dense (points)', ylabel='inference speed-up vs dense', title=name)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10); fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--profile', default='quick', help="the study profile whose sizes and data are used (smoke, quick, full)")
    p.add_argument('--sparsities', default='0.5,0.75,0.9,0.95')
    p.add_argument('--blocks', default='1,4,32', help='1 = CSR, b = BSR b x b')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-save', action='store_true')
    a = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    base = spec(a.profile).arms['dense']
    sp, blocks = [float(s) for s in a.sparsities.split(',')], [int(b) for b in a.blocks.split(',')]
    pts = sweep_points(sp, blocks)
    print(f'{device_name("cpu")}, profile {a.profile}, seed {a.seed}: dense + {len(pts)} cells', flush=True)
    t0 = time.perf_counter()
    dense = fit(base, a.seed, a.profile)
    print('dense: ' + ', '.join(f"{n} accuracy {dense[f'{p}_test_accuracy']:.3f} (chance {dense[f'{p}_chance']:.3f})"
                             for p, n in (('cnn', 'CNN'), ('tf', 'Transformer'))), flush=True)
    rows = []
    for i, (label, over) in enumerate(pts, 1):
        rows += rows_of(label, fit(dict(base, **over), a.seed, a.profile), dense, over['sparsity'])
        print(f'  {i}/{len(pts)} {label} {over["sparsity"]:.0%} ({time.perf_counter() - t0:.0f} s)', flush=True)
    head = f"{'model':5s} {'pattern':20s} {'sparsity':>8s} {'acc-dense':>9s} {'infer x':>8s} {'train t':>8s} {'state':>6s} {'peak':>6s}"
    print('\nratios to dense (speed-up: dense time / sparse time; train t, state, peak: sparse / dense)\n' + head)
    for r in rows:
        print(f"{r['model']:5s} {r['how']:20s} {r['sparsity']:8.0%} {-100 * r['acc_drop']:+9.2f} {r['speedup']:7.2f}x "
              f"{r['train_time']:7.2f}x {r['train_state']:5.2f}x {r['train_peak']:5.2f}x")
    be = [f"{m} / {how}: " + (f'no break-even up to {max(sp):.0%}' if v is None else f'breaks even at {v:.0%}')
          for (m, how), v in break_even([dict(r, shape=r['model'], rep=r['how']) for r in rows]).items()]
    chance = at_chance(dense)
    front = fronts(rows, chance)
    print('\nbreak-even (inference):\n  ' + '\n  '.join(be))
    for m, f in front.items(): print(f'Pareto front, {m}:\n  ' + '\n  '.join(f))
    print(f'\n{time.perf_counter() - t0:.0f} s')
    if not a.no_save:
        png = io.BytesIO()
        figure(rows, f'bench/sparse_sweep.py, {a.profile}, seed {a.seed}', chance).savefig(png, format='png', dpi=110, bbox_inches='tight')
        fig = atomic_write(project_root()/SWEEP_PNG, png.getvalue())
        out = atomic_write(project_root()/SWEEP_JSON, json.dumps(dict(
            when=f'{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC', device=device_name('cpu'), profile=a.profile, seed=a.seed,
            dense={p: dict(accuracy=dense[f'{p}_test_accuracy'], chance=dense[f'{p}_chance']) for p in chance}, at_chance=chance, rows=rows, break_even=be, pareto=front), indent=1))
        print(f'saved {out} and {fig}')


if __name__ == '__main__':
    main()
