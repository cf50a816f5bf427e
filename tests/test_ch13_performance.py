"""Chapter 13: the model code of "making Transformers fast and small" (book/perf.py, book/distributed.py).

The online softmax equals torch.softmax; the distillation loss reduces to cross-entropy, vanishes
when the student is the teacher and scales with T²; int8 dynamic quantisation keeps a small model's
outputs and shrinks its file; b-bit block rounding stays within half a step; the key/value cache
holds the bytes the formula says; head ablation zeros exactly the chosen heads; and two DDP
processes follow the loss curve of one process with the doubled batch.
"""
import copy
import json
import subprocess
import sys
import warnings
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book import perf
from book.distributed import DemoConfig, local_loss, run
from book.gguf_file import fake_quantize_q4_1
from book.gpt import GPT, GPTConfig
from book.layers import EncoderLayer, LayerOptions
from conftest import ROOT


# ----------------------------------------------------------------------------- online softmax
@pytest.mark.parametrize("shape", [(7,), (3, 50), (2, 4, 129), (2, 3, 5, 64)])
@pytest.mark.parametrize("block", [1, 3, 16, 64, 1000])
def test_online_softmax_equals_softmax(shape, block):
    torch.manual_seed(0)
    x = torch.randn(shape) * 5
    torch.testing.assert_close(perf.online_softmax(x, block), torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5)


def test_online_softmax_with_masked_entries_and_huge_scores():
    torch.manual_seed(1)
    x = torch.randn(5, 300)
    x[0, :200] = float("-inf")  # the first blocks of a row are all masked
    x[1, 100:] = float("-inf")  # the last ones are
    x[2, ::2] = float("-inf")
    x[3] = x[3] * 1e4  # exp() of these alone overflows
    x[4] = x[4] + 1e30
    for block in (1, 32, 128, 300):
        out = perf.online_softmax(x, block)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, torch.softmax(x, dim=-1), atol=1e-6, rtol=1e-5)
        assert (out[0, :200] == 0).all() and (out[1, 100:] == 0).all()


def test_online_softmax_all_masked_row_is_nan_like_torch():
    x = torch.full((2, 10), float("-inf"))
    x[1, 3] = 0.0
    out = perf.online_softmax(x, 4)
    assert torch.isnan(out[0]).all() and torch.isnan(torch.softmax(x, -1)[0]).all()
    torch.testing.assert_close(out[1], torch.softmax(x, -1)[1])


def test_online_softmax_float64_and_bad_block():
    x = torch.randn(4, 33, dtype=torch.float64)
    assert perf.online_softmax(x, 8).dtype == torch.float64
    torch.testing.assert_close(perf.online_softmax(x, 8), torch.softmax(x, -1))
    with pytest.raises(ValueError, match="block"):
        perf.online_softmax(x, 0)


