"""distill: the teacher caches (lwstudy.teacher over core.disk_cached), a small paired run end to end through the runner and the report, the dryrun
cell, and the vision half on the CIFAR-10 mirror and on its digits stand-in (smoke profile). Checks of single functions live
beside them in nbs/40_distill.ipynb."""
import dataclasses, math
import numpy as np
import pytest
import torch
from lwstudy.core import BadInput
from lwstudy import teacher as tch
from lwstudy.techniques import distill as d


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    "A scratch cache shared by this file's tests: the smoke teacher is fine-tuned here once, not read from the user's cache."
    import os
    path, old = tmp_path_factory.mktemp('distill') / 'cache', os.environ.get('LWSTUDY_CACHE')
    os.environ['LWSTUDY_CACHE'] = str(path)
    from lwstudy import data
    data._text_tokens.cache_clear(); data._image_set.cache_clear()
    yield path
    if old is None: os.environ.pop('LWSTUDY_CACHE', None)
    else: os.environ['LWSTUDY_CACHE'] = old


def test_teacher_is_cached_and_reused(cache, monkeypatch):
    p = d.part_params(d.arms('smoke')['last3_fp32'], 'nlp')
    t1, rec1 = d.get_teacher(p, 'nlp', 'smoke')
    assert len(list(cache.glob('distill/teacher_*.pt'))) == 1
    monkeypatch.setattr(tch, 'train', lambda *a, **k: pytest.fail('the cached teacher was trained again'))
    t2, rec2 = d.get_teacher(p, 'nlp', 'smoke')
    assert rec1 == rec2
    assert all(torch.equal(a, b) for a, b in zip(t1.state_dict().values(), t2.state_dict().values()))
    out = d.teacher_outputs(t2, p, 'nlp', 'smoke', rec2, layers=[5, 3])
    tr, _, _ = d.sst2_tokens(p, 'smoke')
    ids, mask, _ = tr.batch([0, 1])
    with torch.no_grad(): assert torch.allclose(out['logits'][[0, 1]], t2(ids, mask), atol=1e-4)
    assert sorted(out['hidden']) == [3, 5] and out['pooled'] and out['hidden'][3].shape == (p['n_train'], 768)  # one vector a sentence (mpnet)
    layer_files = sorted(f.name.split('_')[2] for f in cache.glob('distill/teacher_hidden_L?_*.pt'))
    assert layer_files == ['L3', 'L5']  # only the layers asked for are cached
    monkeypatch.setattr(tch, "hidden_states", lambda *a, **k: pytest.fail('cached layers were computed again'))
    again = d.teacher_outputs(t2, p, 'nlp', 'smoke', rec2, layers=[3])
    assert torch.equal(again['hidden'][3], out['hidden'][3]) and sorted(again['hidden']) == [3]


def test_cache_files_are_not_unpickled(cache):
    "A cache file holding a pickled callable (planted on a shared filesystem, say) is refused, not run."
    p = d.part_params(d.arms('smoke')['last3_fp32'], 'nlp')
    from pathlib import Path
    f = Path(d.get_teacher(p, 'nlp', 'smoke')[1]['path'])
    assert f.parent == cache / 'distill'
    ran = []
    class Planted:
        def __reduce__(self): return (ran.append, ('ran',))
    good = f.read_bytes()
    try:
        torch.save(dict(state={}, record=Planted()), f)
        d.get_teacher(p, 'nlp', 'smoke')  # core.disk_cached refuses it (weights_only), moves it aside and trains again
        assert ran == [] and (f.parent / (f.name + '.corrupt')).exists()
    finally: f.write_bytes(good)


def test_cache_estimate_refuses_before_allocating(cache, monkeypatch, capsys):
    from lwstudy import measure
    p = d.part_params(d.arms('smoke')['all_fp32'], 'nlp')
    t, rec = d.get_teacher(p, 'nlp', 'smoke')
    tr, _, _ = d.sst2_tokens(p, 'smoke')
    monkeypatch.setattr(measure, 'available_bytes', lambda *a, **k: 1000)
    monkeypatch.setattr(tch, "hidden_states", lambda *a, **k: pytest.fail('allocated before the memory check'))
    with pytest.raises(BadInput, match='not enough memory') as e: d.teacher_outputs(t, p, 'nlp', 'smoke', rec, layers=range(12))
    assert f"{2 * 12 * 768 * p['n_train'] / 1e3:.1f} kB" in str(e.value)  # fp16 pooled states of 12 layers, one vector a sentence
    assert 'NLP teacher cache' in capsys.readouterr().out


