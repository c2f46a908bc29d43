"""The precision policy, the loop's autocast and lazily read losses, and the memory guard (correctness only, no timing)."""
import pytest
import torch
from lwstudy import measure, train as tr
from lwstudy.core import BadInput

CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {extra}\nbugs\t\t: {bugs}\n\n"


@pytest.mark.parametrize('extra,bugs,native', [('avx512_bf16', '', True), ('amx_bf16 amx_tile', '', True),
                                              ('avx512_vnni', '', False), ('', 'avx512_bf16', False)])
def test_native_bf16_reads_the_flags_line(tmp_path, extra, bugs, native):
    f = tmp_path/'cpuinfo'; f.write_text(CPUINFO.format(extra=extra, bugs=bugs))
    assert tr._cpu_native_bf16(f) is native

def test_native_bf16_unreadable_is_false(tmp_path):
    assert tr._cpu_native_bf16(tmp_path/'absent') is False

@pytest.mark.parametrize('native,auto,mixed', [(True, 'bf16', 'bf16'), (False, 'fp32', 'fp32')])
def test_resolve_precision_follows_the_host(monkeypatch, native, auto, mixed):
    monkeypatch.setattr(tr, '_native_bf16', lambda: native)
    assert tr.resolve_precision('auto', 'cpu') == auto
    assert tr.resolve_precision('mixed', 'cpu') == mixed
    assert tr.resolve_precision() == auto
    for p in ('fp32', 'bf16'): assert tr.resolve_precision(p, 'cpu') == p

def test_resolve_precision_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    assert tr.resolve_precision('auto', 'cuda') == 'bf16'
    assert tr.resolve_precision('mixed', 'cuda:0') == 'fp16'
    assert tr.resolve_precision('fp16', 'cuda') == 'fp16'
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: False)
    assert tr.resolve_precision('auto', 'cuda') == 'fp16'

def test_resolve_precision_refuses_bad_input():
    with pytest.raises(BadInput, match="'half'.*auto, mixed, fp32, bf16, fp16"): tr.resolve_precision('half', 'cpu')
    with pytest.raises(BadInput, match="'tpu'"): tr.resolve_precision('auto', 'tpu')
    with pytest.raises(BadInput, match='needs a CUDA device'): tr.resolve_precision('fp16', 'cpu')


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