# ----------------------------------------------------------------------------- distillation loss
def _logits(seed, shape=(3, 6, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * 2


def _targets(pad_id=0):
    t = torch.randint(1, 11, (3, 6), generator=torch.Generator().manual_seed(5))
    t[0, 4:] = pad_id
    t[2, 1:] = pad_id
    return t


def test_distillation_with_alpha_one_is_cross_entropy_without_pads():
    s, t, y = _logits(0), _logits(1), _targets()
    want = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=0)
    for temperature in (1.0, 3.0):
        torch.testing.assert_close(perf.distillation_loss(s, t, y, temperature, 1.0, pad_id=0), want)


def test_distillation_soft_term_is_zero_when_student_is_teacher():
    s, y = _logits(0), _targets()
    assert perf.distillation_loss(s, s.clone(), y, 2.0, 0.0, pad_id=0).abs().item() < 1e-6
    assert perf.distillation_loss(s, _logits(1), y, 2.0, 0.0, pad_id=0).item() > 0.01  # KL > 0 otherwise


def test_distillation_soft_term_is_kl_times_temperature_squared():
    s, t, y = _logits(0), _logits(1), _targets()
    keep = y.reshape(-1) != 0
    for temperature in (1.0, 2.0, 4.0):
        log_s = F.log_softmax(s.reshape(-1, 11)[keep] / temperature, -1)
        log_t = F.log_softmax(t.reshape(-1, 11)[keep] / temperature, -1)
        kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")  # KL(teacher ‖ student)
        got = perf.distillation_loss(s, t, y, temperature, 0.0, pad_id=0)
        torch.testing.assert_close(got, temperature ** 2 * kl)
    mixed = perf.distillation_loss(s, t, y, 2.0, 0.3, pad_id=0)
    torch.testing.assert_close(mixed, 0.3 * perf.distillation_loss(s, t, y, 2.0, 1.0, 0)
                               + 0.7 * perf.distillation_loss(s, t, y, 2.0, 0.0, 0))


def test_distillation_ignores_pads_and_does_not_train_the_teacher():
    s, t, y = _logits(0).requires_grad_(), _logits(1).requires_grad_(), _targets(pad_id=3)
    changed = s.detach().clone()
    changed[0, 4:] += 100  # logits at pad positions: they must not matter
    a = perf.distillation_loss(s, t, y, 2.0, 0.5, pad_id=3)
    torch.testing.assert_close(perf.distillation_loss(changed, t, y, 2.0, 0.5, pad_id=3), a.detach())
    a.backward()
    assert t.grad is None and s.grad is not None and (s.grad[0, 4:] == 0).all()
    with pytest.raises(ValueError):
        perf.distillation_loss(s, t, y, 0.0, 0.5)
    with pytest.raises(ValueError):
        perf.distillation_loss(s, t, y, 2.0, 1.5)


# ----------------------------------------------------------------------------- quantisation
def test_int8_dynamic_round_trip_of_a_small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref, got = model(x), int8(x)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < 0.02, f"int8 outputs are {rel:.3f} off in relative norm"
    assert 0.9 < F.cosine_similarity(got, ref).min().item() <= 1.0 + 1e-6
    ratio = perf.file_bytes(model) / perf.file_bytes(int8)
    assert ratio > 2.5, f"int8 file only {ratio:.2f}× smaller"


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_block_rounding_stays_within_half_a_step(bits):
    torch.manual_seed(bits)
    w = torch.randn(16, 128)
    wq = perf.fake_quantize_blocks(w, bits)
    assert wq.shape == w.shape and wq.dtype == w.dtype
    blocks = w.reshape(16, 4, 32)
    step = (blocks.amax(-1, keepdim=True) - blocks.amin(-1, keepdim=True)) / (2 ** bits - 1)
    err = (wq - w).reshape(16, 4, 32).abs()
    assert (err <= step / 2 + 1e-6).all()
    levels = [torch.unique(b).numel() for b in wq.reshape(-1, 32)]
    assert max(levels) <= 2 ** bits  # at most 2^b distinct values per block
    torch.testing.assert_close(wq.reshape(16, 4, 32).amin(-1), blocks.amin(-1))  # the minimum is exact


def test_more_bits_less_error_and_4_bits_matches_q4_1():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    errors = [(perf.fake_quantize_blocks(w, b) - w).norm().item() for b in (2, 3, 4, 6, 8)]
    assert errors == sorted(errors, reverse=True)
    ours, q41 = perf.fake_quantize_blocks(w, 4), fake_quantize_q4_1(w)
    # Q4_1 differs only by storing d and m as float16, which flips a rounding here and there
    assert ((ours - q41).abs() < 0.01).float().mean().item() > 0.95
    err_ours, err_q41 = ((ours - w).norm() / w.norm()).item(), ((q41 - w).norm() / w.norm()).item()
    assert abs(err_ours - err_q41) < 0.05 * err_q41
    with pytest.raises(ValueError, match="multiple"):
        perf.fake_quantize_blocks(torch.randn(3, 30), 4)
    with pytest.raises(ValueError, match="bits"):
        perf.fake_quantize_blocks(w, 0)


def test_sparsity_and_file_bytes():
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight[:3] = 0
    assert perf.sparsity([layer]) == pytest.approx(0.3)
    assert perf.file_bytes(layer) > 4 * 110  # 110 float32 numbers and torch.save's wrapping


# ----------------------------------------------------------------------------- KV cache
@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_kv_cache_bytes_equal_a_measured_cache(n_kv):
    cfg = GPTConfig(vocab_size=50, max_len=64, d_model=32, num_heads=4, num_layers=3,
                    options=LayerOptions(activation="gelu", n_kv_heads=n_kv))
    model = GPT(cfg).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 10)), cache=cache)
        model(torch.randint(0, 50, (2, 1)), cache=cache)  # one decoding step more
    assert perf.cache_bytes(cache) == perf.kv_cache_bytes(cfg, tokens=11, batch=2)
    assert perf.kv_cache_bytes(cfg, 11, 2, dtype=torch.bfloat16) * 2 == perf.kv_cache_bytes(cfg, 11, 2)