def test_mixed_precision_is_resolved_in_fit_not_at_import(monkeypatch):
    "Arm hashes do not depend on the importing machine: a CPU client and a GPU worker agree."
    import importlib
    h = d.spec('smoke').cell_hash('last3_mixed')
    assert d.arms('smoke')['last3_mixed']['precision'] == 'mixed'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    try: assert importlib.reload(d).spec('smoke').cell_hash('last3_mixed') == h
    finally:
        monkeypatch.undo(); importlib.reload(d)


def test_mixed_cell_on_cpu_says_what_ran(cache):
    from lwstudy import measure
    from lwstudy.train import resolve_precision
    out = d.fit_part(d.arms('smoke')['alone_mixed'], 'vision', 0, 'smoke', 'cpu')
    assert out['precision_used'] == resolve_precision('mixed', 'cpu') and out['precision_used'] != 'fp16'
    assert out['energy_counter'] == measure.energy_counter('cpu')[1]
    assert ('train_energy_j' in out) == (measure.energy_counter('cpu')[0] is not None)


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
    # the vision half of the same cells
    assert (v.loc['alone_fp32', 'vision_teacher_cost_s'] == 0).all() and (v.loc['last3_fp32', 'vision_teacher_cost_s'] > 0).all()
    assert (v.loc['last3_fp32', 'vision_n_hidden_pairs'] == 3).all() and (v.loc['alone_fp32', 'vision_n_hidden_pairs'] == 0).all()
    assert v.vision_teacher_accuracy.nunique() == 1
    assert np.allclose(v.vision_accuracy_retention, v.vision_accuracy / v.vision_teacher_accuracy)
    assert (v.vision_speedup_vs_teacher > 0).all() and (v.vision_student_params < v.vision_teacher_params).all()
    page = write_report(spec, 'smoke', home / 'reports', store)
    text = page.read_text()
    assert 'Goals, and the teachers' in text and 'one-off cost' in text and 'ResNet-50 -&gt; ResNet-18' in text


@pytest.mark.needs_data
def test_quick_reads_the_glue_validation_set():
    p = d.task_params('quick')['nlp']
    _, val, source = d.sst2_tokens(dict(p, teacher='minilm'), 'quick')
    assert len(val) == 872 and 'mirror' in source


def _vision_cells(profile='smoke'):
    "The vision half of the alone, last3 and scored cells of seed 0."
    a = d.arms(profile)
    return {k: d.fit_part(a[k], 'vision', 0, profile, 'cpu') for k in ('alone_fp32', 'last3_fp32', 'scored_fp32')}


def _check_vision_cells(out, source_word):
    alone, dist = out['alone_fp32'], out['last3_fp32']
    for o in out.values():
        assert source_word in o['data'] and 0 <= o['accuracy'] <= 1 and o['speedup_vs_teacher'] > 0 and o['train_peak_mb'] > 0
        assert o['accuracy_retention'] == pytest.approx(o['accuracy'] / o['teacher_accuracy'])
    assert (alone['n_hidden_pairs'], alone['teacher_cost_s'], alone['teacher_cache_mb']) == (0, 0.0, 0.0)
    assert alone['n_train_images'] == dist['n_train_images'] and alone['train_views'] == dist['train_views'] > 1  # the same augmented data
    assert dist['hidden_pairs'] == '[(1, 1), (2, 2), (3, 3)]' and dist['teacher_cache_mb'] > 0 and dist['teacher_cost_s'] > 0
    assert alone['teacher_accuracy'] == dist['teacher_accuracy']  # one teacher
    assert dist['final_loss'] > dist['final_ce']  # the distilled objective adds KL and hidden terms
    sc = out['scored_fp32']
    chosen = [int(k) for k in sc['chosen_layers'].split(',')]
    assert len(chosen) == d.PROBE_K and sc['hidden_pairs'] == str([(t, t) for t in chosen])  # stages paired at the same resolution
    assert sc['train_time_with_teacher_s'] > sc['train_time_s'] + sc['layer_probe_s'] > sc['train_time_s']  # the probe is charged
    assert len(alone['heldout_curve']) == 3 and 'heldout_curve' not in dist  # the learning curve: the students alone, every quarter (3 steps)
    assert alone['plateau_gain'] == pytest.approx(alone['heldout_curve'][-1] - alone['heldout_curve'][-2])


