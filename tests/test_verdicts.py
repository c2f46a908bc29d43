"""Verdicts that cannot mislead: gates make unanswerable claims 'uninformative', primary claims share one study-wide
family (the same verdict on the technique page and in the study's family table), the CSVs carry family and gate, and
every string from a record, cache or data is escaped in the HTML."""
import dataclasses, json
import numpy as np
import pandas as pd
import pytest
from lwstudy import report, stats
from lwstudy.report import claim_table, primary_family, write_report
from lwstudy.runner import Claim, Metric, Spec, Store, gate_info, gate_mean, results_table, run

EVIL = '<script>alert(document.domain)</script>'
CHANCE, MARGIN = 0.10, 0.05

def _learn_fit(params, seed, profile):
    "A stand-in for training a 10-class classifier: accuracy rises from chance with effective training (lr x epochs)."
    rng = np.random.default_rng([seed, params['epochs']])
    skill = 1 - np.exp(-params['lr'] * params['epochs'] / 2)
    return dict(acc=float(CHANCE + 0.6 * skill + 0.01 * rng.normal()), note=params.get('note', 'trained'))

def learning_spec(name='learner', lr=1.0, family='primary', gate=True, **kw) -> Spec:
    "Control-shaped: 1 vs 3 epochs, the claim gated on the 3-epoch arm beating chance by MARGIN."
    g = gate_mean('acc', '3_epochs', '>', CHANCE + MARGIN, f'3_epochs learned: mean accuracy beats chance {CHANCE} by {MARGIN}')
    return Spec(name, 'Do 3 epochs beat 1?', {'1_epoch': dict(epochs=1, lr=lr), '3_epochs': dict(epochs=3, lr=lr)}, '1_epoch',
                [Metric('acc', True)], [Claim(f'{name}-acc', '3 epochs are more accurate', 'acc', '3_epochs', family=family,
                                              gate=g if gate else None)], _learn_fit, **kw)

def test_a_learning_run_passes_its_gate_and_an_untrained_one_is_uninformative(tmp_path):
    store = Store(tmp_path/'results')
    good, dead = learning_spec('learner'), learning_spec('untrained', lr=0.0)  # lr 0: no effective training at all
    for s in (good, dead): run(s, seeds=8, profile='smoke', device='cpu', store=store, progress=False)
    fam = primary_family('smoke', store, specs=[good, dead])
    g, d = fam.set_index('technique').loc['learner'], fam.set_index('technique').loc['untrained']
    assert g.gate_passed and g.verdict == 'supported', g
    assert not d.gate_passed and d.verdict == 'uninformative', d
    assert 'FAILED' in d.gate_detail and 'needs > 0.15' in d.gate_detail, d.gate_detail
    # without the gate, the untrained run's claim would have read as a result (here: inconclusive, not 'uninformative')
    nogate = claim_table(learning_spec('untrained', lr=0.0, gate=False), results_table(dead, 'smoke', store))
    assert nogate.verdict.iloc[0] != 'uninformative'

@pytest.mark.needs_data
@pytest.mark.slow
def test_control_passes_its_gate_and_control_without_training_is_uninformative(tmp_path):
    from lwstudy.techniques.calibration import control_spec
    control = control_spec('smoke')
    frozen = dataclasses.replace(control, arms={a: dict(p, lr=0.0, epochs=1) for a, p in control.arms.items()})  # 0 effective training
    for s, want, where in ((control, True, 'trained'), (frozen, False, 'frozen')):
        store = Store(tmp_path/where)  # same name 'control' (calibration claims belong to it), own store
        run(s, seeds=2, profile='smoke', device='cpu', store=store, progress=False)
        table = results_table(s, 'smoke', store)
        ct = claim_table(s, table, report.spec_records(s, 'smoke', store, table)).set_index('id')
        acc = ct.loc['control-accuracy']
        assert bool(acc.gate_passed) is want, acc.gate_detail
        assert (acc.verdict == 'uninformative') is (not want), acc

def test_primary_family_is_study_wide_and_the_page_agrees(tmp_path):
    store = Store(tmp_path/'results')
    specs = [learning_spec('t1'), learning_spec('t2'), learning_spec('t3')]  # t3 never runs: its claim counts p = 1
    for s in specs[:2]: run(s, seeds=7, profile='smoke', device='cpu', store=store, progress=False)
    fam = primary_family('smoke', store, specs=specs).set_index('id')
    ps = fam.p.fillna(1.0).to_numpy()
    np.testing.assert_allclose(fam.p_holm, stats.holm(ps))
    assert fam.loc['t3-acc', 'p_holm'] == 1.0 and (fam.family_size == 3).all()
    page = claim_table(specs[0], results_table(specs[0], 'smoke', store), family=fam.reset_index()).set_index('id')
    for col in ('p', 'p_holm', 'verdict', 'ci_level', 'lo_adj', 'hi_adj'):
        assert page.loc['t1-acc', col] == pytest.approx(fam.loc['t1-acc', col]) if col != 'verdict' else \
            page.loc['t1-acc', col] == fam.loc['t1-acc', col], col
    # the CI at the level used: the Holm level of that claim, wider than the raw 95% interval
    assert page.loc['t1-acc', 'ci_level'] > 0.95
    assert page.loc['t1-acc', 'lo_adj'] < page.loc['t1-acc', 'lo'] < page.loc['t1-acc', 'hi'] < page.loc['t1-acc', 'hi_adj']

