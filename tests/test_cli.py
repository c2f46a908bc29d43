"""The `lwstudy` console script as a user meets it: fast help naming every technique, one-line errors for bad input
before any work, a warning for missing seeds, Ctrl-C that keeps what was computed (seeds from the spec: test_newcomer)."""
import os, re, signal, socket, subprocess, sys, time
from pathlib import Path
import pytest
from conftest import REPO
from lwstudy.runner import available_techniques
from test_newcomer import technique_module

MAIN = 'import sys; from lwstudy.cli import main; sys.exit(main(sys.argv[1:]))'

def lwstudy(home, *argv, timeout=300):
    "Run the console script's `main` in a fresh interpreter with `home` as the project; returns the CompletedProcess."
    return subprocess.run([sys.executable, '-c', MAIN, *argv], capture_output=True, text=True, cwd=home, timeout=timeout,
                          env={**os.environ, 'LWSTUDY_HOME': str(home)})

def stored(home, technique, profile='smoke'):
    return sorted((Path(home)/'results'/technique/profile).glob('*.json'))

def test_help_imports_nothing_heavy_and_is_fast(home):
    probe = ("import sys\nfrom lwstudy.cli import main\n"
             "for argv in (['--help'], ['run', '--help'], ['study', '--help']):\n"
             "    try: main(argv)\n    except SystemExit: pass\n"
             "print(sorted(m for m in ('torch', 'pandas', 'matplotlib', 'scipy', 'lwstudy.runner') if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == '[]', r.stdout[-500:] + r.stderr[-2000:]
    t0 = time.perf_counter()
    r = subprocess.run([str(Path(sys.executable).parent/'lwstudy'), '--help'], capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t0
    assert r.returncode == 0 and 'usage: lwstudy' in r.stdout
    assert took < 2.0, f'lwstudy --help took {took:.1f} s'  # it took 3-6 s when it imported torch, pandas and matplotlib

def test_run_help_names_every_technique_and_explains_out_dir(home):
    r = lwstudy(home, 'run', '--help')
    assert r.returncode == 0
    text = ' '.join(r.stdout.split())  # argparse wraps lines
    for t in available_techniques(): assert t in text, t
    assert '--out-dir OUT_DIR folder for the HTML reports' in text and "default: the technique's own default_seeds" in text

def test_seeds_zero_is_named(home):
    r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--seeds', '0')
    assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr
    assert r.stderr.startswith('lwstudy: error: seeds 0: a paired comparison needs at least 2 seeds; allowed:'), r.stderr
    assert not (home/'results').exists()

def test_bad_scheduler_is_refused_before_any_work(home):
    r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--scheduler', 'foo://bar')
    assert r.returncode == 2 and r.stderr.count('\n') == 1, r.stderr
    assert "unknown scheduler 'foo://bar'; allowed: 'local' or a Dask scheduler address" in r.stderr
    for form in ('tcp://', 'tls://', 'ucx://', 'inproc://'): assert form in r.stderr
    assert not stored(home, 'aa')

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_unreachable_scheduler_fails_fast_in_one_line(home):
    address = f'tcp://127.0.0.1:{_free_port()}'  # nothing listens there
    t0 = time.perf_counter()
    r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--seeds', '2', '--scheduler', address, timeout=120)
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"lwstudy: error: no Dask scheduler answered at '{address}' within 5 s" in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert took < 25, f'took {took:.0f} s'  # distributed's default: a 30 s wait, then a traceback
    assert not stored(home, 'aa')

def test_out_dir_that_is_a_file_fails_before_any_work(home):
    (home/'afile').write_text('not a folder')
    r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--seeds', '2', '--out-dir', str(home/'afile'))
    assert r.returncode == 2 and f"out_dir '{home/'afile'}' is a file, not a folder" in r.stderr, r.stderr[-2000:]
    assert not stored(home, 'aa'), 'a cell was computed before the bad out_dir was noticed'
    r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--seeds', '2', '--out-dir', str(home/'afile'/'sub'))
    assert r.returncode == 2 and 'out_dir' in r.stderr and not stored(home, 'aa'), r.stderr[-2000:]

@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_out_dir_fails_before_any_work(home):
    ro = home/'ro'; ro.mkdir(); ro.chmod(0o555)
    try:
        r = lwstudy(home, 'run', 'aa', '--profile', 'smoke', '--seeds', '2', '--out-dir', str(ro))
        assert r.returncode == 2 and 'is not writable' in r.stderr and not stored(home, 'aa'), r.stderr[-2000:]
    finally: ro.chmod(0o755)

def test_report_warns_when_fewer_seeds_are_stored_than_asked(home):
    with technique_module() as name:
        assert lwstudy(home, 'run', name, '--profile', 'smoke', '--seeds', '3').returncode == 0
        r = lwstudy(home, 'report', name, '--profile', 'smoke', '--seeds', '10')
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'lwstudy: warning: 3 of 10 seeds stored for {name} (0, 1, 2)' in r.stderr, r.stderr  # it rendered '3 paired seeds' silently
    assert (home/'reports'/f'{name}.html').exists()

def test_ctrl_c_keeps_the_computed_cells_in_one_line(home):
    with technique_module(body='import time; time.sleep(2)') as name:  # 80 cells x 2 s: the signal lands mid-run even on a loaded host
        proc = subprocess.Popen([sys.executable, '-c', MAIN, 'run', name, '--profile', 'smoke', '--seeds', '40'], cwd=home,
                                env={**os.environ, 'LWSTUDY_HOME': str(home)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job (`make test &`) ignores SIGINT: Python would inherit that
        deadline = time.time() + 240
        while len(stored(home, name)) < 2 and time.time() < deadline and proc.poll() is None: time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert 'Traceback' not in err, err[-3000:]  # it printed a 53-line traceback
    m = re.fullmatch(r'interrupted; (\d+) cells kept, rerun to resume', err.strip().splitlines()[-1])
    assert m, err[-500:]
    kept = len(stored(home, name))
    assert 2 <= kept < 80 and int(m.group(1)) == kept, (m.group(1), kept)
    assert not list((home/'results'/name/'smoke').glob('*.lock')), 'an interrupted run must release its claims'
