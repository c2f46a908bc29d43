"""The harness end to end: papermill runs of the calibration experiments, bad input, kill-and-resume, concurrent writers,
data resolution with and without the mirror, and the report's sections."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import pandas as pd
import papermill as pm
import pytest
from conftest import REPO
from lwstudy import data
from lwstudy.cli import EXPERIMENT_PARAMETERS, experiment, main
from lwstudy.core import BadInput
from lwstudy.runner import Store, cells, get_spec

TEMPLATE = REPO/'nbs'/'run_experiment.ipynb'
SECTIONS = ['<h2>Data</h2>', '<h2>Verdicts</h2>', '<h2>Results</h2>', '<h2>Per-seed paired plots</h2>', '<h2>Protocol</h2>',
            '<h2>Provenance</h2>', 'data:image/png;base64,']

def papermill(home, *args, out='-', **kw):
    "Run the template with papermill in a subprocess from `home`."
    params = sum((['-p', k, str(v)] for k, v in kw.items()), [])
    cmd = [sys.executable, '-m', 'papermill', str(TEMPLATE), *([out] if out else []), *params, '--cwd', str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=home, env={**os.environ, 'LWSTUDY_HOME': str(home)}, timeout=600)

def records(home, technique, profile='smoke'):
    return sorted((home/'results'/technique/profile).glob('*.json'))

def test_template_parameters_match_the_checked_names():
    params = pm.inspect_notebook(str(TEMPLATE))
    assert list(params) == list(EXPERIMENT_PARAMETERS)
    for name, typ in EXPERIMENT_PARAMETERS.items(): assert params[name]['inferred_type_name'] == typ.__name__

@pytest.mark.parametrize('technique', ['aa', 'control'])
def test_calibration_through_papermill(home, technique):
    r = papermill(home, out=str(home/f'{technique}.ipynb'), technique=technique, profile='smoke', seeds=5)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (home/'reports'/f'{technique}.html').read_text()
    for s in SECTIONS: assert s in page, s
    assert 'http://' not in page and 'https://' not in page, 'the report must read offline'
    claims = pd.read_csv(home/'reports'/f'{technique}_claims.csv')
    assert len(records(home, technique)) == 10 and (home/'reports'/f'{technique}_results.csv').exists()
    if technique == 'control':  # the positive control must come out: 3 epochs beat 1, and take longer
        assert claims.verdict.tolist() == ['supported', 'supported'], claims
    else:  # the A/A test must not find a difference in accuracy between identical arms
        assert claims.set_index('id').loc['aa-accuracy', 'verdict'] == 'inconclusive', claims

def test_piped_papermill_still_writes_the_report(home):
    assert papermill(home, out=str(home/'a.ipynb'), technique='aa', profile='smoke', seeds=2).returncode == 0
    (home/'reports'/'aa.html').unlink()
    before = {p: p.stat().st_mtime for p in records(home, 'aa')}
    r = papermill(home, out=None, technique='aa', profile='smoke', seeds=2)  # stdout is a pipe: papermill writes the notebook there
    assert r.returncode == 0, r.stderr[-2000:]
    assert (home/'reports'/'aa.html').exists()
    assert {p: p.stat().st_mtime for p in records(home, 'aa')} == before, 'a cached re-run must not recompute cells'

def test_misspelt_papermill_parameter_is_an_error(home):
    r = papermill(home, out=str(home/'x.ipynb'), tecnique='aa', profile='smoke')
    assert r.returncode != 0
    assert "unknown parameter(s) 'tecnique'; allowed: technique, profile, seeds, device, out_dir, scheduler" in r.stdout + r.stderr
    assert not (home/'results').exists()

@pytest.mark.parametrize('argv, message', [
    (['run', 'distil', '--profile', 'smoke'], "unknown technique 'distil'; allowed: aa, control"),
    (['run', 'aa', '--profile', 'smok'], "unknown profile 'smok'; allowed: smoke, quick, full"),
    (['run', 'aa', '--profile', 'smoke', '--device', 'gpu'], "unknown device 'gpu'; allowed: auto, cpu, cuda"),
    (['run', 'aa', '--profile', 'smoke', '--seeds', '1'], 'needs at least 2 distinct seeds'),
    (['run', 'aa', '--profile', 'smoke', '--scheduler', 'slurm'], "unknown scheduler 'slurm'"),
    (['report', 'aa', '--profile', 'quick'], "no stored results for 'aa' in profile 'quick'"),
])
def test_bad_input_stops_before_work_and_keeps_results(home, capsys, argv, message):
    assert main(['run', 'aa', '--profile', 'smoke', '--seeds', '2']) == 0
    kept = {p: p.read_bytes() for p in records(home, 'aa')}
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in records(home, 'aa')} == kept

def test_unresolvable_dataset_stops_before_work(home, no_mirror, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(data.DataUnavailable, match="dataset 'cifar10' split 'train' cannot be resolved under profile 'full'"):
        experiment('aa', 'full', seeds=2, device='cpu', progress=False)
    assert not (home/'results').exists()

def test_killed_run_resumes_without_losing_cells(home):
    cmd = [sys.executable, '-m', 'lwstudy.cli', 'run', 'control', '--profile', 'smoke', '--seeds', '4']
    env = {**os.environ, 'LWSTUDY_HOME': str(home)}
    proc = subprocess.Popen([sys.executable, '-c', 'from lwstudy.cli import main; import sys; sys.exit(main(sys.argv[1:]))',
                             *cmd[3:]], env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(records(home, 'control')) < 2 and time.time() < deadline and proc.poll() is None: time.sleep(0.2)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done = records(home, 'control')
    assert 2 <= len(done) < 8, f'the kill should land mid-run ({len(done)} cells stored)'
    for p in done: json.loads(p.read_text())  # every stored record is whole
    first = {p: p.read_bytes() for p in done}
    res = experiment('control', 'smoke', seeds=4, device='cpu', progress=False)
    assert res.computed == 8 - len(done)
    assert len(records(home, 'control')) == 8
    assert all(p.read_bytes() == b for p, b in first.items()), 'finished cells are never recomputed'

def test_two_runs_writing_at_once_lose_nothing(home):
    env = {**os.environ, 'LWSTUDY_HOME': str(home)}
    run = lambda: subprocess.Popen([sys.executable, '-c', 'from lwstudy.cli import main; import sys; sys.exit(main(sys.argv[1:]))',
                                    'run', 'aa', '--profile', 'smoke', '--seeds', '3'], env=env, cwd=home,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    a, b = run(), run()
    assert a.wait(timeout=600) == 0 and b.wait(timeout=600) == 0
    recs = [json.loads(p.read_text()) for p in records(home, 'aa')]
    assert sorted((r['arm'], r['seed']) for r in recs) == sorted((a, s) for a in 'AB' for s in range(3))

def test_store_survives_concurrent_threads(tmp_path):
    store = Store(tmp_path)
    rec = lambda arm, seed, v: dict(technique='t', arm=arm, seed=seed, profile='smoke', param_hash='h', metrics={'m': v})
    def writer(i):
        for j in range(30): store.put(rec(f'arm{j % 3}', j % 5, float(i)))
    ts = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in ts: t.start()
    for t in ts: t.join()
    recs = store.records('t', 'smoke')
    assert len(recs) == 15 and all(r['metrics']['m'] in range(6) for r in recs)
    assert not list((tmp_path/'t'/'smoke').glob('.*.tmp'))

def test_same_seed_same_result(home):
    from lwstudy.runner import run_cell
    a, b = (run_cell('control', '1_epoch', 7, 'smoke', 'cpu') for _ in range(2))
    for m in ('test_accuracy', 'final_train_loss'): assert a['metrics'][m] == b['metrics'][m]

def test_cells_pair_every_arm_with_every_seed():
    spec = get_spec('control', 'smoke')
    cs = cells(spec, 3, 'smoke')
    assert sorted((c.arm, c.seed) for c in cs) == sorted((a, s) for a in spec.arms for s in range(3))
    assert [c.arm for c in cs[:2]] != [c.arm for c in cs[2:4]], 'arm order rotates between seeds'

@pytest.mark.needs_data
def test_mirror_is_preferred_and_recorded(home):
    src = data.resolve('sst2', 'validation', 'quick')
    assert src.kind == 'mirror'
    df = data.load('rotten_tomatoes', 'validation')
    assert len(df) == 1066 and df.text[0].startswith('compassionately explores')  # the Hub's validation split
    res = experiment('aa', 'smoke', seeds=2, device='cpu', progress=False)
    assert not res.table.standin.any() and res.table.data_source.str.contains('mirror').all()
    assert 'STAND-IN' not in res.report.read_text()

def test_standin_without_mirror_is_flagged(home, no_mirror):
    res = experiment('aa', 'smoke', seeds=2, device='cpu', progress=False)
    assert res.table.standin.all() and res.table.data_source.str.contains('digits').all()
    assert 'Stand-in data.' in res.report.read_text()

def test_offline_detection_is_fast(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1'); data.hub_reachable.cache_clear()
    t0 = time.time(); assert not data.hub_reachable(); assert time.time() - t0 < 1
