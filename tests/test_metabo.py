"""metabo: the grid, the warm start, the optimiser on a known optimum, censoring, leave-one-task-out, the resumable
evaluation table, and a smoke run through the runner and the report."""
import json
import numpy as np
import pytest
from lwstudy.core import BadInput
from lwstudy.techniques import metabo as mb

SPACE = mb.search_space('quick')
OPT = (2, 1, 1, 0, 2)
toy_f = lambda c: -float(sum((a - b) ** 2 for a, b in zip(c, OPT)))


def test_grid():
    assert len(mb.grid_indices(SPACE)) == 162 and len(mb.grid_indices(mb.search_space('smoke'))) == 32
    assert mb.search_space('full') == mb.PLAN_GRID
    assert mb.config_of(SPACE, (0, 1, 2, 2, 0)) == dict(lr=1e-3, batch_size=32, epochs=10, dropout=0.5, warmup=0)


def test_warm_start_is_enqueued_first():
    warm = [(0, 0, 0, 0, 0), (2, 1, 2, 2, 2), (1, 0, 1, 0, 1)]
    res = mb.optimise(toy_f, SPACE, budget=6, kind='bo', seed=1, warm=warm)
    assert res['proposed'][:3] == warm
    assert res['scores'][:3] == [toy_f(c) for c in warm]
    no_warm = mb.optimise(toy_f, SPACE, budget=6, kind='bo', seed=1)
    assert no_warm['proposed'][:3] != warm


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_bo_finds_known_optimum(seed):
    assert OPT in mb.optimise(toy_f, SPACE, budget=60, kind='bo', seed=seed)['proposed']


def test_run_summary_censors_misses():
    r = mb.run_summary([0.2, 0.9, 0.95], best=1.0, worst=0.0, budget=3)
    assert (r['trials_to_1pct'], r['trials_to_best'], r['hit_1pct']) == (4, 4, 0.0)
    np.testing.assert_allclose(r['regret'], [0.8, 0.1, 0.05])
    r = mb.run_summary([0.2, 0.991, 1.0], best=1.0, worst=0.0, budget=3)
    assert (r['trials_to_1pct'], r['trials_to_best'], r['hit_1pct']) == (2, 3, 1.0)


def _synth_tabs(poison=None):
    cfgs = mb.grid_indices(mb.search_space('smoke'))
    tabs = {}
    for t, shift in zip('abcd', [-2, -1, 1, 2]):
        v = {c: 0.9 - 0.1 * abs(c[0] - (shift > 0)) - 0.02 * sum(c[1:]) for c in cfgs}
        if t == poison: v = dict(zip(cfgs, np.random.default_rng(0).random(len(cfgs))))
        tabs[t] = dict(rows={c: dict(val_accuracy=float(x), test_accuracy=float(x), test_f1=float(x)) for c, x in v.items()},
                       meta=np.array([shift, 1.0, 0.5, 2.0, 0.7, 0.6]))
    return tabs


def test_leave_one_task_out():
    p = dict(mb._arm_params('smoke', 'metabo'), tasks=tuple('abcd'))
    clean, poisoned = mb.replay(_synth_tabs(), p, 0), mb.replay(_synth_tabs(poison='c'), p, 0)
    assert clean['warm']['c'][0]['configs'] == poisoned['warm']['c'][0]['configs']
    assert clean['warm']['c'][0]['configs'][0] == [1, 0, 0, 0, 0]
    assert clean['per_task']['c']['trials_to_best'] == 1.0
    plain = mb.replay(_synth_tabs(), dict(mb._arm_params('smoke', 'bo'), tasks=tuple('abcd')), 0)
    assert plain['warm'] == {} and plain['meta_fit_s'] == 0.0


def test_table_is_resumable(home, monkeypatch):
    feats = dict(source='synthetic', feature_s=1.5)
    monkeypatch.setattr(mb, 'task_features', lambda task, sizes, profile: feats)
    calls = []
    def evaluator(cfg):
        calls.append(cfg)
        return dict(val_accuracy=cfg['lr'] * 100, val_f1=0.0, test_accuracy=0.0, test_f1=0.0, train_s=0.0, steps=1)
    p = mb._arm_params('smoke', 'bo')
    tab = mb.build_table('sst2', p, 'smoke', evaluator=evaluator)
    assert len(tab['rows']) == 32 and len(calls) == 32 and str(home) in tab['path']
    path = mb.Path(tab['path'])
    lines = path.read_text().splitlines()
    path.write_text('\n'.join(lines[:-5]) + '\n' + lines[-5][:10])  # lose four lines and tear one
    calls.clear()
    tab2 = mb.build_table('sst2', p, 'smoke', evaluator=evaluator)
    assert len(calls) == 5 and tab2['computed_now'] == 5 and len(tab2['rows']) == 32
    assert len(mb._read_lines(path)) == 32
    calls.clear()
    assert mb.build_table('sst2', p, 'smoke', evaluator=evaluator)['computed_now'] == 0 and not calls


