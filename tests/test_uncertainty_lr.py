"""uncertainty_lr across modules: a smoke study to a report and its resume, the stand-in path, data checks, the dryrun cell.

The entropy, the rule, the spec and the report sections are checked beside their definitions in nbs/50_uncertainty_lr.ipynb;
the schedules and censoring (train.ValTracker) in nbs/03_train.ipynb; the frozen-lower classifier and the SQuAD pieces in
nbs/04b_text.ipynb."""
import pytest

from lwstudy.techniques import uncertainty_lr as ulr


def test_smoke_run_to_report(home):
    from lwstudy.study import experiment
    res = experiment('uncertainty_lr', 'smoke', 2, progress=False)
    assert res.computed == 2 * len(ulr.SCHEDULES)
    t = res.table
    assert set(t.arm) == set(ulr.SCHEDULES) and set(t.seed) == {0, 1}
    fixed_lr = t[(t.metric == 'cifar10_final_lr') & (t.arm == 'fixed')].value
    assert (fixed_lr == ulr.task_params('smoke')['cifar10']['lr']).all()
    # the uncertainty rule must act on real training runs (the adaptive rule once silently never did)
    from lwstudy.runner import Store
    recs = [r for r in Store().records('uncertainty_lr', 'smoke') if r['arm'] == 'uncertainty']
    assert len(recs) == 2
    for r in recs:
        for task in ('cifar10', 'imdb'):
            assert len({lr for _, lr in r['series'][f'{task}_lr_trace']}) > 1, (task, r['seed'])
            assert r['metrics'][f'{task}_final_lr'] < ulr.task_params('smoke')[task]['lr']
            m = r['metrics']  # seconds to target: training seconds up to the hit, or the whole run when missed
            assert 0 < m[f'{task}_seconds_to_target'] <= m[f'{task}_train_time_s'] + 1e-9
            assert (m[f'{task}_seconds_to_target'] == m[f'{task}_train_time_s']) == (m[f'{task}_reached'] == 0)
            assert r['info'][f'{task}_rule_actions'].startswith('cut ') and not r['info'][f'{task}_rule_actions'].startswith('cut 0,')
    assert len(res.claims) == len(res.spec.claims)
    ct = res.claims.set_index('id')
    # smoke's entropy stays above the threshold: the rule never recovers, so every quality claim is uninformative
    raises = t[(t.metric == 'cifar10_rule_raises') & (t.arm == 'uncertainty')].value
    assert (t[(t.metric == 'cifar10_rule_cuts') & (t.arm == 'uncertainty')].value > 0).all()
    if (raises == 0).any():
        for c in ('cifar10-faster', 'cifar10-generalise', 'cifar10-vs-replay', 'cifar10-vs-cosine'):
            assert ct.loc[c, 'verdict'] == 'uninformative' and not ct.loc[c, 'gate_passed'], c
            assert 'recovered' in ct.loc[c, 'gate']
    assert set(ct[ct.family == 'primary'].index) == {'cifar10-faster', 'cifar10-generalise', 'cifar10-vs-replay'}
    # the controls: replay's LR trace is the uncertainty arm's (same seed), shuffled has its decision counts
    by = {(r['arm'], r['seed']): r for r in Store().records('uncertainty_lr', 'smoke')}
    for s in (0, 1):
        u, rep, sh = by[('uncertainty', s)], by[('replay', s)], by[('shuffled', s)]
        for task in ('cifar10', 'imdb'):
            assert rep['series'][f'{task}_lr_trace'] == u['series'][f'{task}_lr_trace'], (task, s)
            assert sh['info'][f'{task}_rule_actions'] == u['info'][f'{task}_rule_actions'], (task, s)
            if str(ulr.current_device()) == 'cpu': assert by[('schedulefree', s)]['info'][f'{task}_gpu_util'].startswith('not applicable')
    page = res.report.read_text()
    assert 'LR and entropy traces' in page and 'Validation curves' in page and page.count('data:image/png') >= 3
    assert 'Uncertainty rule decisions' in page and page.count('<td>cut ') == 4  # 2 seeds x 2 tasks
    assert experiment('uncertainty_lr', 'smoke', 2, progress=False).computed == 0  # resumed from the store


def test_standin_path(home, no_mirror):
    from lwstudy.data import load
    assert load('imdb', 'train', 'smoke').attrs['standin'] and load('cifar10', 'train', 'smoke').attrs['standin']
    from lwstudy.runner import part_params
    arms = ulr.spec('smoke').arms
    r = ulr.imdb_task(part_params(arms['uncertainty'], 'imdb'), 0, 'smoke')
    assert 0 <= r['test_accuracy'] <= 1 and r['steps'] == arms['uncertainty']['parts']['imdb']['steps'] and 0 <= r['test_auc'] <= 1
    r = ulr.cifar_task(part_params(arms['cosine'], 'cifar10'), 0, 'smoke')
    assert r['lr_trace'][-1][1] < r['lr_trace'][0][1]  # cosine decays


def test_full_needs_real_data(no_mirror):
    from lwstudy.study import check_inputs
    from lwstudy.data import DataUnavailable
    with pytest.raises(DataUnavailable, match='squad_v2|cifar10|imdb'):
        check_inputs('uncertainty_lr', 'full', 2)


def test_quick_sizes_scale_to_the_standin(home, no_mirror):
    # the embedded default: the digits stand-in has fewer train images than quick asks (it crashed on an empty validation slice)
    from lwstudy import data
    from lwstudy.runner import part_params
    p = part_params(ulr.spec('quick').arms['fixed'], 'cifar10')
    have = data.available_rows('cifar10', 'train', 'quick')
    assert ulr.run_settings(p, 'cifar10', 'test', 'quick')['n_train'] == min(p['n_train'], have)  # v4's 512 + 256 fit the stand-in
    p = dict(p, n_train=2048)  # version 3's size: more than the stand-in has
    assert have < p['n_train'] + p['n_val']
    data.sources_used(reset=True)
    q = ulr.run_settings(p, 'cifar10', 'test', 'quick')
    assert q['n_train'] + q['n_val'] <= have and q['n_val'] >= 1 and q['n_train'] > q['n_val']
    assert q['precision'] in ('bf16', 'fp32')
    notes = [s for s in data.sources_used() if s.get('scaled')]
    assert notes and 'scaled' in str(notes[0]['scaled']) and str(q['n_train']) in str(notes[0]['scaled'])
    assert ulr.run_settings(p, None, None, 'quick')['n_train'] == p['n_train']  # no dataset: sizes untouched


@pytest.mark.needs_data
@pytest.mark.slow
def test_dryrun_cell(home, monkeypatch):
    # full's path on the CPU: ResNet-18 width 64, BERT-base at 512 tokens, BERT-large QA (random weights offline), 2 steps each
    from lwstudy.core import set_device
    set_device('cpu')
    sp = ulr.spec('dryrun')
    out = ulr.fit(sp.arms['uncertainty'], 0, 'dryrun')
    for m in sp.metrics: assert m.name in out, m.name
    for t in ('cifar10', 'imdb', 'squad_v2'):
        assert out[f'{t}_note'].startswith('2 steps'), out[f'{t}_note']
        assert out[f'{t}_rule_cuts'] + out[f'{t}_rule_raises'] + out[f'{t}_rule_actions'].count('hold') >= 1  # the rule decided once
    assert 'bert-large' in out['squad_v2_note'] and 'batch 1' in out['squad_v2_note']
