"""Sequence-length sweep of the attention arms: forward and forward+backward time and peak memory of the whole masked LM
(quick-profile model), SDPA vs eager vs blockpool vs elu+1 linear, ratios side by side; caches its rows for the report.

    flock /tmp/lwstudy-cpu.lock python bench/attention.py              # 128 .. 8192, batch 2, the RSS cross-check, approx errors
    python bench/attention.py --lengths 128,512 --repeats 1 --no-rss --no-cache   # a quick look
    python bench/attention.py --approx-only   # only the approximation errors on MiniLM's activations (the report shows them)
    python bench/attention.py --resave        # re-derive the saved sweep's table and crossovers from its saved rows (measures nothing)
"""
from __future__ import annotations
import argparse, datetime as dt, json, os, subprocess, sys, time
import torch

ARMS = {'sdpa': 'sdpa', 'eager': 'eager', 'blockpool': 'lw_blockpool', 'linear': 'lw_linear'}
SWEEP_KEYS = {'fwd_s': 'forward', 'fwdbwd_s': 'fwd+bwd', 'peak_mb': 'fwd+bwd peak',  # a sweep row's measurements
              'enc_peak_mb': 'encoder-only fwd+bwd peak'}  # the same without the 30k-vocab MLM head
MARGINS = {'fwd_s': 0.0, 'fwdbwd_s': 0.0, 'peak_mb': 0.01, 'enc_peak_mb': 0.01}  # crossover: win by more than this (relative)


def crossover(rows:list[dict], # sweep rows: T, arm and the measured keys
              arm:str, # the arm that should win
              vs:str='sdpa', # the arm it should beat
              key:str='fwdbwd_s', # the measurement compared (lower wins)
              margin:float=0.0, # relative: win by more than this
             ) -> int|None:
    "The smallest swept length from which `arm` beats `vs` (by more than `margin`, relative) at every longer length."
    import pandas as pd
    t = pd.DataFrame(rows).pivot_table(index='T', columns='arm', values=key).dropna(subset=[arm, vs])
    wins = (t[arm] < t[vs] * (1 - margin)).to_numpy()
    return next((int(t.index[i]) for i in range(len(wins)) if wins[i:].all()), None)


def sweep_table(rows:list[dict]):
    "One row per (T, arm): fwd+bwd seconds, each measurement over SDPA's, and the peaks over eager attention's."
    import pandas as pd
    df = pd.DataFrame(rows).set_index(['T', 'arm'])
    keys, arms = [k for k in SWEEP_KEYS if k in df], set(df.index.get_level_values('arm'))
    out = df[['fwdbwd_s']].round(4).rename(columns={'fwdbwd_s': 'fwd+bwd s'})
    for vs, ks in (('sdpa', keys), ('eager', [k for k in keys if 'peak' in k])):
        if vs in arms: out = out.join(df[ks].div(df.xs(vs, level='arm')[ks], level='T').round(3).rename(columns=lambda k: f'{SWEEP_KEYS[k]} / {vs}'))
    return out.reset_index()


GOALS = (('time-4096', 'fwd+bwd / SDPA', 'fwd+bwd / sdpa'), ('mem-4096', 'peak memory / SDPA', 'fwd+bwd peak / sdpa'),
         ('mem-eager', 'peak memory / eager', 'fwd+bwd peak / eager'))  # claim id, what, the sweep table's column


def summary(rows:list[dict], # the sweep's rows
            long_len:int, # the claims' length: their goals are read off the sweep there
           ) -> dict:
    "What the report shows beside the rows: ratio table, crossovers {key: {arm: T}} and margins, the claims' goals, panel titles."
    import pandas as pd
    keys, t = [k for k in SWEEP_KEYS if k in rows[0]], sweep_table(rows)
    at = t[(t['T'] == long_len) & (t.arm == 'blockpool')].to_dict('records')
    goals = [dict(claim=c, what=w, value=float(at[0][col])) for c, w, col in GOALS if at and pd.notna(at[0].get(col))]
    peak = t[t.arm == 'blockpool']['fwd+bwd peak / sdpa']
    return dict(table=t.to_dict('records'), goals_T=long_len, goals=goals, peak_dev_vs_sdpa=float((peak - 1).abs().max()),
                margins={k: MARGINS[k] for k in keys},
                crossover={k: {a: crossover(rows, a, key=k, margin=MARGINS[k]) for a in ('blockpool', 'linear')} for k in keys},
                titles={k: f"{SWEEP_KEYS[k]} ({'s' if k.endswith('_s') else 'MB'})" for k in keys})


