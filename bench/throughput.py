"""Training throughput against this host's measured roof, and lwstudy's loop against the Hugging Face Trainer (issue 15).

One run measures: the roofs (fp32 and bf16 2048^3 matrix products, a 256->256 3x3 convolution, batch 128, 8x8), then for
each model the study trains, one full training step (forward under autocast, backward, AdamW) in fp32 and in bf16
(CNNs also in channels_last, on hosts with AVX-512), interleaved; the FLOPs of a step from `measure.count_flops`, the achieved GFLOP/s and the
fraction of the same run's roof for that precision. Then the AdamW implementations on MiniLM's parameters, and the MiniLM
fine-tune (1,024 SST-2 sentences, 32 steps of batch 32, length 64, AdamW 5e-5, fp32) through `lwstudy.train.train` and
through `transformers.Trainer`, interleaved. Shapes are the `quick` profile's (what the study trains on this CPU) plus two
reference shapes from issue 15 (`ref`). The CPU may be shared: the load average is printed at start and end, and every
comparison is interleaved so that load falls on both sides alike; read ratios, not absolute times. On a host without native
bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo: the CPU emulates it, ~0.3 GFLOP/s) only fp32 is timed, and the targets are
read against the fp32 roof, the precision `precision='auto'` trains in there.

    python bench/throughput.py [--quick]     # or: make bench-throughput
"""
from __future__ import annotations
import argparse, os, platform, sys, tempfile, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
import torch
import torch.nn.functional as F
from lwstudy.core import cpu_flags
from lwstudy.measure import count_flops, time_it
from lwstudy.train import Callback, autocast, make_loader, make_optimizer, resolve_precision, train, _native_bf16

TRANSFORMER, CNN = 'Transformer', 'CNN'
PRECS = ('fp32', 'bf16') if _native_bf16() else ('fp32',)  # without native bf16 the CPU emulates it (~0.3 GFLOP/s GEMM): not timed
AVX512 = 'avx512f' in cpu_flags()
# channels_last only where AVX-512 runs it: on AVX2-only hosts oneDNN's 1x1-conv backward-weights kernel in channels_last
# hung at random in ResNet training (torch 2.13, 2026-12-02), so the study uses it for the 3x3-conv SmallCNNs only
LAYOUTS = ('nchw', 'channels_last') if AVX512 else ('nchw',)
REF = True  # also the two reference shapes of issue 15 (--no-ref leaves them out)


def load() -> str: return '/'.join(f'{x:.2f}' for x in os.getloadavg())

def _gflops(flops, s): return flops / s / 1e9


def roofs(repeats:int) -> dict:
    "GFLOP/s of the 2048^3 matrix product (fp32, bf16) and the 256->256 3x3 conv (batch 128, 8x8), interleaved."
    a32, b32 = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    prec = lambda k: k.split('_')[1] in PRECS
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).eval()
    x = torch.randn(128, 256, 8, 8)
    gemm_f, conv_f = 2 * 2048**3, count_flops(lambda: conv(x))
    def conv_run(prec):
        def f():
            with torch.no_grad(), autocast(prec, 'cpu'): conv(x)
        return f
    fns = {'gemm_fp32': lambda: a32 @ b32, 'gemm_bf16': lambda: a16 @ b16, 'conv_fp32': conv_run('fp32'), 'conv_bf16': conv_run('bf16')}
    t = time_it({k: f for k, f in fns.items() if prec(k)}, warmup=1, repeats=repeats)
    return {k: _gflops(gemm_f if k.startswith('gemm') else conv_f, v['median_s']) for k, v in t.items()}


# ---- the models the study trains, one training step each ----------------------------------------------------------
def _mlm(cfg, attn, batch, T):
    from lwstudy.techniques.attention import build_mlm
    torch.manual_seed(0)
    model = build_mlm(dict(cfg, max_len=max(T, cfg.get('max_len', T))), attn).train()
    ids = torch.randint(1000, model.config.vocab_size, (batch, T))
    labels = torch.where(torch.rand(batch, T) < 0.15, ids, torch.full_like(ids, -100))
    from lwstudy.mlm import mlm_loss
    return model, lambda m: mlm_loss(m, (ids, labels))[0]  # the study's step: the head on the masked positions only

def _sparse_tf(batch):
    from lwstudy.models import TextEncoder
    from lwstudy.techniques.sparse import sizes
    s = sizes('quick')['parts']['tf']; torch.manual_seed(0)
    model = TextEncoder(s['vocab'], s['d'], s['heads'], s['ff'], s['layers'], s['seq_len']).train()
    ids = torch.randint(1, s['vocab'], (s['batch_size'], s['seq_len'])); y = torch.randint(0, 2, (len(ids),))
    return model, lambda m: F.cross_entropy(m(ids).float(), y)

