"""attention: what spans modules (report rendering of bench/attention.py's saved output, the bench's approximation
errors, the dryrun cell, an end-to-end smoke study); checks of one function sit beside it in nbs/10_attention.ipynb."""
import importlib.util, json
import numpy as np
import pandas as pd
import pytest
from lwstudy.techniques import attention as A

EVIL = '<script>alert(1)</script>'


def bench():
    s = importlib.util.spec_from_file_location('bench_attention', A.__file__.rsplit('/lwstudy/', 1)[0] + '/bench/attention.py')
    m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
    return m


def save_bench_outputs(eager_at_long=True, summary=True):
    "sweep.json and approx.json as bench/attention.py writes them (`summary=False`: a sweep saved before its table and crossovers)."
    from lwstudy.core import atomic_write
    rows = [dict(T=t, arm=a, fwd_s=1.0, fwdbwd_s=0.4 if a == 'blockpool' else 1.0, peak_mb=10.0, enc_peak_mb=5.0)
            for t in (128, A.LONG_LEN, 2 * A.LONG_LEN) for a in ('sdpa', 'eager', 'blockpool', 'linear')
            if eager_at_long or a != 'eager' or t < A.LONG_LEN]
    sw = dict(measured=EVIL, device=EVIL, git_commit=EVIL, batch=2, repeats=1, load_avg_1min=[0.1, 0.2], cpus=2, model=EVIL,
              rows=rows, rss=[dict(arm=EVIL, T=A.LONG_LEN, rss_before_mb=1.0, peak_rss_growth_mb=2.0)])
    atomic_write(A.bench_path('sweep'), json.dumps(sw | (bench().summary(rows, A.LONG_LEN) if summary else {})))
    atomic_write(A.bench_path('approx'), json.dumps(dict(T=512, n_seqs=1, layers=6, heads=12, source=EVIL, measured=EVIL,
                                                         rows=[dict(method=EVIL, mean=0.1, min=0.1, max=0.1)])))


def record(arm='sdpa', seed=0, distinct=1.0):
    keys = ('ptb_test_ppl', 'ptb_test_ppl_vs_unigram', 'unigram_test_ppl', 'ptb_test_acc', 'final_train_loss')
    return dict(arm=arm, seed=seed, params=dict(long_len=A.LONG_LEN), info=dict(unigram=EVIL), series=dict(loss_curve=[3.0, 2.0, 1.5]),
                metrics=dict(dict.fromkeys(keys, 1.0), ptb_test_distinct_preds=distinct))


@pytest.mark.parametrize('eager_at_long', [True, False])
def test_sections_render_saved_bench_output_escaped_and_never_compute(home, monkeypatch, eager_at_long):
    save_bench_outputs(eager_at_long)
    for f in ('fit', 'cost_metrics', 'token_windows', 'mlm_scores'):
        monkeypatch.setattr(A, f, lambda *a, **k: pytest.fail('a report hook computed'))
    secs = dict(A.sections([record(seed=s) for s in (0, 1)] + [record('blockpool', s) for s in (0, 1)], pd.DataFrame()))
    page = ''.join(secs.values())
    assert list(secs) == ['Sequence-length sweep (benchmark)', 'Approximation error on real activations',
                          'Quality at this training budget', 'Training curves']
    assert '<script>' not in page and page.count('&lt;script&gt;') >= 8
    sweep = secs['Sequence-length sweep (benchmark)']
    assert 'fwd+bwd 128 (elu+1 linear: None)' in sweep  # blockpool 0.4 s vs SDPA 1.0 s at every length
    assert f'blockpool fwd+bwd / SDPA 0.4 (goal &lt; {A.TIME_GOAL:g})' in sweep
    assert (f'blockpool peak memory / eager 1 (goal &lt; {A.EAGER_MEM_GOAL:g})' in sweep) == eager_at_long
    assert 'no memory advantage over SDPA' in sweep and 'nan' not in sweep
    assert 'predicts one and the same token' in secs['Quality at this training budget']


def test_sections_without_saved_output_say_how_to_produce_it(home):
    secs = dict(A.sections([], pd.DataFrame()))
    assert 'No saved output' in secs['Sequence-length sweep (benchmark)'] and 'python bench/attention.py' in secs['Sequence-length sweep (benchmark)']
    assert '--approx-only' in secs['Approximation error on real activations'] and len(secs) == 2


def test_an_older_sweep_save_is_resaved_with_its_summary_measuring_nothing(home, monkeypatch):
    "A sweep saved before the bench saved its table and crossovers: the report says so; `--resave` adds them from the rows."
    save_bench_outputs(summary=False)
    sweep = lambda: dict(A.sections([], pd.DataFrame()))['Sequence-length sweep (benchmark)']
    assert 'Saved output without table, crossover, goals' in sweep() and '--resave' in sweep()
    b = bench()
    monkeypatch.setattr(b, 'measure', lambda *a, **k: pytest.fail('--resave measured'))
    b.main(['--resave'])
    assert 'fwd+bwd 128 (elu+1 linear: None)' in sweep()


@pytest.mark.needs_data
def test_bench_approximation_errors_render_in_the_report(home):
    "bench/attention.py's approx_record (MiniLM on WikiText-2 test) saved as the bench saves it, shown by the report."
    from lwstudy.core import atomic_write
    rec = bench().approx_record(T=128, n_seqs=1, blocks=(32, 128), profile='smoke')
    e = pd.DataFrame(rec['rows']).set_index('method')['mean']
    assert e['blockpool b=128 (1 blocks)'] < 1e-5 < e['blockpool b=32 (4 blocks)'] < e['local only b=32']
    atomic_write(A.bench_path('approx'), json.dumps(rec))
    html = dict(A.sections([], pd.DataFrame()))['Approximation error on real activations']
    assert f"{rec['layers']} layers x {rec['heads']} heads" in html and 'local only b=32' in html


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