def test_vision_on_digits_standin(cache, no_mirror, monkeypatch):
    vp = d.part_params(d.arms('smoke')['last3_fp32'], 'vision')
    train_im, test_im, source = d.cifar_images(vp, 'smoke')
    assert 'digits' in source and train_im.x.shape[1:] == (3, 16, 16) and len(test_im) == vp['n_test']
    out = _vision_cells()
    _check_vision_cells(out, 'digits')
    monkeypatch.setattr(tch, 'train', lambda *a, **k: pytest.fail('the cached vision teacher was trained again'))
    t, rec = d.get_teacher(vp, 'vision', 'smoke')
    cached = d.teacher_outputs(t, vp, 'vision', 'smoke', rec, layers=range(4))
    views, n, _, _ = d.student_data(vp, 'vision', 'smoke')  # the students' fixed flip+crop views: the rows of the cache
    assert n == len(views) == len(cached['logits']) == min(vp['n_train'], len(train_im)) * vp['views']
    assert torch.equal(views.labels, train_im.labels[:n // vp['views']].repeat(vp['views']))
    with torch.no_grad(): assert torch.allclose(cached['logits'][[2, 0, n - 1]], t(views.x[[2, 0, n - 1]]), atol=1e-4)
    assert [tuple(cached['hidden'][k].shape[1:]) for k in range(4)] == [(4 * 4 * 2 ** k, 16 >> k, 16 >> k) for k in range(4)]  # smoke: 16-pixel images


@pytest.mark.needs_data
def test_vision_on_cifar10_mirror(cache):
    vp = d.part_params(d.arms('smoke')['last3_fp32'], 'vision')
    train_im, _, source = d.cifar_images(vp, 'smoke')
    assert source.count('mirror') == 2 and 'cifar10' in source and set(train_im.labels.tolist()) <= set(range(10))
    _check_vision_cells(_vision_cells(), 'cifar10')


@pytest.mark.slow
def test_dryrun_cell_runs_full_models_on_cpu(cache, capsys):
    "dryrun: full's models (BERT-large -> BERT-base, ResNet-50 -> ResNet-18 at width 64, 32 pixels), 2 steps, offline."
    from lwstudy.train import resolve_precision
    p = d.arms('dryrun')['last3_mixed']
    n, v = p['parts']['nlp'], p['parts']['vision']
    assert (n['teacher'], n['student_base'], v['width'], v['image_size']) == ('bert-large', 'bert-base', 64, 32)
    out = d.fit(dict(p), 0, 'dryrun')
    printed = capsys.readouterr().out
    assert out['teacher_params'] > 3e8 and out['student_params'] > 1e8  # BERT-large (335M), BERT-base (109M)
    assert out['hidden_pairs'] == '[(9, 21), (10, 22), (11, 23)]' and out['vision_hidden_pairs'] == '[(1, 1), (2, 2), (3, 3)]'
    assert out['precision_used'] == out['vision_precision_used'] == resolve_precision('mixed', 'cpu')
    assert 'full (estimated from dryrun): NLP teacher cache' in printed and 'dryrun: vision teacher cache' in printed
    assert len(out['loss_curve']) == n['steps'] == 2


def test_quick_vision_sizes_scale_to_the_standin(no_mirror):
    "quick asks for 10,000 + 1,000 CIFAR images; the digits stand-in has fewer, so the sizes are scaled to it and recorded."
    from lwstudy import data
    data.sources_used(reset=True)
    vp = d.part_params(d.arms('quick')['alone_fp32'], 'vision')
    sz = d.vision_sizes(vp, 'quick')
    have = {s: data.available_rows('cifar10', s, 'quick') for s in ('train', 'test')}
    assert have['train'] < vp['n_teacher_train'] and sz == dict(n_teacher_train=have['train'], n_test=have['test'])
    assert any(s.get('scaled') for s in data.sources_used() if s['dataset'] == 'cifar10')
    assert d.vision_sizes(d.part_params(d.arms('smoke')['alone_fp32'], 'vision'), 'smoke') == dict(n_teacher_train=128, n_test=64)