def _minilm(batch, T):
    from transformers import AutoModelForSequenceClassification
    from lwstudy.models import pretrained_path
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(pretrained_path('minilm')[0], num_labels=2).train()
    ids = torch.randint(1000, 30522, (batch, T)); y = torch.randint(0, 2, (batch,))
    return model, lambda m: m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=y).loss

def _image(build, batch, side, classes=10):
    torch.manual_seed(0)
    model = build().train()
    x, y = torch.randn(batch, 3, side, side), torch.randint(0, classes, (batch,))
    return model, x, lambda m, x: F.cross_entropy(m(x).float(), y)

def transformer_cases():
    from lwstudy.techniques.attention import task_params
    from lwstudy.techniques.sparse import sizes
    a, s = task_params('quick'), sizes('quick')
    cfg = {k: a[k] for k in ('dim', 'n_layers', 'n_heads', 'hidden_dim')}
    ref = dict(dim=256, n_layers=4, n_heads=4, hidden_dim=1024)
    out = [(f"attention MLM {attn} d{a['dim']} L{a['n_layers']} T{a['seq_len']} b{a['batch_size']}",
            lambda attn=attn: _mlm(cfg, attn, a['batch_size'], a['seq_len'])) for attn in ('sdpa', 'lw_blockpool', 'lw_linear')]
    if REF: out.append(("ref: attention MLM sdpa d256 L4 T512 b16", lambda: _mlm(ref, 'sdpa', 16, 512)))
    t = s['parts']['tf']
    out.append((f"sparse Transformer d{t['d']} L{t['layers']} T{t['seq_len']} b{t['batch_size']}",
                lambda: _sparse_tf(t['batch_size'])))
    out.append(("MiniLM-L6 fine-tune T64 b32", lambda: _minilm(32, 64)))
    return out

def cnn_cases():
    from lwstudy.models import SmallCNN, resnet18, resnet50
    from lwstudy.techniques import calibration, distill, sparse, uncertainty_lr
    c, v = calibration.task_params('quick'), distill.task_params('quick')['vision']
    s, u = sparse.sizes('quick')['parts']['cnn'], uncertainty_lr.task_params('quick')['cifar10']
    return [
        (f"calibration SmallCNN {tuple(c['widths'])} b{c['batch_size']} 32x32",
         lambda: _image(lambda: SmallCNN(10, widths=tuple(c['widths'])), c['batch_size'], 32)),
        (f"sparse SmallCNN {tuple(s['widths'])} b{s['batch_size']} {s['img_size']}x{s['img_size']}",
         lambda: _image(lambda: SmallCNN(10, widths=tuple(s['widths']), hidden=s['hidden'], img_size=s['img_size']),
                        s['batch_size'], s['img_size'])),
        (f"distill ResNet-18 w{v['width']} b{v['batch_size']} {v['image_size']}px",
         lambda: _image(lambda: resnet18(10, v['width']), v['batch_size'], v['image_size'])),
        (f"distill ResNet-50 teacher w{v['width']} b{v['batch_size']} {v['image_size']}px",
         lambda: _image(lambda: resnet50(10, v['width']), v['batch_size'], v['image_size'])),
        (f"uncertainty_lr ResNet-18 w{u['width']} b{u['batch_size']} 32px",
         lambda: _image(lambda: resnet18(10, u['width']), u['batch_size'], 32)),
    ] + ([("ref: ResNet-18 w64 b64 32px", lambda: _image(lambda: resnet18(10, 64), 64, 32))] if REF else [])

def _step_fn(model, loss, prec):
    opt = make_optimizer(model, 1e-4)
    def step():
        with autocast(prec, 'cpu'): l = loss(model)
        opt.zero_grad(set_to_none=True); l.backward(); opt.step()
    return step

def _cases(fn):
    "The cases `fn()` lists, or none with a note when a technique module cannot be imported (a tree mid-change)."
    try: return fn()
    except ImportError as e:
        print(f"SKIPPED {fn.__name__}: {e}", flush=True); return []

def bench_transformers(roof, repeats):
    rows = []
    for name, make in _cases(transformer_cases):
        model, loss = make()
        flops = count_flops(lambda: loss(model).backward()); model.zero_grad(set_to_none=True)
        t = time_it({p: _step_fn(model, loss, p) for p in PRECS}, warmup=1, repeats=repeats)
        rows.append(dict(kind=TRANSFORMER, model=name, gflop=flops / 1e9, layout='-', **_cols(t, flops, roof)))
        _print_row(rows[-1]); del model
    return rows