# ----------------------------------------------------------------------------- memory and mixed precision
def test_saved_tensor_bytes_sees_the_square_matrix_and_the_fused_kernel_avoids_it():
    q, k, v = (torch.randn(1, 2, 256, 16, requires_grad=True) for _ in range(3))
    square = 2 * 256 * 256 * 4  # one (B, h, T, T) float32 matrix
    from book.attention import scaled_dot_product_attention
    _, unfused = perf.saved_tensor_bytes(lambda: scaled_dot_product_attention(q, k, v)[0])
    _, fused = perf.saved_tensor_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert unfused >= square > fused
    assert perf.peak_cuda_bytes(lambda: None, "cpu") is None


def test_mixed_precision_steps_train_and_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    batches = iter(lambda: (x, y), None)

    def loss_fn(m, batch):
        return F.mse_loss(m(batch[0]).float(), batch[1])

    for dtype in (None, torch.bfloat16):
        losses, ms = perf.mixed_precision_steps(copy.deepcopy(model), batches, 30, loss_fn, dtype=dtype, lr=1e-2)
        assert len(losses) == 30 and losses[-1] < losses[0] and ms > 0


# ----------------------------------------------------------------------------- head ablation
def test_ablate_heads_zeros_exactly_the_chosen_heads_and_cleans_up():
    torch.manual_seed(0)
    layers = nn.ModuleList(EncoderLayer(16, 4, 32) for _ in range(2)).eval()
    seen = {}
    x = torch.randn(2, 5, 16)

    def forward():
        h = x
        for layer in layers:
            h = layer(h)
        return h

    full = forward()
    with perf.ablate_heads(layers, [(1, 2), (0, 0)]):  # its hooks run first, then this spy
        hook = layers[1].self_attn.w_o.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].clone()))
        changed = forward()
        hook.remove()
    assert not torch.allclose(full, changed)
    assert (seen["x"][..., 8:12] == 0).all() and (seen["x"][..., :8] != 0).any()
    torch.testing.assert_close(forward(), full)  # hooks removed after the with


# ----------------------------------------------------------------------------- data parallelism
def test_local_loss_of_one_process_is_the_mean_over_tokens():
    from book.data.dates import CharVocab, split_dates, training_batches
    from book.training import teacher_forcing_loss
    from book.transformer import Transformer, TransformerConfig
    vocab = CharVocab()
    src, tgt = next(training_batches(split_dates().train, "iso", vocab, batch_size=8))
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(len(vocab), len(vocab), d_model=16, num_heads=2, d_ff=32,
                                          num_encoder_layers=1, num_decoder_layers=1))
    tokens = (tgt[:, 1:] != vocab.PAD).sum().item()
    whole = local_loss(model, src, tgt, vocab.PAD, tokens, 1)
    torch.testing.assert_close(whole, teacher_forcing_loss(model, src, tgt, vocab.PAD))
    halves = [local_loss(model, src[r], tgt[r], vocab.PAD, tokens, 2) for r in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)  # what DDP's average sees


def test_ddp_two_processes_follow_one_process_with_the_doubled_batch(tmp_path):
    """torchrun, 2 gloo processes × batch B against 1 process × 2B: the loss curves agree (~5e-7 seen)."""
    steps = 6
    ddp_out, one_out = tmp_path / "ddp.json", tmp_path / "one.json"
    common = ["-m", "book.distributed", "--steps", str(steps), "--threads", "1"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    *common, "--out", str(ddp_out)], cwd=ROOT, check=True, capture_output=True, timeout=110)
    one = run(steps)  # the single process, here
    ddp = json.loads(ddp_out.read_text())
    assert ddp["world_size"] == 2 and one["world_size"] == 1 and ddp["global_batch"] == one["global_batch"]
    assert len(ddp["losses"]) == steps
    assert ddp["losses"][-1] < ddp["losses"][0]  # it trains
    diff = max(abs(a - b) for a, b in zip(ddp["losses"], one["losses"]))
    assert diff < 1e-5, f"DDP and the single process differ by {diff:.2e}"
    assert one["config"] == ddp["config"] == asdict(DemoConfig())
