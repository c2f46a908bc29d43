"""The harness end to end: papermill runs of the calibration experiments, bad input, kill-and-resume, concurrent writers,
data resolution with and without the mirror, corrupt records, and the report's sections."""
import json, os, signal, subprocess, sys, threading, time
from pathlib import Path
import pandas as pd
import papermill as pm
import pytest
from conftest import REPO
from lwstudy import data
from lwstudy.cli import main
from lwstudy.study import EXPERIMENT_PARAMETERS, experiment
from lwstudy.core import BadInput
from lwstudy.runner import Store, cells, get_spec, run_cell

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
    r = papermill(home, out=str(home/f'{technique}.ipynb'), technique=technique, profile='smoke', seeds=10)  # its default:
    # (calibrations run at their own default of 10 seeds)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (home/'reports'/f'{technique}.html').read_text()
    for s in SECTIONS: assert s in page, s
    assert 'http://' not in page and 'https://' not in page, 'the report must read offline'
    claims = pd.read_csv(home/'reports'/f'{technique}_claims.csv')
    assert len(records(home, technique)) == 20 and (home/'reports'/f'{technique}_results.csv').exists()
    claims = claims.set_index('id')
    assert (claims.family == 'calibration').all(), claims
    if technique == 'control':  # the positive control must come out: 3 epochs beat 1 (its gate passes), and take longer
        assert claims.loc['control-accuracy', 'verdict'] == 'supported' and claims.loc['control-accuracy', 'gate_passed'], claims
        time_claim = claims.loc['control-time']  # a timing claim: uninformative, saying why, when the shared host was loaded
        assert time_claim.verdict == ('supported' if time_claim.gate_passed else 'uninformative'), claims
        if not time_claim.gate_passed: assert 'load' in time_claim.gate_detail, claims
    else:  # the A/A test must not find a difference in accuracy between identical arms (two-sided)
        assert claims.loc['aa-accuracy', 'verdict'] == 'inconclusive' and claims.loc['aa-accuracy', 'gate_passed'], claims

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
    (['run', 'aa', '--profile', 'smok'], "unknown profile 'smok'; allowed: smoke, quick, full, dryrun"),
    (['run', 'aa', '--profile', 'smoke', '--device', 'gpu'], "unknown device 'gpu'; allowed: auto, cpu, cuda"),
    (['run', 'aa', '--profile', 'smoke', '--seeds', '1'], 'needs at least 2 seeds'),
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
    assert len(list((home/'results').rglob('*.lock'))) <= 1  # the killed run's claim on the cell it was computing
    first = {p: p.read_bytes() for p in done}
    res = experiment('control', 'smoke', seeds=4, device='cpu', progress=False)  # takes over the dead run's claim
    assert res.computed == 8 - len(done)
    assert len(records(home, 'control')) == 8 and not list((home/'results').rglob('*.lock'))
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
    assert not list((home/'results').rglob('*.lock'))  # (tests/test_store.py checks that each cell is computed once)

CORRUPTIONS = {'truncated': lambda t: t[:300], 'empty object': lambda t: '{}', 'a list': lambda t: '[1,2]', 'empty file': lambda t: ''}

def test_corrupt_records_are_moved_aside_and_recomputed(home, capsys):
    assert main(['run', 'aa', '--profile', 'smoke', '--seeds', '2']) == 0
    paths = records(home, 'aa'); assert len(paths) == 4
    kept = paths[-1].read_bytes()
    for p, corrupt in zip(paths, CORRUPTIONS.values()): p.write_text(corrupt(p.read_text()))
    capsys.readouterr()
    assert main(['list']) == 0  # reading the store no longer crashes on them ...
    assert main(['run', 'aa', '--profile', 'smoke', '--seeds', '2']) == 0  # ... and the run recomputes them
    err = capsys.readouterr().err
    for p in paths[:3]: assert f'corrupt record {p}' in err and Path(f'{p}.corrupt').exists(), err  # named, kept aside
    assert [json.loads(p.read_text())['seed'] for p in paths] == [int(p.name.split('seed')[1].split('__')[0]) for p in paths]
    assert Path(f'{paths[3]}.corrupt').read_bytes() == b'' and paths[3].read_bytes() != kept

def test_store_survives_concurrent_threads(tmp_path):
    store = Store(tmp_path)
    rec = lambda arm, seed, v: dict(technique='t', arm=arm, seed=seed, profile='smoke', param_hash='h', params={}, metrics={'m': v},
                                    info={}, series={}, data_sources=[], provenance=dict(device='cpu', git_commit='x'), started='', wall_s=0.0)
    def writer(i):
        for j in range(30): store.put(rec(f'arm{j % 3}', j % 5, float(i)))
    ts = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in ts: t.start()
    for t in ts: t.join()
    recs = store.records('t', 'smoke')
    assert len(recs) == 15 and all(r['metrics']['m'] in range(6) for r in recs)
    assert not list((tmp_path/'t'/'smoke').glob('.*.tmp'))

def test_same_seed_same_result(home):
    spec = get_spec('control', 'smoke')
    a, b = (run_cell(spec, '1_epoch', 7, 'smoke', 'cpu') for _ in range(2))
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