def bench_cnns(roof, repeats):
    rows = []
    for name, make in _cases(cnn_cases):
        model, x, loss = make()
        flops = count_flops(lambda: loss(model, x).backward()); model.zero_grad(set_to_none=True)
        fns = {}
        for layout in LAYOUTS:
            m = model if layout == 'nchw' else _clone_cl(model)
            xx = x if layout == 'nchw' else x.contiguous(memory_format=torch.channels_last)
            for p in PRECS: fns[(layout, p)] = _step_fn(m, lambda mm, xx=xx: loss(mm, xx), p)
        t = time_it(fns, warmup=1, repeats=repeats)
        for layout in LAYOUTS:
            rows.append(dict(kind=CNN, model=name, gflop=flops / 1e9, layout=layout,
                             **_cols({p: t[(layout, p)] for p in PRECS}, flops, roof)))
            _print_row(rows[-1])
    return rows

def _clone_cl(model):
    import copy
    return copy.deepcopy(model).to(memory_format=torch.channels_last)

def _cols(t, flops, roof):
    "ms, GFLOP/s and fraction of the same precision's GEMM roof per precision timed (NaN for one not timed), and fp32/bf16."
    s = {p: t[p]['median_s'] if p in t else float('nan') for p in ('fp32', 'bf16')}
    out = {f'{p}_{k}': v for p in s for k, v in (('ms', s[p] * 1e3), ('gflops', _gflops(flops, s[p])),
                                                 ('roof', _gflops(flops, s[p]) / roof.get(f'gemm_{p}', float('nan'))))}
    return dict(out, bf16_speedup=s['fp32'] / s['bf16'])

HEAD = f"{'model':<52} {'layout':<13} {'GFLOP':>7} {'fp32 ms':>9} {'bf16 ms':>9} {'x':>5} {'fp32 GF/s':>9} {'bf16 GF/s':>9} {'fp32 %':>6} {'bf16 %':>6}"

def _f(x, spec): return f'{x:{spec}}' if x == x else f"{'-':>{spec.split('.')[0]}}"

def _print_row(r):
    print(f"{r['model']:<52} {r['layout']:<13} {r['gflop']:7.2f} {r['fp32_ms']:9.1f} {_f(r['bf16_ms'], '9.1f')} {_f(r['bf16_speedup'], '5.2f')} "
          f"{r['fp32_gflops']:9.0f} {_f(r['bf16_gflops'], '9.0f')} {100 * r['fp32_roof']:6.1f} {_f(100 * r['bf16_roof'], '6.1f')}", flush=True)


# ---- AdamW implementations --------------------------------------------------------------------------------------
def bench_adamw(repeats):
    "Time of one AdamW step over MiniLM's parameters per implementation (gradients preset), interleaved."
    model, _ = _minilm(2, 8)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params: p.grad = torch.randn_like(p) * 1e-3
    opts = {impl: make_optimizer(params, 1e-5, impl=impl) for impl in ('fused', 'foreach', 'loop')}
    t = time_it({k: o.step for k, o in opts.items()}, warmup=1, repeats=repeats)
    return {k: v['median_s'] * 1e3 for k, v in t.items()}, sum(p.numel() for p in params)


# ---- lwstudy.train vs transformers.Trainer on the MiniLM fine-tune -----------------------------------------------
def sst2_tokens(n:int=1024, T:int=64):
    from lwstudy.data import load as load_data, take
    from lwstudy.models import bert_tokenizer
    df = take(load_data('sst2', 'train', 'quick'), n, 0)
    enc = bert_tokenizer('minilm')(list(df.sentence), truncation=True, max_length=T, padding='max_length', return_tensors='pt')
    return enc['input_ids'], enc['attention_mask'], torch.tensor(df.label.values, dtype=torch.long)

class LinearDecay(Callback):
    "Linear decay from the initial lr to 0 over `total` steps (the Trainer's default schedule, no warm-up)."
    def __init__(self, total): self.total = total
    def before_fit(self, state): self.lr0 = state.lr
    def after_step(self, state): state.set_lr(self.lr0 * max(0.0, 1 - state.step / self.total))

def _fresh_minilm(seed):
    from transformers import AutoModelForSequenceClassification
    from lwstudy.models import pretrained_path
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(pretrained_path('minilm')[0], num_labels=2)

def run_loop(data, steps, bs, lr, seed) -> tuple[float, float]:
    ids, mask, y = data
    model = _fresh_minilm(seed)
    def loss_fn(m, b):
        out = m(input_ids=b[0], attention_mask=b[1], labels=b[2])
        return out.loss, out.logits
    t0 = time.perf_counter()
    st = train(model, make_loader(ids, mask, y, batch_size=bs, seed=seed), make_optimizer(model, lr, weight_decay=0.0),
               max_steps=steps, epochs=10**6, loss_fn=loss_fn, callbacks=[LinearDecay(steps)], device='cpu')
    return time.perf_counter() - t0, st.history[-1][2]