def test_bad_task():
    with pytest.raises(BadInput, match='unknown task'):
        mb.task_slices('conll2003', 10, 10, 10, 'smoke')


def test_smoke_run_and_report(home):
    from lwstudy.study import experiment
    res = experiment('metabo', 'smoke', seeds=2, out_dir='reports', progress=False)
    assert res.computed == 6
    assert set(res.claims.id) == {'third-of-trials', 'fewer-than-bo', 'fewer-than-random', 'score-not-worse', 'bo-beats-random'}
    ct = res.claims.set_index('id')
    assert set(ct[ct.family == 'primary'].index) == {'fewer-than-bo', 'fewer-than-random', 'score-not-worse'}
    head = res.table[res.table.metric == 'headroom_trials'].value
    assert head.nunique() == 1  # a property of the tables: the same in every arm and seed
    for c in ct.index:  # the headroom gate decides informative vs not, from the run's own tables
        assert ct.loc[c, 'gate_passed'] == (head.iloc[0] >= mb.HEADROOM_MIN), c
        assert (ct.loc[c, 'verdict'] == 'uninformative') == (not ct.loc[c, 'gate_passed']), c
    page = res.report.read_text()
    for title in ('Regret vs trial', 'Trials to within 1% per held-out task', 'Evaluation cache', 'Warm start proposals'):
        assert title in page
    t = res.table
    v = t[t.metric == 'trials_to_1pct'].value
    assert ((v >= 1) & (v <= mb.task_params('smoke')['budget'] + 1)).all()
    # a second run reuses every stored cell and every stored evaluation
    assert experiment('metabo', 'smoke', seeds=2, out_dir='reports', progress=False).computed == 0


def test_headroom_per_task():
    p = dict(mb._arm_params('smoke', 'random'), tasks=tuple('abcd'))
    out = mb.replay(_synth_tabs(), p, 0)
    for t, v in out['per_task'].items():
        best = v['best_val']
        k = sum(r['val_accuracy'] >= (1 - p['tol']) * best - 1e-12 for r in _synth_tabs()[t]['rows'].values())
        assert (v['n_configs'], v['n_within_1pct']) == (32, k)
        assert v['random_expected_trials'] == pytest.approx(33 / (k + 1))
    assert out['headroom_trials'] == pytest.approx(np.median([v['random_expected_trials'] for v in out['per_task'].values()]))


def test_standin_sizes_scaled(home, no_mirror):
    from lwstudy import data
    data.sources_used(reset=True)
    tr, val, test, _ = mb.task_slices('sst5', 1000, 500, 500, 'quick')  # the stand-in's sst5 validation has fewer than 1000 rows
    have = data.available_rows('sst5', 'validation', 'quick')
    assert have < 1000 and len(val) + len(test) == have and abs(len(val) - len(test)) <= 1 and len(tr) == 1000
    assert any('sst5/validation' in str(s.get('scaled')) for s in data.sources_used())


def test_dryrun_is_fulls_path():
    full, dry = mb._arm_params('full', 'metabo'), mb._arm_params('dryrun', 'metabo')
    for k in ('fidelity', 'model', 'engine', 'n_warm', 'tol'): assert full[k] == dry[k], k
    assert dry['sizes']['max_steps'] == 2 and dry['sizes']['max_len'] == full['sizes']['max_len']
    assert dry['budget'] > 10  # GP proposals happen after the 10 random starts
    assert set(mb.config_of(dry['space'], i)['lr'] for i in mb.grid_indices(dry['space'])) <= set(mb.PLAN_GRID['lr'])


@pytest.mark.slow
def test_dryrun_finetune(home):
    # full's fine-tune (DistilBERT; random weights when the Hub is unreachable) stops after 2 steps
    p = mb._arm_params('dryrun', 'bo')
    r = mb.evaluate_finetune('trec', mb.config_of(p['space'], mb.grid_indices(p['space'])[0]), p['sizes'], 'dryrun', p['model'])
    assert r['steps'] == 2 and 0 <= r['val_accuracy'] <= 1 and r['precision'] in ('bf16', 'fp32')
