"""Making Transformers fast and small — chapter 13's reusable code.

* ``online_softmax``: the softmax read block by block with a running max and sum (FlashAttention's trick);
* ``saved_tensor_bytes`` / ``peak_cuda_bytes``: what a forward pass keeps for backward, and CUDA's peak;
* ``mixed_precision_steps``: Adam steps under autocast (bf16, or fp16 with a GradScaler), timed;
* ``file_bytes`` / ``sparsity``: how big a saved model is, and how many of its weights are zero;
* ``kv_cache_bytes`` / ``cache_bytes``: the key/value cache a config needs, and what a cache holds;
* ``fake_quantize_blocks``: weights rounded to b bits per block of 32 (min/max, as GGUF's Q4_1);
* ``ablate_heads``: attention heads switched off, to measure which ones matter;
* ``distillation_loss``: soft targets from a teacher, mixed with the hard labels.
"""
from __future__ import annotations

import contextlib
import io
import time

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------- fused attention
def online_softmax(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """softmax(x) over the last dim, reading x one block at a time with a running max m and sum s.

    When a block raises the max from m to m', the sum so far is rescaled by exp(m - m'), so after
    the last block s = Σ exp(x - m) over the whole row: the running max and sum never need the whole row at once
    (the last line reads x again for the output).
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    m = torch.full((*x.shape[:-1], 1), float("-inf"), dtype=x.dtype, device=x.device)  # (..., 1)
    s = torch.zeros_like(m)  # (..., 1) running sum of exp(x - m)
    lowest = torch.finfo(x.dtype).min  # a finite shift for rows that are all -inf so far
    for start in range(0, x.size(-1), block):
        xb = x[..., start:start + block]  # (..., b)
        m_new = torch.maximum(m, xb.amax(-1, keepdim=True)).clamp_min(lowest)  # (..., 1)
        s = s * torch.exp(m - m_new) + torch.exp(xb - m_new).sum(-1, keepdim=True)  # rescale, add
        m = m_new
    return torch.exp(x - m) / s  # (..., n)


def saved_tensor_bytes(fn) -> tuple[object, int]:
    """Run ``fn()`` and count the bytes autograd keeps for the backward pass (each storage once).

    Returns (fn's result, bytes). This is the activation memory a training step holds between its
    forward and backward passes; it works on every device.
    """
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def peak_cuda_bytes(fn, device) -> int | None:
    """Peak CUDA memory allocated while ``fn()`` runs, above what was allocated before; None off CUDA."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ----------------------------------------------------------------------------- mixed precision
def mixed_precision_steps(model, batches, steps: int, loss_fn, dtype=None, lr: float = 1e-3):
    """``steps`` Adam steps with the forward pass under autocast to ``dtype`` (None: plain fp32).

    float16 also gets a GradScaler: the loss is multiplied before backward so small gradients do
    not underflow to 0, and divided out again before the update. bfloat16 needs none (fp32's range).
    Returns (the losses, the median milliseconds per step).
    """
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, times = [], []
    model.train()
    for _ in range(steps):
        batch = [b.to(device) for b in next(batches)]
        sync()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(model, batch)  # matmuls in dtype; ops on autocast's fp32 list stay fp32 (shorter on CPU)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # loss × scale (× 1 when the scaler is off)
        scaler.step(opt)  # unscales; skips the step if a gradient overflowed
        scaler.update()
        losses.append(loss.item())
        sync()
        times.append(time.perf_counter() - start)
    model.eval()
    return losses, 1000 * sorted(times)[len(times) // 2]


# ----------------------------------------------------------------------------- sizes
def file_bytes(model) -> int:
    """Bytes of ``torch.save(model.state_dict())``: the size of the model on disk."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def sparsity(modules) -> float:
    """Share of exactly-zero entries over the ``weight`` of each module."""
    zeros = total = 0
    for m in modules:
        zeros += (m.weight == 0).sum().item()
        total += m.weight.numel()
    return zeros / total


def kv_cache_bytes(cfg, tokens: int, batch: int = 1, dtype=torch.float32) -> int:
    """Bytes a key/value cache holds for ``tokens`` tokens of a GPTConfig-like ``cfg`` (not counted)."""
    n_kv = cfg.options.n_kv_heads or cfg.num_heads
    head_dim = cfg.d_model // cfg.num_heads
    per_token = 2 * cfg.num_layers * n_kv * head_dim  # a key and a value per layer and KV head
    return batch * tokens * per_token * torch.empty(0, dtype=dtype).element_size()


def cache_bytes(caches) -> int:
    """Bytes actually held by a list of KVCache (keys and values of every layer)."""
    return sum(c.k.nbytes + c.v.nbytes for c in caches if c.k is not None)


# ----------------------------------------------------------------------------- quantisation
def fake_quantize_blocks(w: torch.Tensor, bits: int, block: int = 32) -> torch.Tensor:
    """w rounded to ``bits`` bits per weight, per block of ``block`` along the last dim (min/max
    affine, like Q4_1 without its fp16 scales), then dequantised: same shape and dtype as w."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}")
    if w.size(-1) % block:
        raise ValueError(f"the last dimension ({w.size(-1)}) must be a multiple of {block}")
    blocks = w.float().reshape(*w.shape[:-1], -1, block)  # (..., n, block)
    lo, hi = blocks.amin(-1, keepdim=True), blocks.amax(-1, keepdim=True)  # (..., n, 1)
    step = (hi - lo) / (2 ** bits - 1)
    q = ((blocks - lo) / torch.where(step > 0, step, 1.0)).round()
    return (q * step + lo).reshape(w.shape).to(w.dtype)


# ----------------------------------------------------------------------------- pruning heads
@contextlib.contextmanager
def ablate_heads(layers, heads):
    """Switch attention heads off inside a ``with``: ``heads`` is a list of (layer, head) pairs.

    Each layer's ``self_attn`` gets a hook that zeros the chosen heads' slice of the merged head
    outputs before the output projection w_o — as if those heads returned 0.
    """
    hooks = []
    for i, layer in enumerate(layers):
        off = [h for l, h in heads if l == i]
        if not off:
            continue
        attn = layer.self_attn
        d_k = attn.w_o.in_features // attn.num_heads

        def zero(module, args, off=off, d_k=d_k):
            x = args[0].clone()  # (B, T, h · d_k): the heads side by side
            for h in off:
                x[..., h * d_k:(h + 1) * d_k] = 0
            return (x,)

        hooks.append(attn.w_o.register_forward_pre_hook(zero))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


# ----------------------------------------------------------------------------- knowledge distillation
def distillation_loss(student_logits, teacher_logits, targets, temperature: float = 2.0, alpha: float = 0.5,
                      pad_id: int = 0):
    """alpha · CE(student, targets) + (1 - alpha) · T² · KL(teacher_T ‖ student_T), pads left out.

    student_logits, teacher_logits (..., V); targets (...). _T: softmax of logits / temperature.
    The T² keeps the soft term's gradients roughly as large as at T = 1 for large T (Hinton et al., 2015).
    """
    if temperature <= 0 or not 0 <= alpha <= 1:
        raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1, got {temperature}, {alpha}")
    V = student_logits.size(-1)
    keep = targets.reshape(-1) != pad_id  # (N,) real tokens
    s = student_logits.reshape(-1, V)[keep]  # (n, V)
    t = teacher_logits.reshape(-1, V)[keep].detach()  # (n, V): the teacher is not trained
    hard = F.cross_entropy(s, targets.reshape(-1)[keep])
    log_p_s = F.log_softmax(s / temperature, dim=-1)  # (n, V)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()  # KL(teacher ‖ student) per token
    return alpha * hard + (1 - alpha) * temperature ** 2 * kl