def test_claims_csv_columns_and_exploratory_label(tmp_path):
    store = Store(tmp_path/'results')
    spec = learning_spec('expl', family='exploratory')
    run(spec, seeds=6, profile='smoke', device='cpu', store=store, progress=False)
    html = write_report(spec, 'smoke', tmp_path/'reports', store).read_text()
    ct = pd.read_csv(tmp_path/'reports'/'expl_claims.csv')
    for col in ('family', 'gate', 'gate_passed', 'gate_detail', 'p', 'p_t', 'p_signflip', 'p_holm', 'ci_level', 'lo_adj', 'hi_adj',
                'mde', 'mde_scale', 'verdict'):
        assert col in ct, col
    r = ct.iloc[0]
    assert r.family == 'exploratory' and np.isnan(r.p_holm) and r.ci_level == 0.95 and r.verdict == 'supported'
    assert 'supported · exploratory' in html and 'exploratory: raw p' in html

def _plant(store, spec, profile='smoke'):
    "Put a script into every stored record's provenance, info and data sources."
    for p in sorted((store.root/spec.name/profile).glob('*.json')):
        r = json.loads(p.read_text())
        r['provenance'] |= dict(python=EVIL, platform=EVIL, git_commit=EVIL, device_name=EVIL, host=EVIL, versions={'torch': EVIL})
        r['info'] = {k: EVIL for k in r['info']}
        r['data_sources'] = [dict(dataset='cifar10', split='train', source=f'mirror {EVIL}', standin=False)]
        p.write_text(json.dumps(r))

def test_strings_from_records_and_data_are_escaped(tmp_path):
    store = Store(tmp_path/'results')
    info_gate = gate_info('note', None, lambda v: 'script' not in v, 'the note is clean')  # its detail quotes the info string
    base = learning_spec('xss', family='exploratory')
    spec = dataclasses.replace(base, arms={a: dict(p, note=EVIL) for a, p in base.arms.items()}, notes=[EVIL],
                               claims=base.claims + [Claim('xss-note', 'notes are clean', 'acc', '3_epochs', gate=info_gate)])
    run(spec, seeds=3, profile='smoke', device='cpu', store=store, progress=False)
    _plant(store, spec)
    page = write_report(spec, 'smoke', tmp_path/'reports', store).read_text()
    assert '<script' not in page.lower(), page[page.lower().find('<script') - 200:][:400]
    assert page.count('&lt;script&gt;') >= 5  # provenance, arm params, notes, data source, the gate's detail (info)
    ct = pd.read_csv(tmp_path/'reports'/'xss_claims.csv').set_index('id')
    assert ct.loc['xss-note', 'verdict'] == 'uninformative' and '<script>' in ct.loc['xss-note', 'gate_detail']  # CSV keeps the raw text

def test_timing_claims_get_the_unloaded_gate(tmp_path):
    spec = Spec('timed', 'Is 3 slower?', {'a': dict(k=1), 'b': dict(k=3)}, 'a', [Metric('t_s', False, 's', 'ratio')],
                [Claim('timed-t', 'b takes longer', 't_s', 'b', 1.0, '>', 'ratio')], fit=None)
    table = pd.DataFrame([dict(technique='timed', arm=a, seed=s, metric='t_s', value=(1 + 2 * (a == 'b')) * (1 + 0.01 * s),
                               data_source='', standin=False) for s in range(6) for a in 'ab'])
    recs = lambda load: [dict(arm=a, seed=s, provenance=dict(load_avg_start=load, load_avg_end=0.1, cpus=2)) for s in range(6) for a in 'ab']
    calm, busy = claim_table(spec, table, recs(0.5)).iloc[0], claim_table(spec, table, recs(3.5)).iloc[0]
    assert 'unloaded' in calm.gate and calm.gate_passed and calm.verdict == 'supported'
    assert not busy.gate_passed and busy.verdict == 'uninformative' and '3.50' in busy.gate_detail

def test_a_gate_that_raises_fails_with_its_error():
    from lwstudy.runner import Gate
    boom = Gate('never evaluable', lambda t, r: 1 / 0)
    spec = learning_spec('boom')
    spec = dataclasses.replace(spec, claims=[dataclasses.replace(spec.claims[0], gate=boom)])
    table = pd.DataFrame([dict(technique='boom', arm=a, seed=s, metric='acc', value=0.5 + 0.1 * (a == '3_epochs') + 0.01 * s,
                               data_source='', standin=False) for s in range(6) for a in spec.arms])
    r = claim_table(spec, table).iloc[0]
    assert r.verdict == 'uninformative' and 'ZeroDivisionError' in r.gate_detail

def test_forest_and_tradeoff_plots(tmp_path):
    store = Store(tmp_path/'results')
    spec = learning_spec('fp', tradeoff=('acc', 'acc'))
    run(spec, seeds=6, profile='smoke', device='cpu', store=store, progress=False)
    table = results_table(spec, 'smoke', store)
    fig = report.forest_plot(claim_table(spec, table).assign(technique='fp'))
    assert len(fig.axes) == 1 and 'fp: fp-acc' in fig.axes[0].get_ylabel()
    assert report.tradeoff_plot(spec, report.metric_table(spec, table)) is not None
    assert report.tradeoff_plot(learning_spec('none'), report.metric_table(spec, table)) is None
