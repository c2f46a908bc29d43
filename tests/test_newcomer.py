"""The newcomer's path: a new technique is one module and nothing else; the study isolates a failing technique and shows
progress; JupyterLab serves nbs/ and its registered kernel executes a technique notebook; the README's verdict excerpt is
generated from the committed reports; `make study` runs the terminal study with PROFILE/SEEDS."""
import contextlib, json, os, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path
import pandas as pd
import pytest
from conftest import REPO
from lwstudy.runner import available_techniques

MAIN = 'import sys; from lwstudy.cli import main; sys.exit(main(sys.argv[1:]))'
BIN = Path(sys.executable).parent

EXAMPLE = '''"""A tiny example technique written by tests/test_newcomer.py (removed when the test ends)."""
import numpy as np
from lwstudy.runner import Claim, Metric, Spec

def fit(params, # the arm's parameters
        seed:int, # the cell's seed
        profile:str, # the profile (unused: the example is the same everywhere)
       ) -> dict:
    "A score with seed-to-seed noise shared by the arms, plus the arm's shift."
    rng = np.random.default_rng(seed)
    return dict(score=float(rng.normal() + params['shift'] + 0.01 * np.random.default_rng([seed, 7]).normal()))

def spec(profile:str) -> Spec:
    return Spec('{NAME}', 'Does a shift raise the score?', dict(base=dict(shift=0.0), shifted=dict(shift=1.0)), 'base',
                [Metric('score', True)], [Claim('shift-raises', 'the shift raises the score', 'score', 'shifted')], fit,
                default_seeds=3)
'''

def lwstudy(home, *argv, timeout=300):
    return subprocess.run([sys.executable, '-c', MAIN, *argv], capture_output=True, text=True, cwd=home, timeout=timeout,
                          env={**os.environ, 'LWSTUDY_HOME': str(home)})

@contextlib.contextmanager
def technique_module(prefix:str='zz_example', # the module (and technique) name starts with this
                     body:str='', # a line of code to run first in `fit`, e.g. a raise or a sleep
                    ):
    "A tiny technique module written into lwstudy/techniques/ (found by convention, no other edit); removed afterwards."
    name = f'{prefix}_{uuid.uuid4().hex[:6]}'
    path = REPO/'lwstudy'/'techniques'/f'{name}.py'
    src = EXAMPLE.replace('{NAME}', name)
    if body: src = src.replace('    rng = np.random.default_rng(seed)\n', f'    {body}\n    rng = np.random.default_rng(seed)\n')
    path.write_text(src)
    try: yield name
    finally: path.unlink(missing_ok=True)

@pytest.fixture
def example_modules():
    "Two technique modules: one that works and one whose cells raise."
    with technique_module() as good, technique_module('zz_broken', 'raise RuntimeError("<b>broken</b> on purpose")') as bad:
        yield good, bad

def test_a_new_technique_is_one_module(home, example_modules):
    good, bad = example_modules
    assert good in available_techniques() and bad in available_techniques()
    listing = lwstudy(home, 'list')
    assert listing.returncode == 0 and good in listing.stdout, listing.stderr[-2000:]
    assert good in ' '.join(lwstudy(home, 'run', '--help').stdout.split())
    r = lwstudy(home, 'run', good, '--profile', 'smoke')
    assert r.returncode == 0, r.stderr[-3000:]
    assert '(6 cells computed, 0 reused' in r.stdout and (home/'reports'/f'{good}.html').exists()  # default_seeds=3, 2 arms
    assert f'{good}: 6/6 cells' in r.stderr and 'finished in' in r.stderr  # progress and summary on stderr

def test_study_isolates_a_failing_technique(home, example_modules):
    good, bad = example_modules
    r = lwstudy(home, 'study', '--techniques', f'{bad},{good}', '--profile', 'smoke', '--seeds', '2')
    assert r.returncode == 1, r.stderr[-3000:]  # said at the end, after the index is written
    assert f'study report: {home/"reports"/"index.html"} (1 technique(s) failed: {bad})' in r.stdout, r.stdout
    assert f'{bad}: FAILED: RuntimeError: <b>broken</b> on purpose' in r.stderr
    assert f'{good}: 4/4 cells' in r.stderr and 'cells to compute' in r.stderr and 'left' in r.stderr
    page = (home/'reports'/'index.html').read_text()
    assert f'failed: RuntimeError: &lt;b&gt;broken&lt;/b&gt; on purpose' in page and '<b>broken</b>' not in page
    assert f'href="{good}.html"' in page and f'href="{bad}.html"' not in page
    claims = pd.read_csv(home/'reports'/'study_claims.csv')
    assert set(claims.technique) == {good}
    assert pd.read_csv(home/'reports'/'study_failures.csv').technique.tolist() == [bad]
    summary = r.stderr[r.stderr.index('finished in'):]
    assert good in summary and bad in summary and 'reports: ' in summary