@pytest.mark.parametrize('precision,enabled', [('fp32', False), ('bf16', True)])
def test_train_runs_under_autocast(precision, enabled):
    seen = []
    def loss_fn(model, batch):
        seen.append((torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu')))
        logits = model(batch[0])
        seen.append(logits.dtype)
        return torch.nn.functional.cross_entropy(logits.float(), batch[1]), logits
    model = torch.nn.Linear(6, 3)
    st = tr.train(model, tr.make_loader(*_data(), batch_size=16), tr.make_optimizer(model, 1e-2), loss_fn=loss_fn,
                  precision=precision, device='cpu')
    assert st.precision == precision and st.step == 3
    assert {s for s in seen if isinstance(s, tuple)} == ({(True, torch.bfloat16)} if enabled else {(False, torch.get_autocast_dtype('cpu'))})
    assert {s for s in seen if isinstance(s, torch.dtype)} == {torch.bfloat16 if enabled else torch.float32}

def test_predict_and_evaluate_take_precision():
    model = torch.nn.Linear(6, 3)
    logits, y = tr.predict(model, tr.make_loader(*_data(), batch_size=16, shuffle=False), device='cpu', precision='bf16')
    assert logits.dtype == torch.float32 and logits.shape == (48, 3) and torch.equal(y, _data()[1])
    assert 0 <= tr.evaluate(model, tr.make_loader(*_data(), shuffle=False), device='cpu', precision='auto')['accuracy'] <= 1
    with pytest.raises(BadInput, match='needs a CUDA device'): tr.predict(model, [], device='cpu', precision='fp16')

def test_grad_scaler_only_for_fp16_on_cuda(monkeypatch):
    monkeypatch.setattr(tr, '_native_bf16', lambda: True)
    model = torch.nn.Linear(6, 3)
    for p in ('auto', 'mixed', 'bf16', 'fp32'):
        st = tr.train(model, tr.make_loader(*_data(), batch_size=16), tr.make_optimizer(model, 1e-2), precision=p, device='cpu')
        assert st.scaler is None and st.precision in ('bf16', 'fp32')
    with pytest.raises(BadInput, match='fp16'):
        tr.train(model, tr.make_loader(*_data()), tr.make_optimizer(model, 1e-2), precision='fp16', device='cpu')

def test_losses_are_read_lazily_and_exactly():
    torch.manual_seed(0); model = torch.nn.Linear(6, 3)
    losses = []
    class Spy(tr.Callback):
        def after_step(self, state):
            assert isinstance(state.loss_t, torch.Tensor) and isinstance(state._history[-1][2], torch.Tensor)
            losses.append(state.loss)  # reading it on demand gives the float
    st = tr.train(model, tr.make_loader(*_data(), batch_size=16), tr.make_optimizer(model, 1e-2), epochs=2, callbacks=[Spy()],
                  device='cpu')
    assert [h[2] for h in st.history] == losses and len(losses) == 6
    assert [h[:2] for h in st.history] == [(i + 1, i // 3) for i in range(6)]
    assert all(type(h[2]) is float for h in st._history)  # flushed at the end
    assert st.threads == dict(intra_op=torch.get_num_threads(), inter_op=torch.get_num_interop_threads())

def test_make_optimizer_implementations_agree():
    def run(impl):
        torch.manual_seed(0); m = torch.nn.Linear(6, 3)
        tr.train(m, tr.make_loader(*_data(), batch_size=16, seed=2), tr.make_optimizer(m, 1e-2, impl=impl), epochs=2, device='cpu')
        return m.weight.detach()
    ref = run('loop')
    for impl in ('fused', 'foreach', 'auto'): torch.testing.assert_close(run(impl), ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(BadInput, match="'fast'"): tr.make_optimizer(torch.nn.Linear(2, 2), 1e-3, impl='fast')
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(BadInput, match='no parameters'): tr.make_optimizer(frozen, 1e-3)


def test_require_memory_refuses_a_huge_estimate(capsys):
    avail = measure.available_bytes()
    with pytest.raises(BadInput, match=r'not enough memory: dryrun: teacher cache 1000\.0 TB in RAM \(host has .* available\)'):
        measure.require_memory('dryrun: teacher cache', 10**15)
    assert measure.require_memory('dryrun: small cache', 1000) > 1000
    out = capsys.readouterr().out
    assert 'dryrun: small cache 1.0 kB in RAM' in out and 'dryrun: teacher cache 1000.0 TB' in out
    assert 0 < avail < 10**15

def test_require_memory_reads_meminfo(monkeypatch, tmp_path):
    real = measure.Path
    fake = tmp_path/'meminfo'; fake.write_text('MemTotal: 8000000 kB\nMemFree: 100 kB\nMemAvailable: 2000000 kB\n')
    monkeypatch.setattr(measure, 'Path', lambda p: fake if p == '/proc/meminfo' else real(p))
    assert measure.available_bytes() == 2000000 * 1024
    with pytest.raises(BadInput, match=r'3\.0 GB in RAM \(host has 2\.0 GB available\)'): measure.require_memory('x', 3 * 10**9)

def test_require_memory_bad_place_and_device():
    with pytest.raises(BadInput, match='allowed: RAM, GPU'): measure.require_memory('x', 1, where='disk')
    with pytest.raises(BadInput, match='needs a CUDA device'): measure.require_memory('x', 1, where='GPU')
    with pytest.raises(BadInput, match='>= 0'): measure.require_memory('x', -5)

def test_fmt_bytes():
    assert [measure.fmt_bytes(n) for n in (0, 999, 1000, 4_200_000, 43.1e9, 2e12)] == ['0 B', '999 B', '1.0 kB', '4.2 MB', '43.1 GB', '2.0 TB']
    with pytest.raises(BadInput, match='-1'): measure.fmt_bytes(-1)

def test_time_it_interleaves():
    order = []
    out = measure.time_it({'a': lambda: order.append('a'), 'b': lambda: order.append('b')}, warmup=1, repeats=3)
    assert ''.join(order) == 'ab' * 4 and set(out) == {'a', 'b'} and len(out['a']['times_s']) == 3
    with pytest.raises(BadInput, match='repeats=0'): measure.time_it(lambda: 0, repeats=0)
