"""The sparse technique: patterns, layers against their masked dense twins, pattern survival, theory, gates, and a smoke run."""
import json, math, warnings
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from lwstudy.core import BadInput, make_generator
from lwstudy.models import SmallCNN
from lwstudy.techniques import sparse as S

warnings.filterwarnings('ignore', message='.*Sparse.*')


@pytest.mark.parametrize('block', [1, 4, 32])
@pytest.mark.parametrize('sparsity', [0.5, 0.9])
def test_mask_exact_sparsity(block, sparsity):
    m = S.make_mask(64, 128, sparsity, block, make_generator(0))
    tiles = (64 // block) * (128 // block)
    assert int((m == 0).sum()) == round(sparsity * tiles) * block * block
    if block > 1:  # whole tiles only
        t = m.view(64 // block, block, 128 // block, block)
        assert torch.equal(t.amin((1, 3)), t.amax((1, 3)))


def test_mask_bad_input():
    with pytest.raises(BadInput, match='cannot be tiled'): S.make_mask(10, 16, 0.5, 4)
    with pytest.raises(BadInput, match='sparsity'): S.make_mask(16, 16, 1.0, 1)


def test_mask_depends_on_seed_only():
    a, b = S.make_mask(32, 32, 0.5, 4, make_generator(1)), S.make_mask(32, 32, 0.5, 4, make_generator(1))
    assert torch.equal(a, b) and not torch.equal(a, S.make_mask(32, 32, 0.5, 4, make_generator(2)))


@pytest.mark.parametrize('block', [1, 4, 32])
def test_kernel_equals_masked_dense(block):
    torch.manual_seed(0)
    lin = S.SparseLinear(nn.Linear(128, 64), 0.5, block, make_generator(0))
    conv = S.SparseConv2d(nn.Conv2d(32, 64, 3, padding=1), 0.5, block, make_generator(1))
    x, xi = torch.randn(3, 5, 128), torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        ref_l, ref_c = lin(x), conv(xi)
        assert torch.allclose(ref_c, F.conv2d(xi, conv.weight * conv.mask, conv.bias, padding=1))
        lin.build_kernel(); conv.build_kernel()
        assert lin.kernel.layout == (torch.sparse_csr if block == 1 else torch.sparse_bsr)
        assert S.kernel_nnz(lin.kernel) == int(lin.mask.sum())
        torch.testing.assert_close(lin(x), ref_l, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(conv(xi), ref_c, atol=1e-4, rtol=1e-4)


def test_im2col_matches_unfold():
    xi = torch.randn(2, 3, 10, 9)
    for stride, pad in (((1, 1), (1, 1)), ((2, 1), (0, 2))):
        cols, _ = S.im2col(xi, (3, 3), stride, pad)
        assert torch.equal(cols, F.unfold(xi, 3, 1, pad, stride).transpose(0, 1).reshape(27, -1))


def test_pattern_survives_adam_and_naive_does_not():
    torch.manual_seed(0)
    lin = S.SparseLinear(nn.Linear(32, 16), 0.5, 4, make_generator(0))
    naive = nn.Linear(32, 16)
    with torch.no_grad(): naive.weight.copy_(lin.weight)
    for layer in (lin, naive):
        opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
        for i in range(5):
            loss = layer(torch.randn(8, 32, generator=make_generator(i))).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
    assert int((lin.weight[lin.mask == 0] != 0).sum()) == 0 and lin.sparsity == 0.5
    assert (naive.weight[lin.mask == 0] != 0).all()


def test_sparsify_keeps_init_and_skips_stem_and_classifier():
    torch.manual_seed(0); dense = SmallCNN(widths=(32, 64, 128), hidden=64)
    torch.manual_seed(0); sp = S.sparsify(SmallCNN(widths=(32, 64, 128), hidden=64), 0.5, 32, seed=0)
    assert S.prunable(dense) == ['features.3', 'features.6', 'head.1']
    assert isinstance(sp.features[0], nn.Conv2d) and isinstance(sp.head[4], nn.Linear)
    for name in S.prunable(dense):
        d, s = dense.get_submodule(name), sp.get_submodule(name)
        assert torch.equal(s.weight, d.weight * s.mask)
    enc = S.sparsify(S.TextEncoder(50, 64, 8, 128, 2, 8), 0.5, 4, seed=0)
    assert len(S.sparse_layers(enc)) == 8 and isinstance(enc.head, nn.Linear)


def test_theory_counts_by_hand():
    torch.manual_seed(0)
    sp = S.sparsify(SmallCNN(widths=(8, 16, 32), hidden=32), 0.5, 4, seed=0)
    t = S.theory(sp, torch.randn(1, 3, 32, 32))
    assert t['flops'] - t['flops_sparse'] == 2 * (16 * 72 // 2 * 256 + 32 * 144 // 2 * 64 + 32 * 512 // 2)
    assert t['params'] - t['params_nonzero'] == (16 * 72 + 32 * 144 + 32 * 512) // 2
    assert S.storage_mb(sp) < S.storage_mb(SmallCNN(widths=(8, 16, 32), hidden=32))


def test_sparse_peak_memory_counts_output():
    k = S.to_sparse_kernel(torch.randn(64, 64), S.make_mask(64, 64, 0.5, 1, make_generator(0)), 1)
    x = torch.randn(64, 10)
    assert S.peak_memory_mb(lambda: k @ x, "cpu") == pytest.approx(64 * 10 * 4 / 1e6)


def test_kernel_support_probe():
    sup = S.kernel_support(1)
    assert sup['forward'] and sup['grad_values']


def test_break_even():
    rows = [dict(shape='a', rep='CSR', sparsity=s, speedup=v) for s, v in ((0.5, 1.1), (0.7, 0.3), (0.9, 1.2), (0.95, 2.0))]
    rows += [dict(shape='a', rep='BSR 4x4', sparsity=s, speedup=0.5) for s in (0.5, 0.9)]
    assert S.break_even(rows) == {('a', 'CSR'): 0.9, ('a', 'BSR 4x4'): None}


def test_spec_arms_share_keys_and_claims_are_valid():
    s = S.spec('smoke')
    assert s.baseline == 'dense' and set(s.arms) == set(S.ARMS)
    assert len({tuple(sorted(p)) for p in s.arms.values()}) == 1
    assert all(c.arm in s.arms for c in s.claims)


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
    acc = [c for c in S._claims() if c.metric.endswith('_test_accuracy')]
    assert acc and all(c.gate is not None for c in acc)
    assert [c.id for c in S._claims() if c.family == 'primary'] == sorted(S.PRIMARY, key=[c.id for c in S._claims()].index)


def test_chance_stats_from_the_labels():
    st = S.chance_stats(torch.tensor([0, 0, 0, 1]), 0.5)
    assert st['chance'] == 0.75 and st['over_chance'] == -0.25 and st['se'] == math.sqrt(0.25 / 4) and st['n'] == 4


def _fake_table():
    rows = []
    for arm, t in (('dense', 1.0), ('random_50', 2.0), ('block4_50', 1.5), ('block32_90', 0.5)):
        for s in (0, 1):
            for p in ('cnn', 'tf'):
                vals = dict(test_accuracy=0.6, chance=0.5, acc_over_chance=0.1, params_frac=0.5, flops_frac=0.5, infer_ms=10 * t,
                            infer_masked_ms=10.0, infer_peak_mb=1.0, train_time_s=1.0, train_peak_mb=1.0, storage_mb=1.0)
                rows += [(arm, s, f'{p}_{k}', v) for k, v in vals.items()]
    return _table(rows)


def test_sections_use_the_table_and_escape_the_saved_sweep(home, monkeypatch):
    from lwstudy import report
    from lwstudy.core import atomic_write, project_root
    evil = '<script>alert(1)</script>'
    rows = [dict(shape=evil, out=8, inp=8, cols=8, sparsity=s, rep=evil, dense_ms=1.0, sparse_ms=1.0, speedup=v, dense_mb=1.0,
                 sparse_mb=1.0) for s, v in ((0.5, 0.5), (0.9, 1.5))]
    atomic_write(project_root()/S.BENCH_JSON, json.dumps(dict(when=evil, device=evil, repeats=evil, profile=evil, rows=rows)))
    monkeypatch.setattr(report, 'claim_table', lambda *a, **k: pytest.fail('a report hook re-ran claim_table'))
    page = ''.join(h for _, h in S.sections([], _fake_table()))
    assert '<script>' not in page and page.count('&lt;script&gt;') >= 4
    assert 'block32_90: speed-up 2.00x' in page  # dense 10 ms / 5 ms, from the table it was given


def test_dryrun_is_fulls_models_on_two_steps():
    full, dry = S.sizes('full'), S.sizes('dryrun')
    model = ('cnn_widths', 'cnn_hidden', 'cnn_img_size', 'tf_seq_len', 'tf_vocab', 'tf_d', 'tf_heads', 'tf_ff', 'tf_layers')
    assert {k: dry[k] for k in model} == {k: full[k] for k in model}
    for p, bs in (('cnn', 'batch_size'), ('tf', 'tf_batch_size')):
        assert dry[f'{p}_epochs'] * dry[f'{p}_n_train'] / dry[bs] == 2


@pytest.mark.slow
def test_dryrun_cell_runs_offline(no_mirror):
    "One dryrun cell of the sparse 4x4 arm: full's models through the kernels, on the stand-ins."
    out = S.fit(S.spec('dryrun').arms['block4_50'], 0, 'dryrun')
    assert out['cnn_layer_sparsity'] == pytest.approx(0.5) and out['tf_layer_sparsity'] == pytest.approx(0.5)
    assert out['cnn_kernel_max_abs_diff'] < 1e-3 and out['tf_n_test'] == S.sizes('dryrun')['tf_n_test']


def test_smoke_run_and_report(home):
    from lwstudy.study import experiment
    res = experiment('sparse', 'smoke', seeds=2, progress=False)
    assert res.computed == 8 and res.report.exists()
    t = res.table
    frac = t[(t.metric == 'cnn_params_frac')].groupby('arm').value.mean()
    assert frac['dense'] == 1.0 and frac['block4_50'] < 1 and frac['block32_90'] < frac['block4_50']
    assert (t[t.metric == 'tf_test_accuracy'].value.between(0, 1)).all()
    page = res.report.read_text()
    assert 'Theory vs reality' in page and 'Kernel sweep' in page and 'Goal' in page
