"""metabo's evaluation tables built one head per core (`core.parallel_imap`) vs one after another, side by side in one run:
the same task's quick table from an empty cache each time, the two ways alternated, wall time and the ratio, and a check
that both ways store identical scores (timing fields aside).

    python bench/tables.py [--task trec] [--repeats 2] [--workers N]   (needs the data mirror for real tasks)
"""
import argparse, os, statistics, sys, tempfile, time

def build(task:str, workers:int|None) -> tuple[dict, float]:
    "One table from an empty cache with `workers` processes (1: one after another); its rows and wall seconds."
    from lwstudy.techniques import metabo as mb
    os.environ['LWSTUDY_CACHE'] = tempfile.mkdtemp(prefix='lwstudy-tables-')
    p = mb._arm_params('quick', 'bo')
    feats = mb.task_features(task, p['sizes'], 'quick')  # features first, outside the timing
    t0 = time.perf_counter(); tab = mb.build_table(task, p, 'quick', feats, workers=workers); wall = time.perf_counter() - t0
    return tab['rows'], wall

def scores(rows:dict) -> dict: return {i: {k: v for k, v in r.items() if k not in ('eval_s', 'train_s')} for i, r in rows.items()}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--task', default='trec'); ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--workers', type=int, default=None, help='processes for the parallel build (default: torch threads)')
    a = ap.parse_args()
    os.environ.setdefault('HF_HUB_OFFLINE', '1')
    import torch
    workers = a.workers or torch.get_num_threads()
    print(f'{a.task} quick table, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; parallel build: {workers} processes; '
          f'load average at start {os.getloadavg()[0]:.2f}')
    times, ref = {1: [], workers: []}, None
    for rep in range(a.repeats):
        for w in (1, workers):
            rows, wall = build(a.task, w)
            times[w].append(wall)
            ref = ref or scores(rows)
            if scores(rows) != ref: sys.exit(f'rows differ between builds (workers={w}, repeat {rep + 1})')
            print(f'  repeat {rep + 1}: {w} process(es): {len(rows)} evaluations in {wall:.1f} s')
    seq, par = statistics.median(times[1]), statistics.median(times[workers])
    print(f'identical scores in every build; load average at end {os.getloadavg()[0]:.2f}')
    print(f'tables: sequential={seq:.1f}s parallel={par:.1f}s speedup={seq / par:.2f}x')

if __name__ == '__main__': main()
