"""The whole study: run_study through papermill, the study report, Dask execution equal to serial, and the reports seen
in a real browser (headless Chromium; skipped where it is not installed, installed by .ci/run)."""
import json, os, shutil, subprocess, sys
from pathlib import Path
import pandas as pd
import pytest
from conftest import REPO
from lwstudy.stats import VERDICTS
from lwstudy.study import experiment
from lwstudy.runner import Store

CHROMIUM, DRIVER = shutil.which('chromium'), shutil.which('chromedriver')

def test_study_through_papermill(home):
    cmd = [sys.executable, '-m', 'papermill', str(REPO/'nbs'/'run_study.ipynb'), str(home/'study.ipynb'), '-p', 'techniques',
           'aa,control', '-p', 'profile', 'smoke', '-p', 'seeds', '3', '--cwd', str(home)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'LWSTUDY_HOME': str(home)}, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    page = (home/'reports'/'index.html').read_text()
    for s in ['<h2>Pictures</h2>', '<h2>Verdicts</h2>', '<h2>Compute</h2>', 'href="aa.html"', 'href="control.html"', 'produced from commit']: assert s in page
    claims = pd.read_csv(home/'reports'/'study_claims.csv')
    assert set(claims.technique) == {'aa', 'control'} and claims.verdict.isin(VERDICTS).all()
    for t in ('aa', 'control'): assert (home/'reports'/f'{t}.html').exists()

def test_misspelt_study_parameter_is_an_error(home):
    cmd = [sys.executable, '-m', 'papermill', str(REPO/'nbs'/'run_study.ipynb'), str(home/'s.ipynb'), '-p', 'technique', 'aa']
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'LWSTUDY_HOME': str(home)}, timeout=300)
    assert r.returncode != 0 and "unknown parameter(s) 'technique'; allowed: techniques" in r.stdout + r.stderr

def test_dask_cluster_gives_the_serial_results(tmp_path):
    from distributed import Client, LocalCluster
    import torch
    serial, dask = Store(tmp_path/'serial'), Store(tmp_path/'dask')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on Dask's workers (OMP_NUM_THREADS=1): float reductions depend on the thread count
    try: experiment('aa', 'smoke', seeds=2, device='cpu', out_dir=tmp_path/'r1', store=serial, progress=False)
    finally: torch.set_num_threads(threads)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        res = experiment('aa', 'smoke', seeds=2, device='cpu', out_dir=tmp_path/'r2', store=dask, scheduler=client, progress=False)
    assert res.computed == 4
    key = lambda r: (r['arm'], r['seed'])
    a, b = sorted(serial.records('aa', 'smoke'), key=key), sorted(dask.records('aa', 'smoke'), key=key)
    assert [key(r) for r in a] == [key(r) for r in b] == sorted((x, s) for x in 'AB' for s in range(2))
    for ra, rb in zip(a, b):
        for m in ('test_accuracy', 'test_f1', 'final_train_loss'):
            assert ra['metrics'][m] == pytest.approx(rb['metrics'][m], rel=1e-5), (key(ra), m)

@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason='headless Chromium and chromedriver are not installed (.ci/run installs them)')
def test_reports_render_in_a_real_browser(home):
    from lwstudy.study import study
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    index = study('aa,control', 'smoke', seeds=2, device='cpu', progress=False).index
    opts = webdriver.ChromeOptions()
    for a in ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
              '--disable-component-update', '--disable-sync', '--no-first-run', '--window-size=1400,2400']: opts.add_argument(a)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    shots = REPO/'reports'; shots.mkdir(exist_ok=True)
    try:
        for page in (index, index.parent/'control.html'):
            driver.get(page.as_uri())
            verdicts = driver.find_element(By.XPATH, "//h2[text()='Verdicts']/following-sibling::table[1]")
            assert verdicts.is_displayed() and verdicts.size['height'] > 40
            rows = verdicts.find_elements(By.XPATH, './/tbody/tr')
            assert rows and all(r.get_attribute('class') in VERDICTS for r in rows)
            widths = driver.execute_script('return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)')
            if page.name != 'index.html': assert widths and all(w > 100 for w in widths), widths  # plots decoded and shown
            driver.save_screenshot(str(shots/f'screenshot_{page.stem}.png'))
    finally:
        driver.quit()
