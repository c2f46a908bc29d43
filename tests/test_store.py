"""The store and runner across processes: concurrent runs split the cells, claims are released on Ctrl-C, read-only
folders are refused before any work, Dask runs the spec it is given, and a technique is found by convention."""
import json, os, re, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
from conftest import REPO
from lwstudy.core import BadInput, check_writable
from lwstudy.runner import Claim, Metric, Spec, Store, TECHNIQUES, available_techniques, cells, get_spec, results_table, run, toy_spec

RUN_TOY = """
import json, sys, time
from pathlib import Path
from lwstudy.runner import Store, run, toy_spec
store, go = Store(sys.argv[1]), Path(sys.argv[2])
Path(sys.argv[3]).touch()  # imported: ready
while not go.exists(): time.sleep(0.05)
done = run(toy_spec(sleep_s=float(sys.argv[4])), seeds=4, profile='smoke', device='cpu', store=store, progress=False)
print(json.dumps(dict(done=[[c.arm, c.seed] for c in done], stored=len(store.records('toy', 'smoke')))))
"""

def test_two_processes_split_the_cells_and_compute_each_once(tmp_path):
    go, env = tmp_path/'go', {**os.environ, 'TQDM_DISABLE': '1'}
    procs = [subprocess.Popen([sys.executable, '-c', RUN_TOY, str(tmp_path/'results'), str(go), str(tmp_path/f'ready{i}'), '0.4'],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for i in range(2)]
    deadline = time.time() + 300
    while not all((tmp_path/f'ready{i}').exists() for i in range(2)) and time.time() < deadline: time.sleep(0.1)
    go.touch()  # both start at once
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    res = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    a, b = ({tuple(x) for x in r['done']} for r in res)
    everything = {(c.arm, c.seed) for c in cells(toy_spec(sleep_s=0.4), 4, 'smoke')}
    assert not a & b, f'cells computed twice: {a & b}'
    assert a | b == everything and a and b, (a, b)  # split between the two, nothing left out
    assert [r['stored'] for r in res] == [8, 8], 'each run ends with every cell stored (it waits for the other run\'s)'
    assert not list((tmp_path/'results').rglob('*.lock')) and not list((tmp_path/'results').rglob('.*.tmp'))

def _interrupting_fit(params, seed, profile):
    if seed == 1: raise KeyboardInterrupt
    return dict(score=params['x'] + 0.0)

def test_ctrl_c_releases_the_claim_and_keeps_finished_cells(tmp_path):
    spec = Spec('kbi', 'q', dict(base=dict(x=0), treat=dict(x=1)), 'base', [Metric('score', True)],
                [Claim('c', 'treat scores higher', 'score', 'treat')], _interrupting_fit)
    store = Store(tmp_path)
    with pytest.raises(KeyboardInterrupt): run(spec, seeds=3, profile='smoke', device='cpu', store=store, progress=False)
    assert sorted((r['arm'], r['seed']) for r in store.records('kbi', 'smoke')) == [('base', 0), ('treat', 0)]
    assert not list(tmp_path.rglob('*.lock')), 'the interrupted cell was released'

def test_run_sweeps_orphaned_temp_files(tmp_path):
    store = Store(tmp_path); folder = store.folder('toy', 'smoke'); folder.mkdir(parents=True)
    old, young = folder/'.base__seed0__x.json.99.dead.tmp', folder/'.base__seed0__x.json.98.live.tmp'
    old.write_bytes(b''); young.write_bytes(b''); os.utime(old, (time.time() - 3600,) * 2)  # a disk-full write left a 0-byte one
    run(toy_spec(), seeds=2, profile='smoke', device='cpu', store=store, progress=False)
    assert not old.exists() and young.exists()

RUN_INTO = """
import sys
from lwstudy.core import BadInput
from lwstudy.runner import Store, run, toy_spec
try: run(toy_spec(), seeds=2, profile='smoke', device='cpu', store=Store(sys.argv[1]), progress=False, on_cell=lambda c, r: print('computed', c))
except BadInput as e: print('BadInput:', e); sys.exit(2)
"""

def _make_read_only(folder:Path):
    "Make `folder` read-only for this process: chmod for a normal user; a read-only tmpfs mount for root (which ignores modes)."
    if os.geteuid() != 0: os.chmod(folder, 0o555); return lambda: os.chmod(folder, 0o755)
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', str(folder)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'running as root and cannot mount a read-only folder: {r.stderr.strip()}')
    return lambda: subprocess.run(['umount', str(folder)], check=True)

@pytest.mark.parametrize('where', ['root', 'technique folder'])
def test_read_only_results_folder_is_refused_before_any_work(tmp_path, where):
    ro = tmp_path/'results' if where == 'root' else tmp_path/'results'/'toy'/'smoke'
    ro.mkdir(parents=True)
    undo = _make_read_only(ro)
    try:
        r = subprocess.run([sys.executable, '-c', RUN_INTO, str(tmp_path/'results')], capture_output=True, text=True, timeout=300,
                           env={**os.environ, 'TQDM_DISABLE': '1'})
        assert r.returncode == 2, r.stdout + r.stderr[-2000:]
        assert f"BadInput: results folder {str(ro)!r} is not writable" in r.stdout and 'computed' not in r.stdout, r.stdout
    finally: undo()

def test_results_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path/'file').write_text('x')
    with pytest.raises(BadInput, match=re.escape(f"results folder '{tmp_path}/file' is a file")):
        run(toy_spec(), seeds=2, profile='smoke', device='cpu', store=Store(tmp_path/'file'), progress=False)
    with pytest.raises(BadInput, match=re.escape(f"out_dir '{tmp_path}/file/reports' cannot be created ('{tmp_path}/file' is a file)")):
        check_writable(tmp_path/'file'/'reports', 'out_dir')

