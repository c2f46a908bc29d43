"""attention: blockpool attention against exact attention, the transformers swap, the MLM pieces, gates, and a smoke run."""
import json, os
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lwstudy.techniques import attention as A


def rand_qkv(B=2, H=3, T=50, d=16, seed=0, dtype=torch.float64, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, d, generator=g, dtype=dtype, requires_grad=grad) for _ in range(3)]


def padded_mask(B, T, lengths):
    m = torch.ones(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths): m[i, n:] = False
    return m


@pytest.mark.parametrize('T,block', [(50, 64), (50, 50), (64, 64), (7, 512)])
def test_blockpool_is_softmax_attention_when_one_block_covers(T, block):
    q, k, v = rand_qkv(T=T)
    km = padded_mask(2, T, [T, max(1, T - 9)])
    torch.testing.assert_close(A.blockpool_attention(q, k, v, km, block=block), A.softmax_attention(q, k, v, km))
    torch.testing.assert_close(A.blockpool_attention(q, k, v, block=block), F.scaled_dot_product_attention(q, k, v))


def test_blockpool_is_an_approximation_with_several_blocks():
    q, k, v = rand_qkv(T=64)
    err = (A.blockpool_attention(q, k, v, block=16) - A.softmax_attention(q, k, v)).abs().max()
    assert err > 1e-3  # it must not silently be exact attention


def test_recomputing_backward_matches_plain_autograd():
    q, k, v = rand_qkv(T=37, grad=True)
    km = padded_mask(2, 37, [37, 30])
    w = torch.randn(2, 3, 37, 16, dtype=torch.float64)
    grads = []
    for recompute in (True, False):
        out = A.blockpool_attention(q, k, v, km, block=8, recompute=recompute)
        grads.append(torch.autograd.grad((out * w).sum(), (q, k, v)))
    for a, b in zip(*grads): torch.testing.assert_close(a, b)


def test_linear_attention_matches_its_materialised_form():
    q, k, v = rand_qkv(T=30)
    km = padded_mask(2, 30, [30, 21])
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    a = (fq @ fk.transpose(-1, -2)) * km[:, None, None, :]
    torch.testing.assert_close(A.linear_attention(q, k, v, km), (a / a.sum(-1, keepdim=True)) @ v, rtol=1e-7, atol=1e-9)


def small(attn, seed=0):
    torch.manual_seed(seed)
    return A.build_mlm(dict(dim=64, n_layers=2, n_heads=2, hidden_dim=128, max_len=256), attn).eval()


def test_swap_is_configuration_only_and_exact_in_the_covering_limit():
    ref, bp = small('sdpa'), small('lw_blockpool')
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), bp.state_dict().values()))  # init unchanged
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 5000, (3, 90), generator=g)
    am = torch.ones_like(ids); am[1, 60:] = 0
    with torch.no_grad():
        want = ref(ids, attention_mask=am).logits
        bp.config.lw_block_size = 128
        torch.testing.assert_close(bp(ids, attention_mask=am).logits[am.bool()], want[am.bool()], rtol=1e-4, atol=1e-4)
        bp.config.lw_block_size = None
        assert (bp(ids, attention_mask=am).logits - want).abs().max() > 1e-4


def test_attention_dropout_is_passed_through_and_hidden_dropout_kept():
    cfg = dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_len=64)
    for p in (0.0, 0.05):
        m = A.build_mlm(cfg, 'lw_blockpool', p)
        assert (m.config.attention_dropout, m.config.dropout) == (p, 0.1)
        assert {x.dropout.p for x in m.modules() if type(x).__name__ == 'DistilBertSelfAttention'} == {p}


def test_weight_independent_costs_are_cached_per_arm_and_match_a_fresh_measurement():
    cfg = dict(dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_len=128)
    eb = A.mask_tokens(torch.randint(999, 30522, (2, 64), generator=torch.Generator().manual_seed(5)),
                       torch.Generator().manual_seed(6), bert_mix=False)
    cost = lambda seed, attn='lw_blockpool': (torch.manual_seed(seed), A.cost_metrics(A.build_mlm(cfg, attn), cfg, eb, 128, 1, 1))[1]
    A._static_cache.clear()
    c1 = cost(1); c2 = cost(2)
    assert len(A._static_cache) == 3  # the second seed reused them
    A._static_cache.clear()
    c3 = cost(2); c4 = cost(2, 'sdpa')  # fresh measurement; another arm gets its own entries
    assert len(A._static_cache) == 6
    for k in ('infer_peak_mb', 'fwd_gflops', 'long_peak_mb'): assert c1[k] == c2[k] == c3[k]
    assert c4['fwd_gflops'] != c3['fwd_gflops']


