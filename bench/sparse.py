"""Sparse vs dense matrix products on this CPU, at the layer shapes of the `sparse` experiment.

For each shape (out x in weight applied to `cols` input columns: im2col pixels x batch for a conv, tokens for a Linear),
sparsity (50-95%) and representation (CSR for unstructured, BSR for b x b blocks) it prints, side by side in one run, the
best-of-N time of the dense `F.linear` and of the `torch.sparse` product, the speed-up (dense / sparse), and the peak tensor
memory of each (weight storage + what the product allocates). Then the break-even sparsity per shape and representation.
`--train` adds a forward+backward comparison for CSR, the one representation PyTorch's CPU kernels can train through.
Results are saved to results/bench/sparse.json (read by the `sparse` report).

Run under the CPU lock: flock /tmp/lwstudy-cpu.lock python bench/sparse.py
"""
import argparse, datetime as dt, json, time, warnings
import torch
import torch.nn.functional as F
from lwstudy.core import atomic_write, device_name, make_generator, project_root
from lwstudy.measure import time_it
from lwstudy.techniques.sparse import (BENCH_JSON, break_even, kernel_sweep, layer_shapes, make_mask, sizes,
                                       to_sparse_kernel)


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
    print('\nbreak-even (lowest swept sparsity where sparse time <= dense time):')
    for (shape, rep), v in break_even(rows).items():
        print(f"  {shape:18s} {rep:10s} {'none up to ' + format(max(sp), '.0%') if v is None else format(v, '.0%')}")
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
    if not a.no_save:
        out = atomic_write(project_root()/BENCH_JSON,  # the report never reads half a file
                           json.dumps(dict(when=f'{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC', device=device_name('cpu'),
                                           torch=torch.__version__, profile=a.profile, repeats=a.repeats, rows=rows, train_rows=trows),
                                      indent=1))
        print(f'saved {out}')


if __name__ == '__main__':
    main()
