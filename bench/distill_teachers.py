"""Which NLP teacher gives distill a real capacity gap (issue 19): measured gap and cost, side by side in one run.

Three SST-2 classifiers (an encoder, masked mean pooling, a linear head), each fine-tuned on the same sentences and
steps, with the same data order, and evaluated on all 872 validation sentences every `--every` steps (the learning curve):
  - minilm: all-MiniLM-L6-v2, 6 layers, hidden 384 (22.7M parameters): the teacher distill uses now;
  - mpnet: all-mpnet-base-v2, 12 layers, hidden 768 (109.5M; the five pip packages `models.MPNET_INSTALL`): BERT-base size,
    eager attention (transformers has no SDPA path for MPNet; MiniLM runs SDPA), with its own tokenizer, so a student of MiniLM's layers could only be distilled at sentence level (logits, pooled states);
  - student: distill's quick student, MiniLM's layers (0, 2, 4), trained alone with the students' recipe.
The sizes are distill's `quick` NLP part (`task_params('quick')`): the teacher's 4,800 training sentences, batch 32,
at most 64 tokens; the learning rates are the technique's (MiniLM teacher 1e-4 before version 8, student 2e-4) and 5e-5
for mpnet (BERT-base fine-tuning's usual range is 2e-5..5e-5; distill's teacher since version 8). Training runs at the
host's precision policy (`precision='auto'`), as distill's NLP teacher does since version 8. Inference is the validation set's forward pass, timed
interleaved across the three models. The gap is teacher minus student-alone accuracy at the end of the same budget.

    python bench/distill_teachers.py [--steps 300] [--every 50]     # or: make bench-distill-teachers
"""
from __future__ import annotations
import argparse, os, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
import torch
from lwstudy.core import current_device
from lwstudy.measure import time_it
from lwstudy.models import TextClassifier, count_params, load_pretrained, model_logits
from lwstudy.teacher import ce_loss, train_indexed
from lwstudy.train import ValTracker, classification_scores
from lwstudy.techniques.distill import sst2_tokens, student_from_layers, task_params

QUICK = task_params('quick')['nlp']
CANDIDATES = {  # name: (tokenizer, peak lr, builds the classifier)
    'minilm': ('minilm', 1e-4, lambda: TextClassifier(load_pretrained('minilm'))),  # distill's teacher lr before version 8
    'mpnet': ('mpnet', 5e-5, lambda: TextClassifier(load_pretrained('mpnet', 'eager'))),
    'student': ('minilm', QUICK['lr'], lambda: TextClassifier(student_from_layers(load_pretrained('minilm'), QUICK['student_layers']))),
}


def load() -> str: return '/'.join(f'{x:.2f}' for x in os.getloadavg())


def fine_tune(name:str, steps:int, every:int, device:str) -> dict:
    "Fine-tune candidate `name` for `steps` batches; its validation curve, seconds per training step and the model."
    tok, lr, build = CANDIDATES[name]
    tr, va, source = sst2_tokens(dict(QUICK, teacher=tok), 'quick')
    torch.manual_seed(0); model = build()
    scores = lambda m: classification_scores(model_logits(m, va, device=device), va.labels)
    tracker = ValTracker(scores, every, target=2.0, budget=steps)  # target unreachable: the curve only
    state = train_indexed(model, tr, ce_loss(tr), steps, lr, QUICK['batch_size'], device, precision='auto', callbacks=[tracker])
    return dict(model=model.eval(), val=va, params=count_params(model), lr=lr, curve=[(s, a) for s, a, _ in tracker.curve],
                step_s=state.train_s / state.step, precision=state.precision, source=source)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--steps', type=int, default=300, help='training batches of each model (300: 2 epochs of 4,800 sentences)')
    ap.add_argument('--every', type=int, default=50, help='steps between validation passes')
    args = ap.parse_args(argv)
    if args.steps < 1 or not 1 <= args.every <= args.steps:
        sys.exit(f"--steps must be >= 1 and --every in 1..steps; got --steps {args.steps} --every {args.every}")
    device, t0 = current_device(), time.perf_counter()
    print(f"{torch.get_num_threads()} threads, device {device}, load {load()}; "
          f"SST-2, {QUICK['n_teacher_train']} training sentences, batch {QUICK['batch_size']}, {args.steps} steps", flush=True)
    runs = {}
    for name in CANDIDATES:
        runs[name] = r = fine_tune(name, args.steps, args.every, device)
        curve = '  '.join(f"{s}:{a:.3f}" for s, a in r['curve'])
        print(f"{name:8s} {r['params'] / 1e6:6.1f}M  lr {r['lr']:.0e}  {r['precision']}  {r['step_s']:.2f} s/step  val accuracy by step  {curve}", flush=True)
    print(f"data: {runs['minilm']['source']}")
    fwd = time_it({n: (lambda r=r: model_logits(r['model'], r['val'], device=device)) for n, r in runs.items()}, warmup=1, repeats=3)
    final = {n: r['curve'][-1][1] for n, r in runs.items()}
    print("\nmodel     final acc  best acc  gap to student (points)  train step (x student)  val forward s (x student)")
    for n, r in runs.items():
        print(f"{n:8s}  {final[n]:.3f}      {max(a for _, a in r['curve']):.3f}     {100 * (final[n] - final['student']):+6.1f}"
              f"                  {r['step_s'] / runs['student']['step_s']:5.2f}                   "
              f"{fwd[n]['median_s']:.2f} ({fwd[n]['median_s'] / fwd['student']['median_s']:.2f})")
    print(f"\n{time.perf_counter() - t0:.0f} s, load {load()}")
    print(f"distill_teachers: minilm={final['minilm']:.3f} mpnet={final['mpnet']:.3f} student={final['student']:.3f} "
          f"gap_minilm={100 * (final['minilm'] - final['student']):+.1f} gap_mpnet={100 * (final['mpnet'] - final['student']):+.1f} "
          f"mpnet_step/minilm_step={runs['mpnet']['step_s'] / runs['minilm']['step_s']:.2f} "
          f"mpnet_forward/minilm_forward={fwd['mpnet']['median_s'] / fwd['minilm']['median_s']:.2f}")


if __name__ == '__main__':
    main()
