"""Sparse vs dense matrix products on this CPU, at the layer shapes of the `sparse` experiment.

For each shape (out x in weight applied to `cols` input columns: im2col pixels x batch for a conv, tokens for a Linear),
sparsity (50-95%) and representation (CSR for unstructured, BSR for b x b blocks) it prints, side by side in one run, the
best-of-N time of the dense `F.linear` and of the `torch.sparse` product, the speed-up (dense / sparse), and the peak tensor
memory of each (weight storage + what the product allocates). Then the break-even sparsity per shape and representation.
`--train` adds a forward+backward comparison for CSR, the one representation PyTorch's CPU kernels can train through.
Results are saved to results/bench/sparse.json (rows and break-even sparsities) and results/bench/sparse.png (the speed-up
figure); the `sparse` report shows both as saved.

Run under the CPU lock: flock /tmp/lwstudy-cpu.lock python bench/sparse.py
"""
import argparse, datetime as dt, io, json, time, warnings
import torch
import torch.nn.functional as F
from lwstudy.core import atomic_write, device_name, make_generator, project_root
from lwstudy.measure import peak_memory_mb, time_it
from lwstudy.report import sweep_figure as report_sweep_figure
from lwstudy.techniques.sparse import BENCH_JSON, BENCH_PNG, SPEED_GOAL, make_mask, rep_name, sizes, to_sparse_kernel


