"""The whole study's wall time on this machine, per technique, then the time of a fully cached re-run, side by side.

    python bench/study.py [--profile quick] [--seeds N] [--techniques all] [--home DIR]

Runs `lwstudy.study.study` in `--home` (default: a fresh temporary folder, so every cell is computed; caches of derived data
such as the distillation teacher and the metabo grid under ~/.cache/lwstudy are reused and listed), then runs it again over
the now complete store (nothing trained: reading, statistics, rendering), both in-process and through papermill
(`nbs/run_study.ipynb`, the README's path, kernel start included). Prints the goals of issue #8 next to the measurements.
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_STUDY_S, GOAL_CACHED_S = 45 * 60, 60

def timed(fn):
    t0 = time.perf_counter(); out = fn(); return out, time.perf_counter() - t0

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--profile', default='quick'); ap.add_argument('--seeds', type=int, default=None, help="default: each technique's own")
    ap.add_argument('--techniques', default='all'); ap.add_argument('--home', default=None)
    a = ap.parse_args()
    home = Path(a.home).resolve() if a.home else Path(tempfile.mkdtemp(prefix='lwstudy-study-'))
    os.environ['LWSTUDY_HOME'] = str(home); os.environ.setdefault('HF_HUB_OFFLINE', '1')
    from lwstudy.core import cache_dir
    from lwstudy.study import study
    caches = sorted(p.name for p in cache_dir().iterdir())
    print(f'LWSTUDY_HOME={home}; derived-data caches present before the run: {", ".join(caches) or "none"}', flush=True)

    first, first_s = timed(lambda: study(a.techniques, a.profile, a.seeds, progress=True))
    again, again_s = timed(lambda: study(a.techniques, a.profile, a.seeds, progress=False))
    cmd = [sys.executable, '-m', 'papermill', str(ROOT/'nbs'/'run_study.ipynb'), str(home/'reports'/'run_study.ipynb'),
           '-p', 'techniques', a.techniques, '-p', 'profile', a.profile, *(['-p', 'seeds', str(a.seeds)] if a.seeds else []),
           '--cwd', str(home)]
    proc, pm_s = timed(lambda: subprocess.run(cmd, capture_output=True, text=True))
    if proc.returncode: sys.exit(proc.stderr[-3000:])

    print(f"\nprofile {a.profile}, {a.seeds or 'default'} seeds, {os.cpu_count()} CPUs")
    for t, e in first.failures.items(): print(f'FAILED {t}: {e}')
    print('technique | cells computed | first run s | min | cached re-run s')
    for t, r in first.runs.items():
        print(f'{t} | {r.computed} | {r.wall_s:.1f} | {r.wall_s / 60:.1f} | {again.runs[t].wall_s:.2f}')
    print(f'whole study (incl. index.html) | {sum(r.computed for r in first.runs.values())} | {first_s:.1f} | {first_s / 60:.1f} | {again_s:.2f}')
    print(f'\nfirst run: {first_s / 60:.1f} min; goal < {GOAL_STUDY_S // 60} min: {"met" if first_s < GOAL_STUDY_S else "MISSED"}')
    print(f'cached re-run in-process: {again_s:.1f} s, through papermill (kernel start included): {pm_s:.1f} s; '
          f'goal < {GOAL_CACHED_S} s: {"met" if max(again_s, pm_s) < GOAL_CACHED_S else "MISSED"}')
    print(f'cells recomputed by the cached re-run: {sum(r.computed for r in again.runs.values())}')

if __name__ == '__main__': main()