def test_registered_kernel_executes_a_technique_notebook(tmp_path):
    specs = json.loads(subprocess.run([str(BIN/'jupyter'), 'kernelspec', 'list', '--json'], capture_output=True, text=True,
                                      env={**os.environ, 'JUPYTER_PREFER_ENV_PATH': '1'}, timeout=60).stdout)['kernelspecs']
    assert 'python3' in specs, specs
    kernel_python = Path(specs['python3']['spec']['argv'][0])
    assert kernel_python.name.startswith('python'), kernel_python
    out = tmp_path/'08.ipynb'
    r = subprocess.run([str(BIN/'jupyter'), 'nbconvert', '--to', 'notebook', '--execute', str(REPO/'nbs'/'08_calibration.ipynb'),
                        '--output', str(out), '--ExecutePreprocessor.kernel_name=python3', '--ExecutePreprocessor.timeout=600'],
                       capture_output=True, text=True, cwd=REPO/'nbs', timeout=900,
                       env={**os.environ, 'JUPYTER_PREFER_ENV_PATH': '1', 'LWSTUDY_HOME': str(tmp_path)})
    assert r.returncode == 0, r.stderr[-3000:]
    nb = json.loads(out.read_text())
    texts = [''.join(o.get('text', '')) for c in nb['cells'] if c['cell_type'] == 'code' for o in c.get('outputs', [])]
    assert sum(c['cell_type'] == 'code' and c.get('execution_count') is not None for c in nb['cells']) >= 5
    assert not any('IProgress not found' in t for t in texts), 'ipywidgets missing from the kernel'

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_jupyterlab_serves_the_notebooks(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    cmd = [str(BIN/'jupyter'), 'lab', '--ServerApp.root_dir=nbs', '--no-browser', f'--port={port}', f'--IdentityProvider.token={token}']
    if os.geteuid() == 0: cmd.append('--allow-root')  # as `make lab` does
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path), 'JUPYTER_PREFER_ENV_PATH': '1'})
    try:
        deadline, listing = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/contents?token={token}', timeout=5) as resp: listing = json.load(resp)
                break
            except OSError: time.sleep(1)
        assert listing, f'JupyterLab did not answer: {proc.stderr.read()[-2000:] if proc.poll() is not None else "timeout"}'
        assert '08_calibration.ipynb' in {c['name'] for c in listing['content']}
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/lab?token={token}', timeout=10) as resp: assert resp.status == 200
    finally:
        proc.terminate(); proc.wait(timeout=30)

def test_readme_excerpt_is_generated_from_the_reports(tmp_path):
    reports = tmp_path/'reports'; reports.mkdir()
    rows = [dict(technique='control', id='c', claim='3 epochs beat 1 | calibration', family='calibration', on='diff', estimate=0.1,
                 lo_adj=0.09, hi_adj=0.11, ci_level=0.95, gate='', gate_passed=True, verdict='supported'),
            dict(technique='distill', id='d', claim='student is faster', family='primary', on='ratio', estimate=1.98, lo_adj=1.9,
                 hi_adj=2.05, ci_level=0.9833, gate='teacher beats chance', gate_passed=False, verdict='uninformative'),
            dict(technique='distill', id='e', claim='an exploratory one', family='exploratory', on='diff', estimate=0.0,
                 lo_adj=-1, hi_adj=1, ci_level=0.95, gate='', gate_passed=True, verdict='inconclusive')]
    pd.DataFrame(rows).to_csv(reports/'study_claims.csv', index=False)
    pd.DataFrame(dict(profile=['quick'], technique='distill', arm='a', mean_cell_s=1.0)).to_csv(reports/'study_compute.csv', index=False)
    (reports/'index.html').write_text('<p>produced from commit <code>abc123def456</code></p>')
    readme = tmp_path/'README.md'
    readme.write_text('# x\n<!-- verdicts:start -->\nold hand-typed table\n<!-- verdicts:end -->\nrest\n')
    script = [sys.executable, str(REPO/'scripts'/'readme_excerpt.py'), '--claims', str(reports/'study_claims.csv'), '--readme', str(readme)]
    assert subprocess.run(script + ['--check'], capture_output=True).returncode == 1  # out of date
    r = subprocess.run(script, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = readme.read_text()
    assert 'old hand-typed table' not in text and text.endswith('<!-- verdicts:end -->\nrest\n')
    assert 'profile `quick`, commit `abc123def456`' in text
    assert '| control | 3 epochs beat 1 \\| calibration | +0.1 [0.09, 0.11] | — | supported |' in text
    assert '| distill | student is faster | 1.98x [1.9, 2.05] (98.3% CI) | FAILED: teacher beats chance | uninformative |' in text
    assert 'an exploratory one' not in text  # the excerpt: calibration and primary claims
    assert subprocess.run(script + ['--check'], capture_output=True).returncode == 0
    assert '<!-- verdicts:start -->' in (REPO/'README.md').read_text() and '<!-- verdicts:end -->' in (REPO/'README.md').read_text()

def test_readme_first_command_is_make_study_with_profile_and_seeds():
    readme = (REPO/'README.md').read_text()
    first = readme.split('```bash\n', 1)[1].splitlines()[0].split('#')[0].strip()
    assert first == 'make study'
    dry = lambda *a: subprocess.run(['make', '-n', '-o', '.venv/.installed', 'study', *a], capture_output=True, text=True, cwd=REPO).stdout
    assert 'lwstudy study --profile smoke --seeds 2' in dry('PROFILE=smoke', 'SEEDS=2')
    assert 'lwstudy study --profile quick' in dry() and '--seeds' not in dry()  # SEEDS empty: each technique's default
