"""metabo across modules: the evaluation table kept by `core.disk_cached` (resume, a corrupt file), the feature cache,
the stand-in data scaled to size, the dryrun path, and a smoke run through the runner and the report.
Checks of one function (grid, optimiser, warm start, regret, leave-one-task-out, headroom) sit beside it in nbs/20_metabo.ipynb."""
import numpy as np
import pytest
from lwstudy.core import cache_dir
from lwstudy.techniques import metabo as mb


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A scratch `cache_dir()`: features and evaluations computed afresh."
    monkeypatch.setenv('LWSTUDY_CACHE', str(tmp_path/'cache'))
    return tmp_path/'cache'


def test_table_resumes_from_disk(cache):
    feats = dict(source='synthetic', feature_s=1.5)
    calls = []
    def evaluator(cfg, seed):
        calls.append((cfg, seed))
        return dict(val_accuracy=cfg['lr'] * 100 + seed / 100, val_f1=0.0, test_accuracy=0.0, test_f1=0.0, train_s=0.0, steps=1)
    p = mb._arm_params('smoke', 'bo')
    n = 32 * p['table_seeds']  # every configuration once per training seed
    tab = mb.build_table('sst2', p, 'smoke', feats, evaluator)
    assert len(tab['rows']) == 32 and len(calls) == n and tab['computed_now'] == n
    assert tab['build_s'] == pytest.approx(1.5 + p['table_seeds'] * sum(r['eval_s'] for r in tab['rows'].values()))
    for (cfg, seed), (i, r) in zip(calls, tab['rows'].items()):  # a row: the mean over seeds, and each seed's validation score
        assert r['val_runs'] == pytest.approx([cfg['lr'] * 100 + s / 100 for s in range(p['table_seeds'])])
        assert r['val_accuracy'] == pytest.approx(np.mean(r['val_runs']))
    files = sorted((cache_dir()/'metabo').glob('sst2_eval_*.pt'))
    assert len(files) == n and str(cache) in str(files[0])
    for f in files[:4]: f.unlink()  # an interrupted build: four evaluations never stored
    files[4].write_bytes(b'torn')  # and one torn: moved aside, recomputed
    calls.clear()
    tab2 = mb.build_table('sst2', p, 'smoke', feats, evaluator)
    assert len(calls) == 5 and tab2['computed_now'] == 5 and len(tab2['rows']) == 32
    assert [r['val_accuracy'] for r in tab2['rows'].values()] == [r['val_accuracy'] for r in tab['rows'].values()]
    assert list((cache_dir()/'metabo').glob('sst2_eval_*.corrupt'))
    calls.clear()
    assert mb.build_table('sst2', p, 'smoke', feats, evaluator)['computed_now'] == 0 and not calls
    # another grid, fidelity or table version is another key: nothing reused
    assert mb.build_table('sst2', dict(p, model='other'), 'smoke', feats, evaluator)['computed_now'] == n


def test_features_cached(cache, monkeypatch):
    sizes = dict(n_train=24, n_val=8, n_test=8, max_len=16, hidden=8)
    f1 = mb.task_features('trec', sizes, 'smoke')
    assert f1['x_train'].dtype == np.float32 and f1['y_train'].dtype == np.int64 and f1['x_train'].shape[0] == 24
    np.testing.assert_allclose(np.linalg.norm(f1['x_val'], axis=1), 1.0, rtol=1e-5)  # L2-normalised
    monkeypatch.setattr(mb, 'sentence_features', lambda *a, **k: pytest.fail('recomputed a cached feature set'))
    f2 = mb.task_features('trec', dict(sizes, hidden=64), 'smoke')  # the head's width is not part of the features' key
    for k in ('x_train', 'y_train', 'x_test', 'y_test'): np.testing.assert_array_equal(f1[k], f2[k])
    assert (f2['n_source'], f2['n_classes'], f2['mean_tokens']) == (f1['n_source'], f1['n_classes'], f1['mean_tokens'])
    assert len(mb.meta_features(f2)) == len(mb.META_FEATURES)


