"""distill: the loss and layer maps by hand, the teacher cache, and a small paired run end to end (smoke profile)."""
import dataclasses
import numpy as np
import pytest
import torch
from lwstudy.core import BadInput
from lwstudy.techniques import distill as d


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "A scratch cache shared by this file's tests: the smoke teacher is fine-tuned here once, not read from the user's cache."
    import os
    path, old = tmp_path_factory.mktemp('distill') / 'cache', os.environ.get('LWSTUDY_CACHE')
    os.environ['LWSTUDY_CACHE'] = str(path)
    d._tokens.clear()
    yield path
    if old is None: os.environ.pop('LWSTUDY_CACHE', None)
    else: os.environ['LWSTUDY_CACHE'] = old


def test_layer_maps():
    assert d.layer_map('every_other', 6, 3) == [(0, 1), (1, 3), (2, 5)]
    assert d.layer_map('last3', 6, 3) == [(0, 3), (1, 4), (2, 5)]
    assert [t for _, t in d.layer_map('all', 6, 3)] == list(range(6))
    with pytest.raises(BadInput, match='layer scheme'): d.layer_map('first2', 6, 3)
    with pytest.raises(ValueError): d.layer_map('every_other', 6, 4)


def test_loss_by_hand():
    s, t, y = torch.tensor([[2., 0.]]), torch.tensor([[0., 2.]]), torch.tensor([0])
    loss, parts = d.distill_loss(s, y, t, T=2.0, w_kd=1.0)
    assert parts['ce'] == pytest.approx(np.log1p(np.exp(-2)), rel=1e-6)
    assert parts['kd'] == pytest.approx(4 * np.tanh(0.5), rel=1e-5)
    assert float(loss) == pytest.approx(parts['ce'] + parts['kd'], rel=1e-6)
    hs, ht = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    ht[0, 1] = 100.0  # a padded position: must not count
    assert float(d.masked_mse(hs, ht, torch.tensor([[1, 0]]))) == pytest.approx(1.0)


def test_student_holds_chosen_layers():
    enc = d.load_pretrained('minilm')
    st = d.student_from_layers(enc, [5, 1])
    for n, src in enumerate([5, 1]):
        a, b = st.encoder.layer[n].state_dict(), enc.encoder.layer[src].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_arms_differ_only_in_factor():
    a = d.arms('smoke')
    assert len({frozenset(p) for p in a.values()}) == 1
    diff = lambda x, y: sorted(k for k in a[x] if a[x][k] != a[y][k])
    assert diff('alone_mixed', 'alone_fp32') == ['precision']
    assert diff('every_other_fp32', 'all_fp32') == ['layers']


def test_teacher_is_cached_and_reused(cache, monkeypatch):
    p = dict(d.arms('smoke')['last3_fp32'])
    t1, rec1 = d.get_teacher(p, 'smoke')
    assert len(list(cache.glob('distill/teacher_*.pt'))) == 1
    monkeypatch.setattr(d, 'train', lambda *a, **k: pytest.fail('the cached teacher was trained again'))
    t2, rec2 = d.get_teacher(p, 'smoke')
    assert rec1 == rec2
    assert all(torch.equal(a, b) for a, b in zip(t1.state_dict().values(), t2.state_dict().values()))
    out = d.teacher_outputs(t2, p, 'smoke', rec2)
    tr, _, _ = d.sst2_tokens(p, 'smoke')
    ids, mask, _ = tr.batch([0, 1])
    with torch.no_grad(): assert torch.allclose(out['logits'][[0, 1]], t2(ids, mask), atol=1e-4)
    assert len(out['hidden']) == 6 and out['offsets'][-1] == out['hidden'][0].shape[0] == int(tr.lengths[:p['n_train']].sum())


def test_small_paired_run_and_report(home, cache):
    from lwstudy.runner import Store, run, results_table
    from lwstudy.report import write_report
    full = d.spec('smoke')
    keep = ('alone_fp32', 'last3_fp32')
    spec = dataclasses.replace(full, arms={k: full.arms[k] for k in keep},
                               claims=[c for c in full.claims if c.arm in keep and (c.vs or full.baseline) in keep])
    store = Store(home / 'results')
    run(spec, seeds=2, profile='smoke', device='cpu', store=store, progress=False)
    table = results_table(spec, 'smoke', store)
    assert set(table.arm) == set(keep) and set(table.seed) == {0, 1}
    v = table.pivot_table(index=['arm', 'seed'], columns='metric', values='value')
    assert (v.loc['alone_fp32', 'teacher_cost_s'] == 0).all() and (v.loc['last3_fp32', 'teacher_cost_s'] > 0).all()
    assert (v.loc['last3_fp32', 'teacher_cache_mb'] > 0).all() and (v.loc['alone_fp32', 'teacher_cache_mb'] == 0).all()
    assert v.teacher_accuracy.nunique() == 1  # one teacher for every cell
    assert np.allclose(v.accuracy_retention, v.accuracy / v.teacher_accuracy)
    assert (v.speedup_vs_teacher > 0).all() and (v.train_peak_mb > 0).all()
    assert (v.student_params < v.teacher_params).all()
    page = write_report(spec, 'smoke', home / 'reports', store)
    text = page.read_text()
    assert 'Goals: speed-up and accuracy retention' in text and 'one-off cost' in text


@pytest.mark.needs_data
def test_quick_reads_the_glue_validation_set():
    p = d.task_params('quick')
    _, val, source = d.sst2_tokens(dict(p, teacher='minilm'), 'quick')
    assert len(val) == 872 and 'mirror' in source
