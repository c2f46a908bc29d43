"""The sparse technique across modules: the kernel bench (bench/sparse.py) and what the report shows of its saved output, the
report sections on a results table, the claims' gate, a dryrun cell, and a smoke study."""
import importlib.util, json, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from lwstudy.core import BadInput, project_root
from lwstudy.techniques import sparse as S

warnings.filterwarnings('ignore', message='.*Sparse.*')


def _bench():
    spec = importlib.util.spec_from_file_location('bench_sparse', Path(__file__).parents[1]/'bench'/'sparse.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_break_even_needs_every_higher_level():
    B = _bench()
    rows = [dict(shape='a', rep='CSR', sparsity=s, speedup=v) for s, v in ((0.5, 1.1), (0.7, 0.3), (0.9, 1.2), (0.95, 2.0))]
    rows += [dict(shape='a', rep='BSR 4x4', sparsity=s, speedup=0.5) for s in (0.5, 0.9)]
    assert B.break_even(rows) == {('a', 'CSR'): 0.9, ('a', 'BSR 4x4'): None}


def test_layer_shapes_follow_the_params():
    B, p = _bench(), S.sizes('smoke')
    c, t = p['parts']['cnn'], p['parts']['tf']
    shapes = dict((n, (o, i, cols)) for n, o, i, cols in B.layer_shapes(p))
    assert shapes['cnn fc1'] == (c['hidden'], c['widths'][2] * (c['img_size'] // 8) ** 2, c['infer_batch'])
    assert shapes['tf ff2'] == (t['d'], t['ff'], t['infer_batch'] * t['seq_len'])


def test_bench_saves_atomically_what_the_report_shows(home):
    "bench/sparse.py on smoke's shapes: its saved JSON and figure are what the kernel-sweep section shows, escaped."
    B = _bench()
    B.main(['--profile', 'smoke', '--sparsities', '0.5,0.9', '--blocks', '1,4', '--repeats', '1', '--max-cols', '64'])
    saved = json.loads((project_root()/S.BENCH_JSON).read_text())
    assert {r['rep'] for r in saved['rows']} == {'CSR', 'BSR 4x4'} and len(saved['break_even']) == 2 * len(B.layer_shapes(S.sizes('smoke')))
    assert all(r['sparse_mb'] > 0 and r['dense_ms'] > 0 for r in saved['rows'])
    assert (project_root()/S.BENCH_PNG).read_bytes()[:4] == b'\x89PNG'
    assert not list((project_root()/S.BENCH_JSON).parent.glob('.*.tmp'))  # no temp file left behind
    html = S._sweep_html()
    assert 'data:image/png;base64,' in html and all(b in html for b in saved['break_even'])


def _table(rows):
    return pd.DataFrame([dict(arm=a, seed=s, metric=m, value=v) for a, s, m, v in rows])


def test_accuracy_gate_needs_dense_above_chance_and_a_small_standard_error():
    good = _table([('dense', s, 'cnn_acc_over_chance', 0.3) for s in (0, 1)] + [('dense', s, 'cnn_test_se', 0.004) for s in (0, 1)])
    g = S.accuracy_gate('cnn')
    assert g(good, [])[0]
    at_chance = good.assign(value=np.where(good.metric == 'cnn_acc_over_chance', S.CHANCE_MARGIN - 0.01, good.value))
    assert not g(at_chance, [])[0]
    small_test = good.assign(value=np.where((good.metric == 'cnn_test_se') & (good.seed == 0), S.ACC_TOL / 2 + 1e-4, good.value))
    assert not g(small_test, [])[0]


def test_check_arm_refuses_kernel_training_it_cannot_do():
    csr = S.spec('smoke').arms['random_50']
    assert csr['train_kernels']
    S.check_arm(csr)
    for bad in (dict(block=4), dict(mask='gmp'), dict(mask='rigl'), dict(sparsity=0.0)):  # a moving pattern cannot train with fixed CSR indices
        with pytest.raises(BadInput, match='allowed: block 1'): S.check_arm(dict(csr, **bad))
    with pytest.raises(BadInput, match="'magnitude'"): S.check_arm(dict(csr, mask='magnitude'))


def _fake_table():
    rows = []
    for arm, t in (('dense', 1.0), ('random_50', 2.0), ('block4_50', 1.5), ('block32_90', 0.5)):
        for s in (0, 1):
            for p in ('cnn', 'tf'):
                vals = dict(test_accuracy=0.6, chance=0.5, acc_over_chance=0.1, params_frac=0.5, flops_frac=0.5, infer_ms=10 * t,
                            infer_masked_ms=10.0, infer_peak_mb=1.0, train_time_s=1.0, train_peak_mb=1.0, train_state_mb=1.0,
                            storage_mb=1.0)
                rows += [(arm, s, f'{p}_{k}', v) for k, v in vals.items()]
    return _table(rows)


def test_sections_use_the_table_and_escape_the_saved_sweep(home, monkeypatch):
    from lwstudy import report
    from lwstudy.core import atomic_write
    evil = '<script>alert(1)</script>'
    atomic_write(project_root()/S.BENCH_JSON, json.dumps(dict(when=evil, device=evil, repeats=evil, profile=evil, rows=[],
                                                              break_even=[evil, f'{evil} / CSR: breaks even at 90%'])))
    atomic_write(project_root()/S.SWEEP_JSON, json.dumps(dict(when=evil, device=evil, profile=evil, seed=evil, rows=[],
                                                              pareto={evil: [evil]}, break_even=[evil])))
    monkeypatch.setattr(report, 'claim_table', lambda *a, **k: pytest.fail('a report hook re-ran claim_table'))
    page = ''.join(h for _, h in S.sections([], _fake_table()))
    assert '<script>' not in page and page.count('&lt;script&gt;') >= 12
    assert 'block32_90: speed-up 2.00x' in page  # dense 10 ms / 5 ms, from the table it was given
    assert 'Realised inference is slower than dense for:</b> CNN random_50 (0.50x), CNN block4_50 (0.67x)' in page


def test_sections_without_a_saved_sweep_say_how_to_make_one(home):
    html = dict(S.sections([], _fake_table()))['Kernel sweep: sparse vs dense matrix products']
    assert 'No saved output' in html and 'python bench/sparse.py' in html


@pytest.mark.slow
def test_dryrun_cell_runs_offline(no_mirror):
    "One dryrun cell of the sparse 4x4 arm: full's models through the kernels, on the stand-ins."
    out = S.fit(S.spec('dryrun').arms['block4_50'], 0, 'dryrun')
    assert out['cnn_layer_sparsity'] == pytest.approx(0.5) and out['tf_layer_sparsity'] == pytest.approx(0.5)
    assert out['cnn_kernel_max_abs_diff'] < 1e-3 and out['tf_n_test'] == S.sizes('dryrun')['parts']['tf']['n_test']


def test_smoke_run_and_report(home):
    from lwstudy.study import experiment
    res = experiment('sparse', 'smoke', seeds=2, progress=False)
    assert res.computed == 2 * len(S.ARMS) and res.report.exists()
    t = res.table
    frac = t[(t.metric == 'cnn_params_frac')].groupby('arm').value.mean()
    assert frac['dense'] == 1.0 and frac['block4_50'] < 1 and frac['block32_90'] < frac['block4_50']
    assert frac['gmp_block4_50'] == frac['block4_50'] and frac['gmp_block32_90'] == frac['block32_90']  # pruned to the same tiles
    assert frac['rigl_90'] == frac['csr_90']  # RigL moves the pattern at constant sparsity
    state = t[t.metric == 'cnn_train_state_mb'].groupby('arm').value.mean()  # CSR: values + int32 indices; masked dense adds a mask
    assert state['csr_90'] < state['random_50'] < state['dense'] < state['block4_50']
    assert (t[t.metric == 'tf_test_accuracy'].value.between(0, 1)).all()
    page = res.report.read_text()
    assert 'Theory vs reality' in page and 'Kernel sweep' in page and 'Goal' in page


def test_csr_training_runs_under_bf16_autocast_in_fp32():
    "MKL's CSR product has no bf16: under CPU autocast the CSR layers compute in fp32 and give the fp32 result and gradients."
    import torch, torch.nn as nn
    from lwstudy.train import autocast
    torch.manual_seed(0)
    model = S.train_kernels(S.sparsify(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4)), 0.9, 1, 0))
    x, layer = torch.randn(8, 16), model[2]
    h = torch.randn(8, 32, dtype=torch.bfloat16)
    with autocast('bf16', 'cpu'): got = layer(h)
    want = layer(h.float())
    assert got.dtype == torch.float32 and torch.equal(got, want)
    with autocast('bf16', 'cpu'): loss = model(x).float().sum()
    loss.backward()  # outside autocast, as `train` does
    assert all(m.values.grad is not None and m.values.grad.dtype == torch.float32 for m in S.sparse_layers(model))