def test_smoke_run_and_report(home, cache):
    from lwstudy.study import experiment
    res = experiment('metabo', 'smoke', seeds=2, out_dir='reports', progress=False)
    assert res.computed == 2 * len(mb.ARMS)
    assert set(res.claims.id) == {'fewer-than-bo', 'fewer-than-random', 'score-not-worse', 'short-start-differs', 'bo-beats-random',
                                  *(f'{a}-{g}' for a in mb.TRANSFER for g in ('third-of-trials', 'half-seconds'))}
    assert (res.claims.set_index('id').loc[['fewer-than-bo', 'score-not-worse'], 'vs'] == 'bo_short').all()  # the same random starts
    ct = res.claims.set_index('id')
    assert set(ct[ct.family == 'primary'].index) == {'fewer-than-bo', 'fewer-than-random', 'score-not-worse'}
    head = res.table[res.table.metric == 'headroom_trials'].value
    assert head.nunique() == 1  # a property of the tables: the same in every arm and seed
    for c in ct.index:  # the headroom gate decides informative vs not, from the run's own tables
        assert ct.loc[c, 'gate_passed'] == (head.iloc[0] >= mb.HEADROOM_MIN), c
        assert (ct.loc[c, 'verdict'] == 'uninformative') == (not ct.loc[c, 'gate_passed']), c
    page = res.report.read_text()
    for title in ('Regret vs trial', 'Trials to a top-5% configuration per held-out task', 'Tasks as the unit', 'Warm start proposals', 'Optimiser overhead'):
        assert title in page
    t = res.table
    v = t[t.metric == 'trials_to_target'].value
    assert ((v >= 1) & (v <= mb.task_params('smoke')['budget'] + 1)).all()
    s = t[t.metric == 'seconds_to_target'].value
    assert len(s) == len(v) and (s > 0).all()  # each trial's stored training seconds, summed up to the hit
    # a second run reuses every stored cell and every stored evaluation
    assert experiment('metabo', 'smoke', seeds=2, out_dir='reports', progress=False).computed == 0


def test_standin_sizes_scaled(home, no_mirror):
    from lwstudy import data
    data.sources_used(reset=True)
    tr, val, test, _ = mb.task_slices('sst5', 1000, 500, 500, 'quick')  # the stand-in's sst5 validation has fewer than 1000 rows
    have = data.available_rows('sst5', 'validation', 'quick')
    assert have < 1000 and len(val) + len(test) == have and abs(len(val) - len(test)) <= 1 and len(tr) == 1000
    assert any('sst5/validation' in str(s.get('scaled')) for s in data.sources_used())


def test_dryrun_is_fulls_path():
    full, dry = mb._arm_params('full', 'metabo'), mb._arm_params('dryrun', 'metabo')
    for k in ('fidelity', 'model', 'engine', 'n_warm', 'top'): assert full[k] == dry[k], k
    assert dry['sizes']['max_steps'] == 2 and dry['sizes']['max_len'] == full['sizes']['max_len']
    assert dry['budget'] > mb.N_STARTUP  # GP proposals happen after the random starts
    assert set(mb.config_of(dry['space'], i)['lr'] for i in mb.grid_indices(dry['space'])) <= set(mb.PLAN_GRID['lr'])


@pytest.mark.slow
def test_dryrun_finetune(home, cache):
    # full's fine-tune (DistilBERT; random weights when the Hub is unreachable) stops after 2 steps
    p = mb._arm_params('dryrun', 'bo')
    r = mb.evaluate_finetune('trec', mb.config_of(p['space'], mb.grid_indices(p['space'])[0]), p['sizes'], 'dryrun', p['model'])
    assert r['steps'] == 2 and 0 <= r['val_accuracy'] <= 1 and r['precision'] in ('bf16', 'fp32')


def test_parallel_heads_match_one_after_another(cache):
    "The default head fidelity builds its table in worker processes (`core.parallel_imap`): the same scores as in one process."
    rng = np.random.default_rng(0)
    feats = dict(source='synthetic', feature_s=0.0, n_classes=2, **{f'x_{s}': rng.normal(size=(n, 8)).astype(np.float32) for s, n in (('train', 64), ('val', 32), ('test', 32))},
                 **{f'y_{s}': rng.integers(0, 2, n) for s, n in (('train', 64), ('val', 32), ('test', 32))})
    p = mb._arm_params('smoke', 'bo')
    one = mb.build_table('sst2', p, 'smoke', feats, workers=1)['rows']
    for f in (cache_dir()/'metabo').glob('*.pt'): f.unlink()
    two = mb.build_table('sst2', p, 'smoke', feats, workers=2)
    assert two['computed_now'] == len(one) * p['table_seeds'] and len(one) == 32
    strip = lambda r: {k: v for k, v in r.items() if k not in ('eval_s', 'train_s')}
    assert {i: strip(r) for i, r in two['rows'].items()} == {i: strip(r) for i, r in one.items()}