def model_cfg() -> dict:
    from lwstudy.techniques.attention import MODEL_KEYS, task_params
    p = task_params('quick')
    return {k: p[k] for k in MODEL_KEYS} | dict(max_len=max(p['max_len'], 8192))


def build(arm: str):
    from lwstudy.techniques.attention import build_mlm
    torch.manual_seed(0)  # identical weights for every arm
    return build_mlm(model_cfg(), ARMS[arm])


def measure(arm: str, T: int, batch: int, repeats: int) -> dict:
    "fwd time (eval, no grad), fwd+bwd time (train), fwd+bwd peak tensor memory, forward FLOPs."
    from lwstudy.measure import count_flops, peak_memory_mb, time_it
    from lwstudy.techniques.attention import _long_batch, cost_step
    model = build(arm)
    b = _long_batch(model.config.vocab_size, T, batch)
    model.eval()
    fwd = time_it(cost_step(model, b, backward=False), warmup=1, repeats=repeats)['median_s']
    flops = count_flops(cost_step(model, b, backward=False))
    model.train()
    step = cost_step(model, b)
    fb = time_it(step, warmup=1, repeats=repeats)['median_s']
    mem = peak_memory_mb(step)
    ids = b[0]
    def encoder_step():  # the encoder alone (no 30k-vocab head): isolates what the attention choice changes
        model.zero_grad(set_to_none=True)
        model.distilbert(input_ids=ids).last_hidden_state.square().mean().backward()
    enc = peak_memory_mb(encoder_step)
    return dict(T=T, arm=arm, fwd_s=fwd, fwdbwd_s=fb, peak_mb=mem, enc_peak_mb=enc, fwd_gflops=flops / 1e9)


def _status(field: str) -> float:
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1]) / 1e3  # kB -> MB
    raise KeyError(field)


def rss_child(arm: str, T: int, batch: int):
    "In a fresh process: peak RSS growth (MB) of one fwd+bwd step over the RSS after building model and batch."
    from lwstudy.techniques.attention import _long_batch, cost_step
    model = build(arm).train()
    step = cost_step(model, _long_batch(model.config.vocab_size, T, batch))
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')  # reset the peak (VmHWM) to the current RSS
    base = _status('VmRSS:')
    step()
    print(json.dumps(dict(arm=arm, T=T, rss_before_mb=base, peak_rss_growth_mb=_status('VmHWM:') - base)))


def rss(arm: str, T: int, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, '--rss-child', arm, str(T), str(batch)], capture_output=True, text=True,
                         env={**os.environ, 'HF_HUB_OFFLINE': '1'}, timeout=900)
    if out.returncode: raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


RECORDED: list = []  # what the 'lw_record' attention saw


def _record(module, q, k, v, key_mask, scaling, dropout):
    "Exact attention that keeps its q, k, v (so the activations downstream are the real ones)."
    from lwstudy.techniques.attention import softmax_attention
    RECORDED.append((q.detach(), k.detach(), v.detach(), key_mask, scaling))
    return softmax_attention(q, k, v, key_mask, scaling)


@torch.no_grad()
def record_qkv(texts: list, T: int = 512, n_seqs: int = 2) -> list:
    "(q, k, v, mask, scaling) of every layer of all-MiniLM-L6-v2 on `n_seqs` windows of `T` tokens of `texts` (joined)."
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    from lwstudy.models import load_pretrained
    from lwstudy.techniques.attention import _hf, _key_padding_mask
    from lwstudy.mlm import lm_tokenizer as _tokenizer, wrap_windows as _wrap
    AttentionInterface.register('lw_record', _hf(_record)); AttentionMaskInterface.register('lw_record', _key_padding_mask)
    ids = torch.tensor(_tokenizer()(' '.join(texts), add_special_tokens=False)['input_ids'][:n_seqs * (T - 2)])
    model = load_pretrained('minilm', attn_implementation='lw_record')
    RECORDED.clear(); model(input_ids=_wrap(ids.view(n_seqs, T - 2)))
    out = list(RECORDED); RECORDED.clear()
    return out