@pytest.mark.parametrize('attn', ['lw_blockpool', 'lw_linear'])
def test_padding_does_not_leak(attn):
    m = small(attn)
    ids = torch.randint(1000, 5000, (2, 80), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids); am[1, 45:] = 0
    ids2 = ids.clone(); ids2[1, 45:] = 7
    with torch.no_grad():
        torch.testing.assert_close(m(ids, attention_mask=am).logits[1, :45], m(ids2, attention_mask=am).logits[1, :45])


def test_mask_function_and_bad_mask():
    assert A.key_padding_mask(2, 5, 5, attention_mask=torch.ones(2, 5, dtype=torch.bool)) is None
    m = torch.ones(2, 5, dtype=torch.bool); m[0, 3:] = False
    assert torch.equal(A.key_padding_mask(2, 5, 5, attention_mask=m), m)
    q, k, v = rand_qkv(T=5, dtype=torch.float32)
    with pytest.raises(ValueError, match='2-D key-padding mask'):
        A.hf_blockpool(small('lw_blockpool').distilbert.transformer.layer[0].attention, q, k, v, torch.ones(2, 1, 5, 5))


def test_mlm_loss_equals_the_models_own_loss_and_masking_is_seeded():
    m = small('sdpa')
    ids = torch.randint(1000, 5000, (4, 64), generator=torch.Generator().manual_seed(3))
    x, y = A.mask_tokens(ids, torch.Generator().manual_seed(0))
    x2, y2 = A.mask_tokens(ids, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2) and (y != -100).any()
    with torch.no_grad(): torch.testing.assert_close(A.mlm_loss(m, (x, y))[0], m(x, labels=y).loss, rtol=1e-5, atol=1e-5)


def test_spec_arms_differ_only_in_attention():
    sp = A.spec('smoke')
    assert sp.baseline == 'sdpa' and set(sp.arms) == {'sdpa', 'blockpool', 'linear'}
    base = {k: v for k, v in sp.arms['sdpa'].items() if k != 'attn'}
    for p in sp.arms.values(): assert {k: v for k, v in p.items() if k != 'attn'} == base
    assert A.crossover([dict(T=t, arm=a, fwdbwd_s=s) for t, a, s in
                        [(1, 'sdpa', 1), (1, 'blockpool', 2), (2, 'sdpa', 2), (2, 'blockpool', 1)]], 'blockpool') == 2


def _table(rows):
    return pd.DataFrame([dict(arm=a, seed=s, metric=m, value=v) for a, s, m, v in rows])


def test_quality_gate_needs_the_baseline_to_beat_the_unigram_model_with_more_than_one_prediction():
    good = _table([('sdpa', s, 'ptb_test_ppl_vs_unigram', 0.7) for s in (0, 1)] +
                  [('sdpa', s, 'ptb_test_distinct_preds', 40.0) for s in (0, 1)])
    assert A.QUALITY_GATE(good, [])[0]
    one_token = good.assign(value=np.where((good.metric == 'ptb_test_distinct_preds') & (good.seed == 1), 1.0, good.value))
    assert not A.QUALITY_GATE(one_token, [])[0]
    near = good.assign(value=np.where(good.metric == 'ptb_test_ppl_vs_unigram', 1 - A.UNIGRAM_MARGIN + 0.01, good.value))
    passed, detail = A.QUALITY_GATE(near, [])
    assert not passed and 'ptb_test_ppl_vs_unigram' in detail
    assert {c.id for c in A._claims() if c.gate is A.QUALITY_GATE} == {c.id for c in A._claims() if c.metric.endswith('_ppl')}
    assert len([c for c in A._claims() if c.family == 'primary']) == 3