def test_dask_runs_the_spec_it_is_given(tmp_path):
    from distributed import Client, LocalCluster
    spec = toy_spec(effect=2.0)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        done = run(spec, seeds=3, profile='smoke', device='cpu', store=Store(tmp_path), scheduler=client, progress=False)
    assert len(done) == 6 and not list(tmp_path.rglob('*.lock'))
    tab = results_table(spec, 'smoke', Store(tmp_path)).pivot_table(index='seed', columns='arm', values='value')
    assert np.allclose(tab.treat - tab.base, 2.0, atol=0.5), tab  # effect 2.0, as built (not the registry's default 1.0)
    recs = Store(tmp_path).records('toy', 'smoke')
    assert {r['info']['note'] for r in recs if r['arm'] == 'treat'} == {'effect 2.0'}
    assert all(r['provenance']['load_avg_start'] is not None for r in recs)

EXAMPLE = '''
"""A tiny example technique written by tests/test_store.py (removed afterwards)."""
from lwstudy.runner import Claim, Metric, Spec, gate_mean

def fit(params:dict, seed:int, profile:str) -> dict:
    "The score is the arm's level plus a little seed noise."
    return dict(score=params['level'] + 0.01 * ((seed * 7) % 5))

def spec(profile:str='quick') -> Spec:
    "The example's Spec."
    return Spec(__name__.rsplit('.', 1)[-1], 'Does level 1 score higher than level 0?', dict(low=dict(level=0.0), high=dict(level=1.0)),
                'low', [Metric('score', True)], [Claim('ex-1', 'high scores higher', 'score', 'high', family='primary',
                                                       gate=gate_mean('score', 'high', '>', 0.5))], fit, default_seeds=2)
'''

def test_a_new_technique_module_is_found_with_no_other_edit(tmp_path):
    name = f'example_tmp_{os.getpid()}'
    path = REPO/'lwstudy'/'techniques'/f'{name}.py'
    assert name not in available_techniques()
    try:
        path.write_text(EXAMPLE)
        assert name in available_techniques() and TECHNIQUES[name] == f'lwstudy.techniques.{name}:spec'
        spec = get_spec(name, 'smoke')
        assert spec.name == name and spec.default_seeds == 2
        assert len(run(spec, profile='smoke', device='cpu', store=Store(tmp_path), progress=False)) == 4
        assert len(Store(tmp_path).records(name, 'smoke')) == 4
    finally:
        path.unlink(missing_ok=True)
        for p in (path.parent/'__pycache__').glob(f'{name}.*'): p.unlink()
        sys.modules.pop(f'lwstudy.techniques.{name}', None)
    assert name not in available_techniques() and name not in TECHNIQUES
