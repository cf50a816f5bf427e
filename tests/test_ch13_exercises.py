"""Chapter 13's exercise data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).

The chapter's own model tests live elsewhere; this file holds only the data of the shared exercise
suite: other correct answers, the code of every mistake of a judged exercise, and wrong attempts a
learner might write (none of them in the catalogue as such), with what their feedback must say.
"""
import math

import torch
import torch.nn.functional as F

from book.grader import ch13


# ----------------------------------------------------------------------------- 1. FlashAttention's forward
def flash_preallocated(q, k, v, block, causal=False):
    """Writes each query tile into a preallocated output; the maximum starts from the first tile's."""
    T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    lse = q.new_empty(q.shape[:-1])
    for i in range(0, T_q, block):
        qi = q[..., i:i + block, :] / math.sqrt(d)
        n = qi.shape[-2]
        m = l = acc = None
        for j in range(0, T_k, block):
            if causal and j > i + n - 1:
                break  # this tile and every later one lie right of the diagonal
            s = qi @ k[..., j:j + block, :].transpose(-1, -2)
            if causal:
                q_pos = torch.arange(i, i + n, device=q.device).unsqueeze(-1)
                k_pos = torch.arange(j, j + s.shape[-1], device=q.device)
                s = torch.where(k_pos <= q_pos, s, torch.full_like(s, float("-inf")))
            tile_max = s.max(dim=-1, keepdim=True).values
            if m is None:
                m = tile_max
                p = (s - m).exp()
                l, acc = p.sum(-1, keepdim=True), p @ v[..., j:j + block, :]
                continue
            new = torch.maximum(m, tile_max)
            p, shrink = (s - new).exp(), (m - new).exp()
            l = l * shrink + p.sum(-1, keepdim=True)
            acc = acc * shrink + p @ v[..., j:j + block, :]
            m = new
        out[..., i:i + n, :] = acc / l
        lse[..., i:i + n] = (m + l.log())[..., 0]
    return out, lse


def flash_normalised(q, k, v, block, causal=False):
    """Keeps the output normalised and the log-sum-exp itself as the running statistic (logaddexp)."""
    T_q, T_k = q.shape[-2], k.shape[-2]
    outs, lses = [], []
    for i in range(0, T_q, block):
        qi = q[..., i:i + block, :] * q.shape[-1] ** -0.5
        rows = torch.arange(i, i + qi.shape[-2], device=q.device)[:, None]
        lse = torch.full(qi.shape[:-1] + (1,), float("-inf"), device=q.device)
        o = torch.zeros(*qi.shape[:-1], v.shape[-1], device=q.device)
        for j in range(0, T_k, block):
            s = qi @ k[..., j:j + block, :].mT
            if causal:
                cols = torch.arange(j, j + s.shape[-1], device=q.device)
                s = s.masked_fill(cols > rows, float("-inf"))
            top = s.amax(-1, keepdim=True)
            top = torch.where(torch.isinf(top), torch.zeros_like(top), top)  # a row masked in the whole tile
            tile = top + (s - top).exp().sum(-1, keepdim=True).log()  # this tile's log-sum-exp (-inf if masked)
            new = torch.logaddexp(lse, tile)
            new_safe = torch.where(torch.isinf(new), torch.zeros_like(new), new)
            o = o * (lse - new_safe).exp().nan_to_num(0.0) + (s - new_safe).exp() @ v[..., j:j + block, :]
            lse = new
        outs.append(o)
        lses.append(lse[..., 0])
    return torch.cat(outs, -2), torch.cat(lses, -1)