def layer_shapes(params:dict, # an arm's params or `sizes(profile)`
                ) -> list[tuple[str, int, int, int]]:
    "(name, out, in, columns) of the sparse matrix products in the two models of `params` at their inference batch."
    c, t = params['parts']['cnn'], params['parts']['tf']
    w, h, side, b = c['widths'], c['hidden'], c['img_size'], c['infer_batch']  # SmallCNN halves the side per block
    n, d, ff = t['infer_batch'] * t['seq_len'], t['d'], t['ff']
    return [('cnn conv2 im2col', w[1], w[0] * 9, b * (side // 2) ** 2), ('cnn conv3 im2col', w[2], w[1] * 9, b * (side // 4) ** 2),
            ('cnn fc1', h, w[2] * (side // 8) ** 2, b), ('tf qkv', 3 * d, d, n), ('tf ff1', ff, d, n), ('tf ff2', d, ff, n)]


def _kernel_mb(k) -> float: return sum(t.numel() * t.element_size() for t in (k.crow_indices(), k.col_indices(), k.values())) / 1e6


def kernel_sweep(shapes:list, # (name, out, in, columns) as `layer_shapes` gives
                 sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), # levels swept
                 blocks=(1, 4, 16, 32, 64), # 1 = CSR, b = BSR b x b (skipped where b does not tile the shape)
                 repeats:int=5, # timed runs; the minimum is kept
                 memory:bool=True, # also measure peak memory (weight storage + what the product allocates)
                 seed:int=0, # weights, inputs and masks
                ) -> list[dict]:
    "Time (ms) and peak memory (MB) of dense `F.linear` vs sparse `(W @ x.T).T` for each shape, sparsity and block."
    rows, gen = [], make_generator(seed, stream=31)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for name, o, i, n in shapes:
            w, x = torch.randn(o, i, generator=gen), torch.randn(n, i, generator=gen)
            dense = lambda: F.linear(x, w)
            d_ms = time_it(dense, 1, repeats)['min_s'] * 1e3  # the minimum: least disturbed by other work on a shared CPU
            d_mb = peak_memory_mb(dense) + w.numel() * 4 / 1e6 if memory else float('nan')
            for s in sparsities:
                for b in blocks:
                    if o % b or i % b: continue
                    k = to_sparse_kernel(w, make_mask(o, i, s, b, gen), b)
                    f = lambda: (k @ x.T).T
                    ms = time_it(f, 1, repeats)['min_s'] * 1e3
                    rows.append(dict(shape=name, out=o, inp=i, cols=n, sparsity=s, rep=rep_name(b), dense_ms=d_ms, sparse_ms=ms,
                                     speedup=d_ms / ms, dense_mb=d_mb, sparse_mb=peak_memory_mb(f) + _kernel_mb(k) if memory else float('nan')))
    return rows


def break_even(rows:list[dict]) -> dict:
    "Per (shape, representation): the lowest swept sparsity from which the sparse product is at least as fast as dense at every higher swept level, or None."
    out = {}
    for r in sorted(rows, key=lambda r: r['sparsity']):
        key = (r['shape'], r['rep'])
        if r['speedup'] < 1: out[key] = None
        elif out.get(key) is None: out[key] = r['sparsity']
    return out


def sweep_figure(rows:list[dict], # `kernel_sweep` rows (as bench/sparse.py saves them)
                 title:str, # the figure's title
                ):
    "Speed-up (dense / sparse time) vs sparsity, one panel per shape, one line per representation (`report.sweep_figure`)."
    first = {r['shape']: r for r in reversed(rows)}
    titles = {sh: f"{sh}\n{r['out']}x{r['inp']} @ {r['cols']} cols" for sh, r in first.items()}
    fig = report_sweep_figure(rows, 'sparsity', 'speedup', 'rep', panel='shape', titles=titles, ylabel='speed-up vs dense', logy=True,
                              hlines=[(1, '--'), (SPEED_GOAL, ':')], ncols=3)
    fig.suptitle(title, fontsize=10); fig.tight_layout()
    return fig


def train_rows(shapes, sparsities, repeats):
    "Forward+backward time of a dense Linear vs a CSR weight trained through its values (autograd), per shape and sparsity."
    rows, gen = [], make_generator(0, stream=32)
    for name, o, i, n in shapes:
        w = torch.randn(o, i, generator=gen, requires_grad=True); x = torch.randn(n, i, generator=gen, requires_grad=True)
        def dense():
            F.linear(x, w).sum().backward()
        d_ms = time_it(dense, 1, repeats)['min_s'] * 1e3
        for s in sparsities:
            k = to_sparse_kernel(w.detach(), make_mask(o, i, s, 1, gen), 1)
            v = k.values().clone().requires_grad_()
            def sparse():
                sw = torch.sparse_csr_tensor(k.crow_indices(), k.col_indices(), v, k.shape)
                (sw @ x.T).sum().backward()
            ms = time_it(sparse, 1, repeats)['min_s'] * 1e3
            rows.append(dict(shape=name, sparsity=s, dense_ms=d_ms, csr_ms=ms, speedup=d_ms / ms))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--profile', default='quick', help='whose layer shapes to use (smoke, quick, full, dryrun)')
    p.add_argument('--sparsities', default='0.5,0.7,0.8,0.9,0.95')
    p.add_argument('--blocks', default='1,4,16,32,64', help='1 = CSR, b = BSR b x b')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--max-cols', type=int, default=0, help='cap the columns of each product (0: the real inference batch)')
    p.add_argument('--train', action='store_true', help='also time forward+backward, dense vs CSR, on the Transformer shapes')
    p.add_argument('--no-save', action='store_true')
    a = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    sp = [float(s) for s in a.sparsities.split(',')]; blocks = [int(b) for b in a.blocks.split(',')]
    params = sizes(a.profile)
    shapes = [(s, o, i, min(n, a.max_cols) if a.max_cols else n) for s, o, i, n in layer_shapes(params)]
    print(f'torch {torch.__version__}, {device_name("cpu")}, profile {a.profile} shapes, best of {a.repeats}')
    t0 = time.perf_counter()
    rows = kernel_sweep(shapes, sp, blocks, a.repeats)
    reps = list(dict.fromkeys(r['rep'] for r in rows))
    for name, o, i, n in shapes:
        print(f'\n{name}: weight {o}x{i}, {n} columns')
        sub = [r for r in rows if r['shape'] == name]
        d = sub[0]
        print(f"  dense: {d['dense_ms']:.2f} ms, {d['dense_mb']:.1f} MB")
        print('  sparsity | ' + ' | '.join(f'{r:>26s}' for r in reps if any(x['rep'] == r for x in sub)))
        for s in sp:
            cells = []
            for rep in reps:
                hit = [r for r in sub if r['rep'] == rep and r['sparsity'] == s]
                if hit: h = hit[0]; cells.append(f"{h['sparse_ms']:8.2f} ms {h['speedup']:5.2f}x {h['sparse_mb'] / h['dense_mb']:4.2f}mem")
            print(f'  {s:8.0%} | ' + ' | '.join(f'{c:>26s}' for c in cells))
    be = [f"{shape} / {rep}: " + (f'no break-even up to {max(sp):.0%}' if v is None else f'breaks even at {v:.0%}')
          for (shape, rep), v in break_even(rows).items()]
    print('\nbreak-even (lowest swept sparsity from which sparse time <= dense time):\n  ' + '\n  '.join(be))
    best = max(rows, key=lambda r: r['speedup'])
    print(f"\nbest speed-up: {best['speedup']:.2f}x ({best['shape']}, {best['rep']}, {best['sparsity']:.0%})")
    trows = []
    if a.train:
        tshapes = [s for s in shapes if s[0].startswith('tf')]
        trows = train_rows(tshapes, sp, a.repeats)
        print('\ntraining step (forward+backward), dense Linear vs CSR through autograd:')
        for r in trows:
            print(f"  {r['shape']:8s} {r['sparsity']:4.0%}: dense {r['dense_ms']:8.2f} ms, CSR {r['csr_ms']:8.2f} ms, speed-up {r['speedup']:.2f}x")
    print(f'\n{time.perf_counter() - t0:.0f} s')
    if not a.no_save:  # atomic writes: the report never reads half a file
        png = io.BytesIO()
        sweep_figure(rows, 'bench/sparse.py saved sweep').savefig(png, format='png', dpi=110, bbox_inches='tight')
        fig = atomic_write(project_root()/BENCH_PNG, png.getvalue())
        out = atomic_write(project_root()/BENCH_JSON,
                           json.dumps(dict(when=f'{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC', device=device_name('cpu'),
                                           torch=torch.__version__, profile=a.profile, repeats=a.repeats, rows=rows, train_rows=trows,
                                           break_even=be), indent=1))
        print(f'saved {out} and {fig}')


if __name__ == '__main__':
    main()
