"""Shared fixtures: every test runs in a scratch LWSTUDY_HOME (results and reports land there), offline."""
import os
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TQDM_DISABLE', '1')

def pytest_configure(config):
    config.addinivalue_line('markers', 'needs_data: needs the parquet mirror in $LWSTUDY_DATA_DIR (skipped when absent)')
    config.addinivalue_line('markers', 'slow: long-running (deselect with -m "not slow")')

def pytest_collection_modifyitems(config, items):
    has_data = bool(os.environ.get('LWSTUDY_DATA_DIR')) and Path(os.environ['LWSTUDY_DATA_DIR']).is_dir()
    skip = pytest.mark.skip(reason='needs the parquet mirror: set LWSTUDY_DATA_DIR')
    for item in items:
        if 'needs_data' in item.keywords and not has_data: item.add_marker(skip)

@pytest.fixture
def home(tmp_path, monkeypatch):
    "A scratch project home: results/ and reports/ are created under it."
    monkeypatch.setenv('LWSTUDY_HOME', str(tmp_path))
    monkeypatch.delenv('LWSTUDY_RESULTS', raising=False)
    return tmp_path

@pytest.fixture
def no_mirror(monkeypatch):
    "No parquet mirror: data resolves to stand-ins (smoke/quick) or fails (full)."
    monkeypatch.delenv('LWSTUDY_DATA_DIR', raising=False)
    from lwstudy import data
    data.hub_reachable.cache_clear()