def flash_full_matrix(q, k, v, block, causal=False):
    """Right values, but all the scores at once: not FlashAttention."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = (s - m).exp()
    return e @ v / e.sum(-1, keepdim=True), (m + e.sum(-1, keepdim=True).log())[..., 0]


def flash_rows_against_all_keys(q, k, v, block, causal=False):
    """Tiles the queries only: every query tile against all the keys."""
    outs = [flash_full_matrix(q[..., i:i + block, :], k, v, block)
            for i in range(0, q.shape[-2], block)] if not causal else [flash_full_matrix(q, k, v, block, True)]
    return torch.cat([o for o, _ in outs], -2), torch.cat([l for _, l in outs], -1)


def flash_with_softmax(q, k, v, block, causal=False):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


def flash_lse_keepdim(q, k, v, block, causal=False):
    out, lse = ch13.flash_attention(q, k, v, block, causal)
    return out, lse[..., None]


def flash_mask_inverted(q, k, v, block, causal=False):
    """The mask hides the past instead of the future (and no tile is skipped)."""
    T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    outs, lses = [], []
    for i in range(0, T_q, block):
        qi = q[..., i:i + block, :] / math.sqrt(d)
        rows = torch.arange(i, i + qi.shape[-2])[:, None]
        m = torch.full((*qi.shape[:-1], 1), float("-inf"))
        l, acc = torch.zeros_like(m), torch.zeros(*qi.shape[:-1], v.shape[-1])
        for j in range(0, T_k, block):
            s = qi @ k[..., j:j + block, :].mT
            if causal:
                s = s.masked_fill(torch.arange(j, j + s.shape[-1]) < rows, float("-inf"))
            new = torch.maximum(m, s.amax(-1, keepdim=True))
            p, a = (s - new).exp(), (m - new).exp()
            l, acc, m = a * l + p.sum(-1, keepdim=True), a * acc + p @ v[..., j:j + block, :], new
        outs.append(acc / l)
        lses.append((m + l.log())[..., 0])
    return torch.cat(outs, -2), torch.cat(lses, -1)


def flash_zero_start(q, k, v, block, causal=False):
    """The running maximum starts at 0: a query whose scores are all very negative underflows."""
    T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    outs, lses = [], []
    for i in range(0, T_q, block):
        qi = q[..., i:i + block, :] / math.sqrt(d)
        rows = torch.arange(i, i + qi.shape[-2])[:, None]
        m = torch.zeros(*qi.shape[:-1], 1)
        l, acc = torch.zeros_like(m), torch.zeros(*qi.shape[:-1], v.shape[-1])
        for j in range(0, T_k, block):
            s = qi @ k[..., j:j + block, :].mT
            if causal:
                s = s.masked_fill(torch.arange(j, j + s.shape[-1]) > rows, float("-inf"))
            new = torch.maximum(m, s.amax(-1, keepdim=True))
            p, a = (s - new).exp(), (m - new).exp()
            l, acc, m = a * l + p.sum(-1, keepdim=True), a * acc + p @ v[..., j:j + block, :], new
        outs.append(acc / l)
        lses.append((m + l.log())[..., 0])
    return torch.cat(outs, -2), torch.cat(lses, -1)


def flash_lse_log2(q, k, v, block, causal=False):
    out, lse = ch13.flash_attention(q, k, v, block, causal)
    return out, lse / math.log(2)  # log2 instead of the natural log


def flash_only_out(q, k, v, block, causal=False):
    return ch13.flash_attention(q, k, v, block, causal)[0]


# ----------------------------------------------------------------------------- 2. soft-target loss
def soft_by_kl_div(student_logits, teacher_logits, targets, temperature, pad_id):
    keep = targets != pad_id
    log_s = F.log_softmax(student_logits[keep] / temperature, dim=-1)  # (N, V): the real tokens only
    log_t = F.log_softmax(teacher_logits[keep] / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2


def soft_by_cross_entropy_minus_entropy(student_logits, teacher_logits, targets, temperature, pad_id):
    p_t = torch.softmax(teacher_logits / temperature, -1)
    per_token = (p_t * (p_t.log() - torch.log_softmax(student_logits / temperature, -1))).sum(-1)
    weight = (targets != pad_id).float()
    return temperature * temperature * (per_token * weight).sum() / weight.sum()


def soft_sum_over_real(student_logits, teacher_logits, targets, temperature, pad_id):
    """The padding's KL summed in, then divided by the number of real tokens."""
    T = temperature
    log_s, log_t = F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return T ** 2 * kl.sum() / (targets != pad_id).sum()


def soft_mean_of_sequence_means(student_logits, teacher_logits, targets, temperature, pad_id):
    T = temperature
    log_s, log_t = F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    keep = (targets != pad_id).float()
    return T ** 2 * ((kl * keep).sum(1) / keep.sum(1)).mean()