def run_trainer(data, steps, bs, lr, seed) -> tuple[float, float]:
    from transformers import Trainer, TrainingArguments
    ids, mask, y = data
    rows = [dict(input_ids=i, attention_mask=m, labels=l) for i, m, l in zip(ids, mask, y)]
    model = _fresh_minilm(seed)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=bs, max_steps=steps, learning_rate=lr,
                                 weight_decay=0.0, lr_scheduler_type='linear', warmup_steps=0, seed=seed, use_cpu=True,
                                 report_to=[], save_strategy='no', logging_strategy='no', disable_tqdm=True,
                                 dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=rows)
        t0 = time.perf_counter(); res = trainer.train()
        return time.perf_counter() - t0, res.training_loss

def bench_trainer(reps, steps=32, bs=32, lr=5e-5) -> dict:
    data = sst2_tokens(steps * bs)
    times = {'loop': [], 'Trainer': []}
    for r in range(reps):
        for name, fn in (('loop', run_loop), ('Trainer', run_trainer)):
            s, loss = fn(data, steps, bs, lr, seed=r)
            times[name].append(s)
            print(f"  rep {r + 1}: {name:<8} {s:6.1f} s  (final/mean train loss {loss:.3f})", flush=True)
    return times


def main(argv=None):
    global REF
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer repetitions (1 timed step per variant, 1 Trainer repetition)')
    ap.add_argument('--no-ref', action='store_true', help="leave out issue 15's two reference shapes (the slowest steps)")
    ap.add_argument('--skip-trainer', action='store_true', help='leave out the loop/Trainer comparison')
    a = ap.parse_args(argv)
    REF = not a.no_ref
    repeats, reps = (1, 1) if a.quick else (3, 3)
    t_start = time.perf_counter()
    print(f"python bench/throughput.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"host {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(inter-op {torch.get_num_interop_threads()}), native bf16: {_native_bf16()}, "
          f"precision 'auto' -> {resolve_precision('auto', 'cpu')}")
    print(f"load average at start (1/5/15 min): {load()}", flush=True)
    roof = roofs(max(repeats, 3))
    print("\nroofs (GFLOP/s): " + ', '.join(f'{k} {v:.0f}' for k, v in roof.items()), flush=True)
    ratio = float('nan')
    if not a.skip_trainer:
        print(f"\nMiniLM fine-tune, 32 steps x batch 32 x length 64, AdamW 5e-5 linear decay, fp32; {reps} interleaved repetitions:")
        times = bench_trainer(reps)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        ratio = med['loop'] / med['Trainer']
        print(f"  median: loop {med['loop']:.1f} s, Trainer {med['Trainer']:.1f} s, loop/Trainer = {ratio:.3f}  "
              f"(load now {load()})", flush=True)
    adam, n = bench_adamw(max(repeats, 3))
    print(f"\nAdamW step over MiniLM's {n / 1e6:.1f}M parameters (ms): " + ', '.join(f'{k} {v:.1f}' for k, v in adam.items()))
    print(f"\none training step (forward, backward, fused AdamW), median of {repeats} after 1 warm-up, {' and '.join(PRECS)} interleaved; "
          f"x = fp32/bf16 time; % = achieved GFLOP/s over the same precision's GEMM roof\n{HEAD}", flush=True)
    rows = bench_transformers(roof, repeats) + bench_cnns(roof, repeats)
    prec = resolve_precision('auto', 'cpu')  # what the study trains at on this host: the targets are read at it
    tf = [r[f'{prec}_roof'] for r in rows if r['kind'] == TRANSFORMER] or [float('nan')]
    best = {'none': float('nan')} if not any(r['kind'] == CNN for r in rows) else {}
    for r in rows:
        if r['kind'] == CNN: best[r['model']] = max(best.get(r['model'], 0), r[f'{prec}_roof'])
    if prec != 'bf16': print(f"\nno native bf16 on this host: bf16 not timed (emulated, ~0.3 GFLOP/s); issue 15's bf16 targets cannot be "
                             f"checked here, so the fractions below are of the {prec} GEMM roof, at the precision 'auto' trains in")
    print(f"\n{prec} targets (issue 15): Transformer steps >= 35% of the {prec} GEMM roof: lowest {100 * min(tf):.1f}% "
          f"({sum(x >= 0.35 for x in tf)}/{len(tf)} meet it); CNN/ResNet >= 50% (best layout per model): lowest "
          f"{100 * min(best.values()):.1f}% ({sum(x >= 0.5 for x in best.values())}/{len(best)} meet it); loop <= 1.0x Trainer: "
          f"{'met' if ratio <= 1.0 else 'missed' if ratio == ratio else 'not run'}")
    print(f"load average at end (1/5/15 min): {load()}; wall {time.perf_counter() - t_start:.0f} s")
    print(f"throughput: loop/Trainer={ratio:.3f} transformer_roof={min(tf):.3f} cnn_roof={min(best.values()):.3f} precision={prec}")


if __name__ == '__main__':
    main()