def test_unigram_perplexity_by_hand():
    ids = torch.tensor([[101, 2000, 2000, 2001, 102]]); lab = torch.tensor([[-100, 2000, -100, 2001, -100]])
    n = 3 + 1.0 * 30522
    want = np.exp(-(np.log(3.0 / n) + np.log(2.0 / n)) / 2)
    assert A.unigram_ppl(ids, lab, lab, 30522, alphas=(1.0,))['test_ppl'] == pytest.approx(want, rel=1e-12)


def test_sections_escape_cached_strings_and_never_compute(home, monkeypatch):
    from lwstudy.core import atomic_write
    evil = '<script>alert(1)</script>'
    rows = [dict(T=t, arm=a, fwd_s=1.0, fwdbwd_s=0.4 if a == 'blockpool' else 1.0, peak_mb=10.0, enc_peak_mb=5.0)
            for t in (128, 4096) for a in ('sdpa', 'eager', 'blockpool', 'linear')]
    atomic_write(A.sweep_path(), json.dumps(dict(measured=evil, device=evil, git_commit=evil, batch=2, repeats=1,
                                                 load_avg_1min=[0.1, 0.2], cpus=2, model=evil, rows=rows, rss=[])))
    atomic_write(A.approx_path(), json.dumps(dict(T=512, n_seqs=1, layers=6, heads=12, source=evil, measured=evil,
                                                  rows=[dict(method=evil, mean=0.1, min=0.1, max=0.1)])))
    monkeypatch.setattr(A, 'record_qkv', lambda *a, **k: pytest.fail('a report hook computed'))
    keys = ('ptb_test_ppl', 'ptb_test_ppl_vs_unigram', 'unigram_test_ppl', 'ptb_test_acc', 'ptb_test_distinct_preds', 'final_train_loss')
    rec = dict(arm='sdpa', seed=0, params=dict(long_len=4096), info=dict(unigram=evil), series={}, metrics=dict.fromkeys(keys, 1.0))
    page = ''.join(h for _, h in A.sections([rec], pd.DataFrame()))
    assert '<script>' not in page and page.count('&lt;script&gt;') >= 6


def test_dryrun_is_fulls_model_on_a_few_steps():
    full, dry = A.task_params('full'), A.task_params('dryrun')
    assert {k: dry[k] for k in A.MODEL_KEYS + ('seq_len',)} == {k: full[k] for k in A.MODEL_KEYS + ('seq_len',)}
    assert dry['max_steps'] == 2 and dry['n_train'] == dry['batch_size'] * dry['max_steps'] and dry['n_eval'] < 64
    assert A.spec('dryrun').version == A.spec('quick').version


@pytest.mark.slow
def test_dryrun_cell_runs_offline(no_mirror, monkeypatch):
    "One dryrun cell (full's DistilBERT-base shape at seq_len 512, long_len 4096): the code path `full` runs."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    out = A.fit(A.spec('dryrun').arms['blockpool'], 0, 'dryrun')
    assert out['params_count'] > 60e6 and out['n_train_windows'] == A.task_params('dryrun')['n_train']
    assert 0 < out['long_mem_vs_eager'] < 1 and np.isfinite(out['ptb_test_ppl_vs_unigram'])


@pytest.mark.needs_data
def test_smoke_run_writes_a_report(home):
    from lwstudy.study import experiment
    exp = experiment('attention', profile='smoke', seeds=2, progress=False)
    page = exp.report.read_text()
    for s in ('Sequence-length sweep', 'Approximation error on real activations', 'Quality at this training budget',
              'Training curves', 'ptb_text_only'):
        assert s in page, s
    assert set(exp.claims.id) == {c.id for c in A._claims()}
    ct = exp.claims.set_index('id')
    sdpa_distinct = exp.table[(exp.table.arm == 'sdpa') & (exp.table.metric == 'ptb_test_distinct_preds')].value
    if (sdpa_distinct <= 1).any():  # a unigram-level baseline: its perplexity claims say nothing
        assert (ct.loc[['ppl-test', 'ppl-val', 'ref-ppl-test', 'vs-ref-ppl'], 'verdict'] == 'uninformative').all()
    t = exp.table
    assert set(t.arm) == {'sdpa', 'blockpool', 'linear'} and not t.standin.any()
    ppl = t[t.metric == 'ptb_test_ppl'].value
    assert ((ppl > 1) & (ppl < 30522)).all()
    assert (t[t.metric == 'ptb_test_distinct_preds'].value >= 1).all()