def soft_times_temperature(student_logits, teacher_logits, targets, temperature, pad_id):
    """The logits multiplied by T instead of divided."""
    T = temperature
    log_s, log_t = F.log_softmax(student_logits * T, -1), F.log_softmax(teacher_logits * T, -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return T ** 2 * kl[targets != pad_id].mean()


def soft_as_float(student_logits, teacher_logits, targets, temperature, pad_id):
    return ch13.soft_target_loss(student_logits, teacher_logits, targets, temperature, pad_id).item()


def soft_per_token(student_logits, teacher_logits, targets, temperature, pad_id):
    """The per-token losses, not averaged."""
    T = temperature
    log_s, log_t = F.log_softmax(student_logits / T, -1), F.log_softmax(teacher_logits / T, -1)
    return T ** 2 * (log_t.exp() * (log_t - log_s)).sum(-1)


def soft_with_hard_loss(student_logits, teacher_logits, targets, temperature, pad_id):
    """Adds the cross-entropy with the true labels, which the exercise does not ask for."""
    soft = ch13.soft_target_loss(student_logits, teacher_logits, targets, temperature, pad_id)
    hard = F.cross_entropy(student_logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    return 0.7 * soft + 0.3 * hard


def soft_calls_the_chapter(student_logits, teacher_logits, targets, temperature, pad_id):
    return distillation_loss(student_logits, teacher_logits, targets, temperature, 1.0, pad_id)  # noqa: F821


# ----------------------------------------------------------------------------- 3. int8 quantisation
def quantize_explicit(x, symmetric):
    if symmetric:
        scale = x.abs().max(dim=1, keepdim=True).values / 127.0
        scale = scale.masked_fill(scale == 0, 1.0)
        zp = torch.zeros_like(scale, dtype=torch.int64)
        q = (x / scale).round().clamp(-127, 127)
    else:
        lo = torch.minimum(x.min(dim=1, keepdim=True).values, torch.zeros(()))
        hi = torch.maximum(x.max(dim=1, keepdim=True).values, torch.zeros(()))
        scale = (hi - lo) / 255.0
        scale = scale.masked_fill(scale == 0, 1.0)
        zp = (-(lo / scale).round() - 128).long()
        q = ((x / scale).round() + zp).clamp(-128, 127)
    return q.to(torch.int8), scale, zp


def quantize_rowwise_loop(x, symmetric):
    qs, scales, zps = [], [], []
    for row in x:
        lo, hi = min(row.min().item(), 0.0), max(row.max().item(), 0.0)
        if symmetric:
            s = max(-lo, hi) / 127 or 1.0
            z, bounds = 0, (-127, 127)
        else:
            s = (hi - lo) / 255 or 1.0
            z, bounds = -128 - round(lo / s), (-128, 127)
        qs.append(torch.clamp(torch.round(row / s) + z, *bounds).to(torch.int8))
        scales.append(s)
        zps.append(z)
    return (torch.stack(qs), torch.tensor(scales, dtype=x.dtype)[:, None],
            torch.tensor(zps, dtype=torch.int8)[:, None])


def quantize_dequantised(x, symmetric):
    q, scale, zp = ch13.quantize_int8(x, symmetric)
    return (q.float() - zp) * scale


def quantize_shift_min(x, symmetric):
    """Rounds (x − min) / scale, so q differs from round(x / scale) + zero_point by one here and there."""
    q, scale, zp = ch13.quantize_int8(x, symmetric)
    if symmetric:
        return q, scale, zp
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    return (torch.round((x - lo) / scale) - 128).clamp(-128, 127).to(torch.int8), scale, zp


def quantize_int32_codes(x, symmetric):
    q, scale, zp = ch13.quantize_int8(x, symmetric)
    return q.to(torch.int32), scale, zp


def quantize_python_zero_point(x, symmetric):
    q, scale, zp = ch13.quantize_int8(x, symmetric)
    return q, scale, 0 if symmetric else zp


def quantize_scale_plus_eps(x, symmetric):
    """Avoids the zero row by adding a small number to every scale."""
    if symmetric:
        scale = x.abs().amax(-1, keepdim=True) / 127 + 1e-8
        return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale, torch.zeros_like(scale).int()
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 255 + 1e-8
    zp = (-128 - torch.round(lo / scale)).int()
    return (torch.round(x / scale) + zp).clamp(-128, 127).to(torch.int8), scale, zp


def quantize_scale_no_keepdim(x, symmetric):
    q, scale, zp = ch13.quantize_int8(x, symmetric)
    return q, scale[:, 0], zp[:, 0]


def quantize_asym_zero_point_clamped(x, symmetric):
    """The range not stretched to hold 0, and the zero point then clamped into int8."""
    if symmetric:
        return ch13.quantize_int8(x, symmetric)
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = (hi - lo) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zp = (-128 - torch.round(lo / scale)).clamp(-128, 127).int()
    return (torch.round(x / scale) + zp).clamp(-128, 127).to(torch.int8), scale, zp


def quantize_with_torch(x, symmetric):
    scale = x.abs().amax(-1) / 127
    qx = torch.quantize_per_channel(x, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
    return qx.int_repr(), scale[:, None], torch.zeros_like(scale[:, None], dtype=torch.int32)


# ----------------------------------------------------------------------------- 4. magnitude pruning
def prune_by_topk(weights, sparsity):
    flat = torch.cat([w.abs().reshape(-1) for w in weights])
    k = round(sparsity * len(flat))
    keep = torch.ones(len(flat), dtype=torch.bool)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start:start + w.numel()].view_as(w))
        start += w.numel()
    return masks


def prune_threshold_then_ties(weights, sparsity):
    """A threshold, then just enough of the tied weights to reach the exact count."""
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = round(sparsity * flat.numel())
    if k == 0:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    t = flat.kthvalue(k).values
    keep = flat > t
    extra = int((~keep).sum()) - k  # tied weights pruned beyond k: keep the last of them
    tied = torch.nonzero(flat == t).flatten()
    keep[tied[len(tied) - extra:]] = True
    return list(m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights))


