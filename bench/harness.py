"""Harness overhead, side by side in one run: per technique, the first run (cells + runner), report rendering alone,
a papermill run over a fully cached store (kernel start + re-render, nothing trained), and a cached CLI re-run.

    python bench/harness.py [--profile smoke] [--seeds 3] [aa control ...]
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

def timed(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('techniques', nargs='*', default=['aa', 'control'])
    ap.add_argument('--profile', default='smoke'); ap.add_argument('--seeds', type=int, default=3)
    a = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix='lwstudy-bench-'))
    os.environ['LWSTUDY_HOME'] = str(home); os.environ.setdefault('HF_HUB_OFFLINE', '1'); os.environ['TQDM_DISABLE'] = '1'
    from lwstudy.study import experiment
    from lwstudy.report import write_report
    from lwstudy.runner import Store, get_spec
    template = Path(__file__).resolve().parents[1]/'nbs'/'run_experiment.ipynb'
    rows = []
    for t in a.techniques:
        res, first_s = timed(lambda: experiment(t, a.profile, a.seeds, 'cpu', progress=False))
        recs = Store().records(t, a.profile)
        cells_s = sum(r['wall_s'] for r in recs)
        mtimes = {p: p.stat().st_mtime_ns for p in (home/'results'/t/a.profile).glob('*.json')}
        _, render_s = timed(lambda: write_report(get_spec(t, a.profile), a.profile))
        cmd = [sys.executable, '-m', 'papermill', str(template), str(home/f'{t}.ipynb'), '-p', 'technique', t,
               '-p', 'profile', a.profile, '-p', 'seeds', str(a.seeds), '--cwd', str(home)]
        proc, pm_s = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
        if proc.returncode: sys.exit(proc.stderr[-2000:])
        rerun, rerun_s = timed(lambda: experiment(t, a.profile, a.seeds, 'cpu', progress=False))
        untouched = mtimes == {p: p.stat().st_mtime_ns for p in (home/'results'/t/a.profile).glob('*.json')}
        rows.append((t, len(recs), first_s, cells_s, first_s - cells_s, render_s, pm_s, pm_s - render_s, rerun_s,
                     rerun.computed, untouched))
    head = ('technique', 'cells', 'first run s', 'in cells s', 'runner+report s', 'render s', 'papermill cached s',
            'papermill overhead s', 'cached re-run s', 'recomputed', 'store untouched')
    print(f'profile {a.profile}, {a.seeds} seeds, LWSTUDY_HOME={home}')
    print(' | '.join(head))
    for r in rows: print(' | '.join(f'{v:.2f}' if isinstance(v, float) else str(v) for v in r))
    for r in rows:
        print(f'{r[0]}: cached re-run is {r[2] / r[8]:.1f}x faster than the first run; papermill adds {r[7]:.1f} s over rendering')

if __name__ == '__main__': main()