def approximation_errors(recorded: list, blocks=(32, 64, 128, 256)):
    "Relative error vs exact attention (mean/min/max over layers) of blockpool per block, block-local only, linear, uniform."
    import pandas as pd
    from lwstudy.techniques.attention import blockpool_attention, linear_attention, softmax_attention
    rows = []
    for layer, (q, k, v, mask, sc) in enumerate(recorded):
        exact = softmax_attention(q, k, v, mask, sc)
        err = lambda method, o: rows.append(dict(layer=layer, method=method, rel_error=float((o - exact).norm() / exact.norm())))
        for b in blocks:
            err(f'blockpool b={b} ({q.shape[2] // b} blocks)', blockpool_attention(q, k, v, mask, sc, b))
            err(f'local only b={b}', blockpool_attention(q, k, v, mask, sc, b, far=False))
        err('elu+1 linear', linear_attention(q, k, v, mask))
        err('uniform (mean of v)', v.mean(-2, keepdim=True).expand_as(v))
    return pd.DataFrame(rows).groupby('method', sort=False).rel_error.agg(['mean', 'min', 'max']).reset_index()


def approx_record(T: int = 512, n_seqs: int = 2, blocks=(32, 64, 128, 256), profile: str = 'quick') -> dict:
    "`approximation_errors` on MiniLM's activations over WikiText-2 test (`profile`: where it comes from), with its source."
    from lwstudy import data
    from lwstudy.mlm import lm_texts
    data.sources_used(reset=True)
    rec = record_qkv(lm_texts('wikitext', 'test', profile, 'wikitext-2-raw-v1'), T=T, n_seqs=n_seqs)
    errs = approximation_errors(rec, blocks=blocks)
    src = data.sources_used(reset=True)[-1]['source']
    return dict(T=T, n_seqs=n_seqs, layers=len(rec), heads=int(rec[0][0].shape[1]), source=src, rows=errs.to_dict('records'))


def approx(no_cache: bool = False):
    "Approximation errors of blockpool / local-only / linear / uniform against exact attention on MiniLM's activations."
    from lwstudy.core import atomic_write, git_commit
    from lwstudy.techniques.attention import bench_path
    rec = approx_record()
    rec.update(measured=dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), git_commit=git_commit())
    import pandas as pd
    print(f"approximation errors ({rec['n_seqs']} x {rec['T']} tokens, {rec['source']}):")
    print(pd.DataFrame(rec['rows']).round(4).to_string(index=False))
    if not no_cache: print(f"saved for the report: {atomic_write(bench_path('approx'), json.dumps(rec, indent=1))}")