def prune_quantile(weights, sparsity):
    flat = torch.cat([w.abs().flatten() for w in weights])
    t = torch.quantile(flat, sparsity)
    return [w.abs() > t for w in weights]


def prune_one_mask(weights, sparsity):
    return torch.cat([m.flatten() for m in ch13.magnitude_prune_masks(weights, sparsity)])


def prune_int_masks(weights, sparsity):
    return [m.long() for m in ch13.magnitude_prune_masks(weights, sparsity)]


def prune_index_threshold(weights, sparsity):
    """keep |w| >= the (k+1)-th smallest: fails at sparsity 1, where there is none."""
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = round(sparsity * flat.numel())
    t = flat.sort().values[k]
    return [w.abs() >= t for w in weights]


def prune_with_torch(weights, sparsity):
    import torch.nn.utils.prune as prune

    modules = [torch.nn.Module() for _ in weights]
    for m, w in zip(modules, weights):
        m.weight = torch.nn.Parameter(w.clone())
    prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=sparsity)
    return [m.weight_mask.bool() for m in modules]


def prune_counts_per_tensor(weights, sparsity):
    """One global ranking, but the count is summed from each tensor's own rounding."""
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = sum(round(sparsity * w.numel()) for w in weights)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.argsort()[:k]] = False
    return [m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


# ----------------------------------------------------------------------------- 5. the key/value cache plan
def plan_by_finfo(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    bits = torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits
    per_token = n_layers * 2 * n_kv_heads * head_dim * bits // 8
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes // per_token // batch}


def plan_by_meta_tensors(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    one = torch.empty(2, n_layers, n_kv_heads, 1, head_dim, dtype=dtype, device="meta")  # K, V of one token
    per_token = one.nbytes
    return {"bytes_per_token": per_token, "max_tokens": int(memory_bytes / (per_token * batch) // 1)}


def plan_finfo_only(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    per_token = 2 * n_layers * n_kv_heads * head_dim * torch.finfo(dtype).bits // 8
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes // (batch * per_token)}


def plan_float_division(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    per_token = 2 * n_layers * n_kv_heads * head_dim * dtype.itemsize
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes / (batch * per_token)}


def plan_group_size(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    """The number of query heads per key/value head used as the number of cached heads."""
    per_token = 2 * n_layers * (n_heads // n_kv_heads) * head_dim * dtype.itemsize
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes // (batch * per_token)}


def plan_as_tuple(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    return tuple(ch13.kv_cache_plan(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes).values())


def plan_whole_batch_per_token(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    """bytes_per_token for the whole batch, and max_tokens from it (right) — but the key says one sequence."""
    per_token = 2 * n_layers * n_kv_heads * head_dim * dtype.itemsize * batch
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes // per_token}


def plan_gigabytes(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    """The memory read as decimal gigabytes and turned back into bytes with 2**30."""
    per_token = 2 * n_layers * n_kv_heads * head_dim * dtype.itemsize
    memory = round(memory_bytes / 1e9) * 2 ** 30
    return {"bytes_per_token": per_token, "max_tokens": memory // (batch * per_token)}


# ----------------------------------------------------------------------------- a second round of attempts,
# written after the catalogue (their feedback was checked, not tuned to)
def flash_v_wrong_slice(q, k, v, block, causal=False):
    T_q, T_k = q.shape[-2], k.shape[-2]
    outs, lses = [], []
    for i in range(0, T_q, block):
        qi = q[..., i:i + block, :] / math.sqrt(q.shape[-1])
        rows = torch.arange(i, i + qi.shape[-2])[:, None]
        m = torch.full((*qi.shape[:-1], 1), -math.inf); l = torch.zeros_like(m)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1])
        for j in range(0, T_k, block):
            s = qi @ k[..., j:j + block, :].mT
            if causal:
                s = s.masked_fill(torch.arange(j, j + s.shape[-1]) > rows, -math.inf)
            mn = torch.maximum(m, s.amax(-1, keepdim=True)); p = (s - mn).exp(); a = (m - mn).exp()
            vv = v[..., i:i + block, :]
            if vv.shape[-2] != p.shape[-1]:
                vv = v[..., j:j + block, :]
            l, acc, m = a * l + p.sum(-1, keepdim=True), a * acc + p @ vv, mn
        outs.append(acc / l); lses.append((m + l.log())[..., 0])
    return torch.cat(outs, -2), torch.cat(lses, -1)

def soft_sum_over_batch(s, t, y, T, pad):
    log_s, p_t = F.log_softmax(s / T, -1), F.softmax(t / T, -1)
    return T * T * F.kl_div(log_s, p_t, reduction="sum") / s.shape[0]

def quant_zp_from_max(x, symmetric):
    if symmetric:
        return ch13.quantize_int8(x, True)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    s = (hi - lo) / 255; s = torch.where(s == 0, torch.ones_like(s), s)
    zp = (127 - torch.round(hi / s)).int()
    return (torch.round(x / s) + zp).clamp(-128, 127).to(torch.int8), s, zp

def quant_sym_minmax(x, symmetric):
    if not symmetric:
        return ch13.quantize_int8(x, False)
    s = (x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / 254
    s = torch.where(s == 0, torch.ones_like(s), s)
    return torch.round(x / s).clamp(-127, 127).to(torch.int8), s, torch.zeros_like(s, dtype=torch.int32)

def prune_sort_descending(weights, sparsity):
    flat = torch.cat([w.abs().flatten() for w in weights]); n = flat.numel(); k = round(sparsity * n)
    order = flat.argsort(descending=True)
    keep = torch.zeros(n, dtype=torch.bool); keep[order[:n - k + 1]] = True
    return [m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]

def plan_no_layers_in_tokens(L, H, KV, D, dt, B, M):
    per = 2 * L * KV * D * dt.itemsize
    return {"bytes_per_token": per, "max_tokens": M // (B * 2 * KV * D * dt.itemsize)}

def plan_mib(L, H, KV, D, dt, B, M):
    per = 2 * L * KV * D * dt.itemsize
    return {"bytes_per_token": per // 1024, "max_tokens": M // (B * per)}


REFERENCES = {"magnitude_prune_masks": ch13.magnitude_prune_masks}
BUGGY = {  # judged exercises: every mistake as code
    **{m.name: m.fn for ex in (ch13.FLASH, ch13.QUANT, ch13.PLAN) for m in ex.mistakes},
    **{name: ch13._prune_variant(kind) for kind, (name, _) in ch13.PRUNE_KINDS.items()},
    "the hard-label cross-entropy mixed in": ch13._soft_with_half_hard_loss,  # a probe in the catalogue
}

ALTERNATIVES = {
    "flash_attention": [flash_preallocated, flash_normalised],
    "soft_target_loss": [soft_by_kl_div, soft_by_cross_entropy_minus_entropy],
    "quantize_int8": [quantize_explicit, quantize_rowwise_loop],
    "magnitude_prune_masks": [prune_by_topk, prune_threshold_then_ties],
    "kv_cache_plan": [plan_by_finfo, plan_by_meta_tensors],
}

WRONG = [  # attempts a learner might write, none of them a catalogued mistake as such
    ("flash_attention", flash_full_matrix, "at once"),
    ("flash_attention", flash_rows_against_all_keys, "at once"),
    ("flash_attention", flash_with_softmax, "does not allow"),
    ("flash_attention", flash_lse_keepdim, "squeeze"),
    ("flash_attention", flash_mask_inverted, "causal"),
    ("flash_attention", flash_zero_start, "running maximum"),
    ("flash_attention", flash_lse_log2, "`lse` is not"),
    ("flash_attention", flash_only_out, "(out, lse)"),
    ("soft_target_loss", soft_sum_over_real, "summed in"),
    ("soft_target_loss", soft_mean_of_sequence_means, "each sequence"),
    ("soft_target_loss", soft_times_temperature, "multiplied by T"),
    ("soft_target_loss", soft_as_float, "torch.Tensor"),
    ("soft_target_loss", soft_per_token, "0-dim"),
    ("soft_target_loss", soft_with_hard_loss, "true labels"),
    ("soft_target_loss", soft_calls_the_chapter, "does not allow"),
    ("quantize_int8", quantize_dequantised, "(q, scale, zero_point)"),
    ("quantize_int8", quantize_shift_min, "round(x / scale) + zero_point"),
    ("quantize_int8", quantize_int32_codes, "torch.int8"),
    ("quantize_int8", quantize_python_zero_point, "`zero_point`"),
    ("quantize_int8", quantize_scale_plus_eps, "scale"),
    ("quantize_int8", quantize_scale_no_keepdim, "(R, 1)"),
    ("quantize_int8", quantize_asym_zero_point_clamped, "hold 0"),
    ("quantize_int8", quantize_with_torch, "does not allow"),
    ("magnitude_prune_masks", prune_quantile, "tied"),
    ("magnitude_prune_masks", prune_one_mask, "one mask per tensor"),
    ("magnitude_prune_masks", prune_int_masks, "bool"),
    ("magnitude_prune_masks", prune_index_threshold, "threshold comparison"),
    ("magnitude_prune_masks", prune_with_torch, "does not allow"),
    ("magnitude_prune_masks", prune_counts_per_tensor, "exactly k = round(sparsity · n)"),
    ("kv_cache_plan", plan_finfo_only, "TypeError"),
    ("kv_cache_plan", plan_float_division, "Python int"),
    ("kv_cache_plan", plan_group_size, "the key/value heads: 32"),
    ("kv_cache_plan", plan_as_tuple, "return a dict"),
    ("kv_cache_plan", plan_whole_batch_per_token, "the batch"),
    ("kv_cache_plan", plan_gigabytes, "memory_bytes"),
    ("flash_attention", flash_v_wrong_slice, "`out` is not"),
    ("soft_target_loss", soft_sum_over_batch, "logits at the padding"),
    ("quantize_int8", quant_zp_from_max, "your `zero_point` is not"),
    ("quantize_int8", quant_sym_minmax, "Your `scale` is not right"),
    ("magnitude_prune_masks", prune_sort_descending, "one weight too many"),
    ("kv_cache_plan", plan_no_layers_in_tokens, "max_tokens is memory_bytes //"),
    ("kv_cache_plan", plan_mib, "not KiB"),
]