def main(argv=None):
    from lwstudy.techniques.attention import task_params
    long_len = task_params('quick')['long_len']  # the claims' length
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--lengths', default='128,256,512,1024,2048,4096,8192')
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--eager-max', type=int, default=long_len, help='longest T for eager attention (it materialises T x T)')
    ap.add_argument('--rss-at', default=str(long_len), help='lengths for the fresh-process peak-RSS cross-check')
    ap.add_argument('--no-rss', action='store_true')
    ap.add_argument('--no-cache', action='store_true', help='do not write the cache the report reads')
    ap.add_argument('--approx-only', action='store_true', help='only the approximation errors on real activations (approx.json)')
    ap.add_argument('--no-approx', action='store_true', help='skip the approximation errors')
    ap.add_argument('--resave', action='store_true', help="add the table and crossovers to the saved sweep's rows (an older save)")
    ap.add_argument('--rss-child', nargs=3, metavar=('ARM', 'T', 'BATCH'), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rss_child:
        return rss_child(a.rss_child[0], int(a.rss_child[1]), int(a.rss_child[2]))

    import pandas as pd
    from lwstudy.core import atomic_write, device_name, git_commit
    from lwstudy.techniques.attention import HEAD_CHUNK, MASK_RATE, _claims, bench_path
    if a.resave:
        saved = json.loads(bench_path('sweep').read_text())
        return print(f"resaved: {atomic_write(bench_path('sweep'), json.dumps(saved | summary(saved['rows'], long_len), indent=1))}")
    if not a.no_approx: approx(a.no_cache)
    if a.approx_only: return
    cl = {c.id: c for c in _claims()}
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows = []
    for T in [int(t) for t in a.lengths.split(',')]:
        for arm in ARMS:
            if arm == 'eager' and T > a.eager_max: continue
            rows.append(measure(arm, T, a.batch, a.repeats))
            r = rows[-1]
            print(f"T={T:5d} {arm:9s} fwd {r['fwd_s']:.4f} s  fwd+bwd {r['fwdbwd_s']:.4f} s  peak {r['peak_mb']:8.1f} MB  "
                  f"encoder-only peak {r['enc_peak_mb']:8.1f} MB  "
                  f"fwd {r['fwd_gflops']:.2f} GFLOP", flush=True)
    rss_rows = [] if a.no_rss else [rss(arm, int(T), a.batch) for T in a.rss_at.split(',') for arm in ARMS
                                    if not (arm == 'eager' and int(T) > a.eager_max)]
    pd.set_option('display.width', 250); pd.set_option('display.max_columns', 30)
    print('\nRatios (same run, side by side):')
    sm = summary(rows, long_len)
    print(pd.DataFrame(sm['table']).to_string(index=False))
    for arm in ('blockpool', 'linear'):
        print(f'crossover {arm} vs sdpa: ' + ', '.join(f"{SWEEP_KEYS[k]}{f' (>{m:.0%} below)' if m else ''} {sm['crossover'][k][arm]}"
                                                 for k, m in sm['margins'].items()))
    if rss_rows:
        print('\nPeak RSS growth of a fresh process, one fwd+bwd step:')
        rt = pd.DataFrame(rss_rows); print(rt.to_string(index=False))
    df = pd.DataFrame(rows).set_index(['T', 'arm'])
    if (long_len, 'sdpa') in df.index:
        g = lambda arm, k: df.loc[(long_len, arm), k]
        print(f'\nGoals at T={long_len} (the claims):')
        for x in sm['goals']: print(f"  blockpool {x['what']} = {x['value']:.3f}  (goal < {cl[x['claim']].threshold:g})")
        if (long_len, 'eager') in df.index:
            print(f"  (encoder only, no MLM head) blockpool / sdpa = {g('blockpool', 'enc_peak_mb') / g('sdpa', 'enc_peak_mb'):.3f}, "
                  f"blockpool / eager = {g('blockpool', 'enc_peak_mb') / g('eager', 'enc_peak_mb'):.3f}")
        for r in rss_rows:
            if r['T'] == long_len and r['arm'] == 'blockpool':
                s = next(x for x in rss_rows if x['T'] == long_len and x['arm'] == 'sdpa')['peak_rss_growth_mb']
                print(f"  (RSS cross-check) blockpool / sdpa peak RSS growth = {r['peak_rss_growth_mb'] / s:.3f}")
    load1 = os.getloadavg()
    cfg = model_cfg()
    meta = dict(measured=dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), device=device_name('cpu'),
                git_commit=git_commit(), batch=a.batch, repeats=a.repeats, wall_s=round(time.perf_counter() - t0, 1),
                load_avg_1min=[round(load0[0], 2), round(load1[0], 2)], cpus=os.cpu_count(),
                model=f"DistilBertForMaskedLM dim {cfg['dim']}, {cfg['n_layers']} layers, {cfg['n_heads']} heads, FFN {cfg['hidden_dim']}, "
                      f"attention dropout 0, MLM head on the {MASK_RATE:.0%} masked positions, its loss in chunks of {HEAD_CHUNK}",
                rows=rows, rss=rss_rows, **sm)
    print(f"\nwall {meta['wall_s']} s; 1-min load average at start/end: {meta['load_avg_1min']} ({meta['cpus']} CPUs)")
    if not a.no_cache:
        print(f"cached for the report: {atomic_write(bench_path('sweep'), json.dumps(meta, indent=1))}")  # never half a file


if __name__ == '__main__':
    main()
