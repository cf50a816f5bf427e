"""Graded exercises of chapter 13 — making Transformers fast and small.

The chapter prints a vector online softmax and a distillation loss; chapter 04 already grades
attention over key blocks that arrive one by one, and chapter 10 the cache of one fixed model. So
the learner here

1. **extends** the online softmax to FlashAttention's forward pass (``flash_attention``): tiles of
   queries and keys, a running maximum, sum and output per query, tiles above the diagonal skipped
   under a causal mask, and the log-sum-exp that the backward pass keeps — judged also by *how*:
   no tensor of scores against all the keys at once;
2. **debugs** a soft-target distillation loss with four bugs (``soft_target_loss``): which way the
   KL divergence goes, the temperature on the teacher, the T² factor, the padding;
3. **derives** per-row int8 quantisation (``quantize_int8``), symmetric and asymmetric: the scale,
   an integer zero point, rounding, the int8 range, the all-zero row;
4. **derives** global magnitude-pruning masks at a sparsity (``magnitude_prune_masks``): judged by
   what a mask must be (the exact count, the smallest magnitudes), so any tie-breaking passes;
5. **predicts** a key/value cache's bytes per token and the longest context that fits in memory for
   real configurations (``kv_cache_plan``): grouped-query and multi-query attention, 1-, 2- and
   4-byte types.

Every case is small, seeded and made here: nothing needs a trained model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from book.grader import core
from book.grader.core import Case, Exercise, Mistake, Probe, bug_combinations

CHAPTER = "13_performance"


def _randn(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


# ============================================================================= 1. FlashAttention's forward pass
def flash_attention(q, k, v, block, causal=False):
    """softmax(q kᵀ/√d) v one (block × block) tile at a time, and the log-sum-exp of every query's scores.

    q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v) -> out (..., T_q, d_v), lse (..., T_q).
    causal=True (T_q = T_k): query i sees keys 0 … i; the tiles above the diagonal are skipped."""
    T_q, T_k = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for i in range(0, T_q, block):
        q_tile = q[..., i:i + block, :] * scale  # (..., b_q, d)
        rows = torch.arange(i, i + q_tile.shape[-2], device=q.device)
        m = torch.full((*q_tile.shape[:-1], 1), -math.inf, dtype=q.dtype, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(score - m)
        acc = torch.zeros(*q_tile.shape[:-1], v.shape[-1], dtype=v.dtype, device=q.device)  # Σ exp(s - m) v
        last = min(T_k, i + block) if causal else T_k  # tiles right of the diagonal: all masked
        for j in range(0, last, block):
            s = q_tile @ k[..., j:j + block, :].transpose(-2, -1)  # (..., b_q, b_k)
            if causal:
                cols = torch.arange(j, j + s.shape[-1], device=q.device)
                s = s.masked_fill(cols > rows[:, None], -math.inf)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            p = torch.exp(s - m_new)
            alpha = torch.exp(m - m_new)  # <= 1: the old totals in terms of the new maximum
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            acc = alpha * acc + p @ v[..., j:j + block, :]
            m = m_new
        outs.append(acc / l)
        lses.append((m + torch.log(l)).squeeze(-1))
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


def _flash_variant(scale="sqrt", rescale="both", divide=True, mask="global", skip="causal", tiles="all",
                   lse="right", per_tile=False, start=-math.inf):
    """flash_attention with one slip: scale none/d; rescale sum/acc/none/flipped; divide=False;
    mask none/local/strict; skip none/diagonal (with a causal mask); tiles drop_keys/drop_both (the last,
    shorter tile left out); lse log_l/m/first; per_tile (every tile normalised alone, the results averaged)."""
    def attention(q, k, v, block, causal=False):
        T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
        factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d}[scale]

        def starts(T):
            return range(0, T - block + 1, block) if tiles != "all" else range(0, T, block)

        outs, lses = [], []
        for i in (starts(T_q) if tiles == "drop_both" else range(0, T_q, block)):
            q_tile = q[..., i:i + block, :] * factor
            b_q = q_tile.shape[-2]
            rows = torch.arange(i, i + b_q)
            m = torch.full((*q_tile.shape[:-1], 1), start)
            l, acc = torch.zeros_like(m), torch.zeros(*q_tile.shape[:-1], v.shape[-1])
            tile_outs, lse_first = [], None
            if causal and skip == "causal":
                js = [j for j in starts(T_k) if j < i + block]
            elif causal and skip == "diagonal":
                js = [j for j in starts(T_k) if j < i]
            else:
                js = list(starts(T_k))
            for j in js:
                s = q_tile @ k[..., j:j + block, :].transpose(-2, -1)
                if causal and mask != "none":
                    cols = torch.arange(j, j + s.shape[-1])
                    if mask == "local":
                        hidden = (cols - j) > (rows - i)[:, None]
                    elif mask == "strict":
                        hidden = cols >= rows[:, None]
                    else:
                        hidden = cols > rows[:, None]
                    s = s.masked_fill(hidden, -math.inf)
                if per_tile:  # this tile's own softmax
                    e = torch.exp(s - s.amax(dim=-1, keepdim=True))
                    tile_outs.append(e / e.sum(dim=-1, keepdim=True) @ v[..., j:j + block, :])
                m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
                p = torch.exp(s - m_new)
                alpha = torch.exp(m_new - m) if rescale == "flipped" else torch.exp(m - m_new)
                l = (alpha * l if rescale in ("both", "sum", "flipped") else l) + p.sum(dim=-1, keepdim=True)
                acc = (alpha * acc if rescale in ("both", "acc", "flipped") else acc) + p @ v[..., j:j + block, :]
                m = m_new
                if lse_first is None:
                    lse_first = m + torch.log(l)
            out = torch.stack(tile_outs).mean(0) if per_tile else acc / l if divide else acc
            outs.append(out)
            value = {"right": m + torch.log(l), "log_l": torch.log(l), "m": m, "first": lse_first}[lse]
            lses.append(value.squeeze(-1))
        return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)

    return attention


def _flash_cases(g):
    def qkv(*lead, T_q, T_k, d, d_v, spread=1.0):
        return _randn(g, *lead, T_q, d, scale=spread), _randn(g, *lead, T_k, d), _randn(g, *lead, T_k, d_v)

    away = 1.0 + 0.1 * _randn(g, 2, 10, 4)  # keys near (1, 1, 1, 1): q = −100·k: every q·k/√d is near −200
    return [
        Case("B = 2, h = 2, 12 queries and 12 keys, d = 8, block 4, no mask",
             (*qkv(2, 2, T_q=12, T_k=12, d=8, d_v=8), 4, False)),
        Case("13 queries and 13 keys, block 5: the last tile is shorter", (*qkv(1, T_q=13, T_k=13, d=4, d_v=4), 5, False)),
        Case("a causal mask, T = 12, block 4", (*qkv(2, T_q=12, T_k=12, d=8, d_v=8), 4, True)),
        Case("a causal mask, 2 heads, T = 11, block 3 (not a divisor of T)",
             (*qkv(2, T_q=11, T_k=11, d=4, d_v=6), 3, True)),
        Case("cross-attention: 7 queries, 17 keys, d = 4, d_v = 6, block 6", (*qkv(3, T_q=7, T_k=17, d=4, d_v=6), 6, False)),
        Case("large scores (queries 30 times larger): exp() of an unshifted score overflows",
             (*qkv(2, T_q=10, T_k=10, d=4, d_v=4, spread=30.0), 3, True)),
        Case("every score far below 0 (the queries point away from every key), block 4, causal",
             (-100.0 * away, away, _randn(g, 2, 10, 4), 4, True)),
        Case("a block larger than the sequence: T = 5, block 8, causal", (*qkv(1, T_q=5, T_k=5, d=4, d_v=4), 8, True)),
        Case("block 1: one key at a time, 2 × 3 heads, 6 queries, 9 keys", (*qkv(2, 3, T_q=6, T_k=9, d=2, d_v=3), 1, False)),
    ]


class _Shapes(TorchDispatchMode):
    """Records the shape of every floating-point tensor an operation makes."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.shapes.append(tuple(t.shape))
        return out


def _flash_judge(got, q, k, v, block, causal=False):
    """A right answer must also work tile by tile: no floating tensor of scores against all the keys."""
    T_k, d, d_v = k.shape[-2], q.shape[-1], v.shape[-1]
    fn = core.graded_function()
    if fn is None or fn is flash_attention or T_k <= block:
        return None
    recorder = _Shapes()
    with recorder:
        core.call_with_timeout(fn, core.clone((q, k, v, block, causal)), 10.0)
    lead = math.prod(q.shape[:-2])  # (…, n, T_k) for every batch and head: n queries against every key
    full = [s for s in recorder.shapes if len(s) >= 2 and s[-1] == T_k and s[-2] not in (d, d_v)
            and s[-2] > 1 and math.prod(s) == lead * s[-2] * T_k]
    if full:
        return (f"the values are right, but your function made a tensor of shape {full[0]}: scores (or weights) "
                f"of queries against all {T_k} keys at once. FlashAttention never holds more than one "
                f"(block × block) tile of scores: loop over the key tiles too, k[..., j:j + block, :]")
    return None


def _flash_explain(got, want, q, k, v, block, causal=False):
    if not (isinstance(got, (tuple, list)) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got)):
        return "Return a tuple (out, lse)"
    out, lse = got
    if tuple(out.shape) != tuple(want[0].shape):
        return f"`out` is (..., T_q, d_v) = {tuple(want[0].shape)}: one row per query, every query tile included"
    if tuple(lse.shape) != tuple(want[1].shape):
        return f"`lse` is (..., T_q) = {tuple(want[1].shape)}: one number per query (squeeze the last axis)"
    T_q = q.shape[-2]
    last = (T_q // block) * block  # where the last, shorter query tile starts
    if T_q % block and torch.allclose(out[..., :last, :].double(), want[0][..., :last, :].double(), atol=1e-4,
                                      rtol=1e-4) and not torch.allclose(out.double(), want[0].double(), atol=1e-4,
                                                                        rtol=1e-4):
        return (f"Your rows are right up to query {last - 1} and wrong after it: block {block} does not divide "
                f"{T_q}, so the last tile is shorter — range(0, T, block) reaches it, and slices stop at the end")
    if causal:
        return ("Your function passes the checks without a mask and fails this one with causal=True: query i "
                "(at its global position, tile start + row) sees keys 0 … i; later keys get −inf before the "
                "maximum, and each query sees at least itself")
    out_ok = torch.allclose(out.double(), want[0].double(), atol=1e-5, rtol=1e-4)
    lse_ok = torch.allclose(lse.double(), want[1].double(), atol=1e-5, rtol=1e-4)
    if out_ok and not lse_ok:
        return ("Your `out` is right; `lse` is not: it is log Σ_j exp(s_j) over each query's visible scores s "
                "(already divided by √d), which the running maximum m and sum l give as m + log l")
    if lse_ok and not out_ok:
        return ("Your `lse` is right, so the maximum and the sum are; `out` is not: look at the output "
                "accumulator — rescaled like the sum whenever the maximum grows, divided by l once at the end")
    return None


FLASH = Exercise(
    id=f"{CHAPTER}/flash_attention",
    title="FlashAttention's forward pass: tiles, a running max and sum, the log-sum-exp",
    reference=flash_attention,
    cases=_flash_cases,
    output_names=("out", "lse"),
    atol=1e-4,
    rtol=1e-4,
    time_limit=5.0,
    judge=_flash_judge,
    explain=_flash_explain,
    nan_hint=("exp() of a large score overflowed, or a query saw no key at all (0/0): shift every tile's "
              "scores by the running maximum, rescale the totals by exp(old max − new max); with causal=True "
              "hide only the keys after each query (key position > query position, in global positions), "
              "never the query's own key or earlier ones"),
    forbidden=("torch.softmax", "torch.logsumexp", "scaled_dot_product_attention"),
    forbidden_why="write the running maximum, sum and output yourself, one tile at a time",
    mistakes=[
        Mistake("no 1/√d scaling", _flash_variant(scale="none"),
                "scale the scores by 1/√d, d = q.size(-1) — scaling the query tile once is enough; the "
                "log-sum-exp is that of the scaled scores."),
        Mistake("the scores divided by d instead of √d", _flash_variant(scale="d"),
                "the scale is 1/√d (math.sqrt(d)), as in scaled dot-product attention."),
        Mistake("the output accumulator not rescaled when the maximum grows", _flash_variant(rescale="sum"),
                "acc was summed with weights exp(s − m_old); before adding a tile computed with m_new, "
                "multiply acc by exp(m_old − m_new), exactly as you do for the sum l."),
        Mistake("the running sum not rescaled when the maximum grows", _flash_variant(rescale="acc"),
                "l holds Σ exp(s − m_old): multiply it by exp(m_old − m_new) before adding the new tile's sum, "
                "like the output accumulator."),
        Mistake("neither the sum nor the output rescaled when the maximum grows", _flash_variant(rescale="none"),
                "both running totals were built with the old maximum: multiply both by exp(m_old − m_new) "
                "(at most 1) before adding the new tile's terms."),
        Mistake("the rescaling factor upside down, exp(m_new − m_old)", _flash_variant(rescale="flipped"),
                "the maximum only grows, so the old terms must shrink: the factor is exp(m_old − m_new) <= 1."),
        Mistake("the running maximum started at 0 instead of −inf", _flash_variant(start=0.0),
                "a maximum that starts at 0 is only safe when some score is >= 0: if all of a query's scores lie "
                "far below 0, every exp(s − 0) underflows to 0 and acc / l is 0/0. Start from −inf (made on q's "
                "device), or from the first tile's own maximum."),
        Mistake("the output never divided by the running sum", _flash_variant(divide=False),
                "acc holds Σ exp(s − m)·v, unnormalised: divide it by l once, after the last key tile."),
        Mistake("each tile normalised on its own and the tiles' results averaged", _flash_variant(per_tile=True),
                "a tile's softmax only knows its own keys. Keep unnormalised totals across the key tiles and "
                "divide once at the end."),
        Mistake("the causal mask ignored", _flash_variant(mask="none", skip="none"),
                "with causal=True query i may see keys 0 … i only: set the scores of later keys to −inf "
                "(masked_fill) before the maximum and the exponentials."),
        Mistake("the causal mask built from positions inside the tile (every tile visited)",
                _flash_variant(mask="local", skip="none"),
                "a tile starting at query i and key j holds queries i + r and keys j + c: compare those global "
                "positions (key > query is hidden), not r and c. A tile left of the diagonal hides nothing; a "
                "tile right of it hides everything."),
        Mistake("the causal mask built from positions inside the tile (tiles right of the diagonal skipped)",
                _flash_variant(mask="local"),
                "skipping the tiles right of the diagonal is right, but inside a tile compare global positions "
                "(query i + r, key j + c): a tile left of the diagonal hides nothing."),
        Mistake("each query's own key hidden by the mask (key >= query instead of key > query)",
                _flash_variant(mask="strict"),
                "query i sees keys 0 … i, itself included: hide only keys with a larger position. Without it, "
                "query 0 sees no key at all and its output is 0/0."),
        Mistake("the tile on the diagonal skipped", _flash_variant(skip="diagonal"),
                "only tiles entirely right of the diagonal can be skipped: the key tile that starts at the "
                "query tile's own start holds each query's own key (loop while j < i + block)."),
        Mistake("the last, shorter key tile left out", _flash_variant(tiles="drop_keys"),
                "when block does not divide T_k, the last tile is shorter: range(0, T_k, block) visits it; "
                "slicing k[..., j:j + block, :] simply stops at the end."),
        Mistake("the last, shorter tile of queries and of keys left out", _flash_variant(tiles="drop_both"),
                "when block does not divide T, the last tile is shorter but still there: use range(0, T, block) "
                "for the query tiles and for the key tiles."),
        Mistake("the log-sum-exp without the maximum (log l only)", _flash_variant(lse="log_l"),
                "l sums exp(s − m), so log Σ exp(s) = m + log l: add the running maximum back."),
        Mistake("the running maximum returned as the log-sum-exp", _flash_variant(lse="m"),
                "the maximum is only the largest score; the log-sum-exp adds log l, the log of the sum of "
                "exp(s − m): lse = m + log l."),
        Mistake("the log-sum-exp taken after the first key tile only", _flash_variant(lse="first"),
                "lse covers all the keys a query sees: compute m + log l after the last key tile."),
    ],
)


# ============================================================================= 2. find the bugs: soft targets
def soft_target_loss(student_logits, teacher_logits, targets, temperature, pad_id):
    """T² · KL(p_teacher ‖ p_student), both distributions softened by T, averaged over the non-pad tokens.

    logits (B, S, V), targets (B, S) with pad_id at the padding -> a 0-dim tensor."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, S, V)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1)  # (B, S)
    keep = targets != pad_id  # (B, S)
    return temperature ** 2 * kl[keep].mean()


SOFT_BUGS = {
    "teacher": ("the teacher's logits not divided by the temperature",
                "soften both distributions with the same T: log_softmax(teacher_logits / T)."),
    "direction": ("the KL divergence the wrong way round, KL(student ‖ teacher)",
                  "distillation measures KL(p_teacher ‖ p_student) = Σ p_teacher · (log p_teacher − log p_student): "
                  "the teacher's probabilities weight the sum (like the targets of a cross-entropy)."),
    "pad": ("the padding counted in the mean",
            "average over the real tokens only: keep = targets != pad_id, then kl[keep].mean()."),
    "t2": ("the T² factor missing",
           "softening by T shrinks the soft targets' gradients by 1/T²: multiply the loss by T² so that its "
           "size does not depend on the temperature."),
}


def _soft_variant(combo=(), *, power=2, vocab_mean=False, batchmean=False, probs_input=False, cross_entropy=False,
                  dim=-1, zeroed=False, inverted=False, pad_summed=False, per_sequence=False, multiply=False):
    def loss(student_logits, teacher_logits, targets, temperature, pad_id):
        T = temperature
        soften = (lambda z: z * T) if multiply else (lambda z: z / T)
        log_p_s = F.log_softmax(soften(student_logits), dim=dim)
        log_p_t = F.log_softmax(teacher_logits if "teacher" in combo else soften(teacher_logits), dim=dim)
        if cross_entropy:
            kl = -(log_p_t.exp() * log_p_s).sum(dim=-1)
        elif probs_input:  # F.kl_div(p_student, p_teacher): its input should be log-probabilities
            kl = (log_p_t.exp() * (log_p_t - log_p_s.exp())).sum(dim=-1)
        elif "direction" in combo:
            kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(dim=-1)
        else:
            kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)
        keep = targets != pad_id
        if "pad" in combo:
            value = kl.mean()
        elif zeroed:
            value = (kl * keep).mean()
        elif inverted:
            value = kl[~keep].mean()
        elif pad_summed:
            value = kl.sum() / keep.sum()
        elif per_sequence:
            value = ((kl * keep).sum(dim=1) / keep.sum(dim=1)).mean()
        elif batchmean:
            value = kl[keep].sum() / kl.shape[0]
        else:
            value = kl[keep].mean()
        if vocab_mean:
            value = value / student_logits.shape[-1]
        factor = 1.0 if "t2" in combo else T ** power
        return factor * value

    return loss


def _soft_cases(g):
    def case(name, B, S, V, T, pad_id, lengths, spread=2.0):
        student, teacher = _randn(g, B, S, V, scale=spread), _randn(g, B, S, V, scale=spread)
        targets = torch.randint(0, V, (B, S), generator=g)
        targets = torch.where(targets == pad_id, (targets + 1) % V, targets)  # no pad among the real tokens
        for b, n in enumerate(lengths):
            targets[b, n:] = pad_id
        return Case(name, (student, teacher, targets, T, pad_id))

    return [
        case("2 sequences of 6 tokens (one padded after 4), 10 classes, T = 2", 2, 6, 10, 2.0, 0, [6, 4]),
        case("3 sequences, a lot of padding, 7 classes, T = 4, pad_id = 3", 3, 5, 7, 4.0, 3, [2, 5, 1]),
        case("one sequence of 8 tokens, no padding, 12 classes, T = 0.5 (sharper than the logits)",
             1, 8, 12, 0.5, 1, [8]),
        case("4 sequences, 5 classes, T = 1.5, the last positions padded", 4, 7, 5, 1.5, 0, [7, 3, 6, 5]),
        case("2 sequences, 20 classes, confident models (large logits), T = 3", 2, 4, 20, 3.0, 19, [4, 2],
             spread=6.0),
    ]


def _soft_with_half_hard_loss(student_logits, teacher_logits, targets, temperature, pad_id):
    """The soft term and the true labels' cross-entropy, half and half (as a learner might write it)."""
    hard = F.cross_entropy(student_logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id)
    return 0.5 * soft_target_loss(student_logits, teacher_logits, targets, temperature, pad_id) + 0.5 * hard


_MIX = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)


def _soft_hard_mix(student_logits, teacher_logits, targets, temperature, pad_id):
    """A probe: alpha · soft + (1 − alpha) · cross-entropy with the labels, for a usual alpha."""
    soft = soft_target_loss(student_logits, teacher_logits, targets, temperature, pad_id).item()
    hard = F.cross_entropy(student_logits.flatten(0, 1), targets.flatten(), ignore_index=pad_id).item()

    def test(got):
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            return False
        value = got.item()
        return any(abs(value - (a * soft + (1 - a) * hard)) < 1e-4 * (1 + abs(value)) for a in _MIX)

    return Probe(test)


def _soft_mistakes():
    out = bug_combinations(SOFT_BUGS, lambda combo: _soft_variant(combo),
                           "it runs and returns a number, but compare it term by term with the formula: which "
                           "distribution weights the KL sum, where does T go, which tokens count?")
    out += [
        Mistake("the loss multiplied by T instead of T²", _soft_variant(power=1),
                "the gradients of the softened loss shrink like 1/T²: multiply by temperature ** 2."),
        Mistake("the loss divided by T² instead of multiplied", _soft_variant(power=-2),
                "the factor restores the gradients' size, which softening shrank: multiply by T²."),
        Mistake("the KL divergence averaged over the vocabulary too (F.kl_div's reduction='mean')",
                _soft_variant(vocab_mean=True),
                "the KL divergence of one token is a SUM over the V classes; only the tokens are averaged. "
                "(F.kl_div(..., reduction='mean') divides by every element, V included.)"),
        Mistake("the sum over the tokens divided by the batch size (F.kl_div's reduction='batchmean')",
                _soft_variant(batchmean=True),
                "with (B, S, V) logits 'batchmean' divides by B, not by the number of real tokens: sum the "
                "per-token KL over the kept tokens and divide by how many there are."),
        Mistake("probabilities given where log-probabilities belong (F.kl_div(p_student, …))",
                _soft_variant(probs_input=True),
                "F.kl_div(input, target) expects input = log-probabilities (log_softmax) and, by default, target "
                "= probabilities: KL = Σ target · (log target − input)."),
        Mistake("the cross-entropy with the teacher instead of the KL divergence", _soft_variant(cross_entropy=True),
                "−Σ p_teacher log p_student has the same gradient for the student, but it is larger by the "
                "teacher's entropy, so it is not 0 when the student matches the teacher: subtract "
                "Σ p_teacher log p_teacher."),
        Mistake("the softmax taken over the sequence axis instead of the classes", _soft_variant(dim=1),
                "each token's distribution is over the V classes, the last axis: dim=-1."),
        Mistake("the padding's KL set to 0 but still counted in the mean", _soft_variant(zeroed=True),
                "(kl * keep).mean() divides by every position, the padded ones included: divide the sum by "
                "the number of real tokens (kl[keep].mean())."),
        Mistake("the mask inverted (the padding averaged, the real tokens dropped)", _soft_variant(inverted=True),
                "targets != pad_id is True at the real tokens: those are the ones to keep."),
        Mistake("the padding's KL summed in, then divided by the number of real tokens",
                _soft_variant(pad_summed=True),
                "the numerator must leave the padding out too: sum kl over the kept positions only "
                "(kl[keep].sum() / keep.sum(), i.e. kl[keep].mean())."),
        Mistake("the mean of each sequence's mean instead of the mean over all real tokens",
                _soft_variant(per_sequence=True),
                "every real token counts once, whatever its sequence's length: average over all the kept "
                "tokens of the batch together, kl[keep].mean()."),
        Mistake("the logits multiplied by T instead of divided", _soft_variant(multiply=True),
                "a temperature T > 1 softens a distribution: softmax(logits / T)."),
        Mistake("the hard-label cross-entropy mixed in", _soft_hard_mix,
                "this function is the soft-target term alone: T² · KL(p_teacher ‖ p_student). The chapter's "
                "full distillation loss adds the cross-entropy with the true labels; leave it out here."),
    ]
    return out


def _soft_explain(got, want, student_logits, teacher_logits, targets, temperature, pad_id):
    """Two properties every right answer has, tested on the learner's own function."""
    if isinstance(got, torch.Tensor) and got.shape != want.shape:
        return ("Return the loss as a 0-dim tensor (one number for the whole batch, still a tensor so that it "
                "can be back-propagated)")
    fn = core.graded_function()
    if fn is None:
        return None
    notes = []
    try:
        same = fn(teacher_logits.clone(), teacher_logits.clone(), targets.clone(), temperature, pad_id)
        if abs(float(same)) > 1e-5:
            notes.append("with a student equal to its teacher your loss is not 0, as a KL divergence must be: "
                         "the same temperature on both, and no entropy term")
        pad = targets == pad_id
        if pad.any():
            g = torch.Generator().manual_seed(0)
            junk_s, junk_t = student_logits.clone(), teacher_logits.clone()
            junk_s[pad] = 50 * torch.randn(junk_s[pad].shape, generator=g)
            junk_t[pad] = 50 * torch.randn(junk_t[pad].shape, generator=g)
            a = float(fn(student_logits.clone(), teacher_logits.clone(), targets.clone(), temperature, pad_id))
            b = float(fn(junk_s, junk_t, targets.clone(), temperature, pad_id))
            if abs(a - b) > 1e-5 * (1 + abs(a)):
                notes.append("your loss changes when only the logits at the padding change: the padding must "
                             "count neither in the sum nor in the number of tokens you divide by")
    except Exception:
        return None
    if not notes:
        return ("It is 0 for a student equal to its teacher and ignores the padding, so look at its size: the "
                "factor T², the sum over the classes, the mean over the real tokens")
    msg = "; ".join(notes)
    return msg[0].upper() + msg[1:]


SOFT = Exercise(
    id=f"{CHAPTER}/soft_target_loss",
    title="Find and fix the bugs: the soft-target distillation loss",
    reference=soft_target_loss,
    cases=_soft_cases,
    forbidden=("distillation_loss",),
    forbidden_why="fix the given function itself rather than call the chapter's",
    explain=lambda got, want, *args: _soft_explain(got, want, *args),
    mistakes=_soft_mistakes(),
)


# ============================================================================= 3. int8 quantisation
def quantize_int8(x, symmetric):
    """Per-row int8 quantisation of a (R, C) tensor -> (q int8 (R, C), scale (R, 1), zero_point (R, 1) ints).

    symmetric: scale = max|x| / 127, zero point 0, q in [−127, 127]. asymmetric: the row's range, stretched
    to hold 0, over 255 levels, zero_point = −128 − round(min / scale), q in [−128, 127]. A row whose range
    is 0 (all zeros) gets scale 1. x ≈ (q − zero_point) · scale."""
    if symmetric:
        scale = x.abs().amax(dim=-1, keepdim=True) / 127
        low, high = -127, 127
    else:
        lo = x.amin(dim=-1, keepdim=True).clamp(max=0)  # the range always holds 0
        hi = x.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / 255
        low, high = -128, 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero row
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
    else:
        zero_point = (-128 - torch.round(lo / scale)).to(torch.int32)
    q = torch.clamp(torch.round(x / scale) + zero_point, low, high).to(torch.int8)
    return q, scale, zero_point


def _quant_variant(*, levels=127, abs_max=True, rounding="round", clamp=True, q_int8=True, per="row",
                   zero_guard="one", span=255, hold_zero=True, zp_round=True, zp_sign=1, unsigned=False,
                   always_symmetric=False):
    def quantize(x, symmetric):
        sym = symmetric or always_symmetric
        dims = {"row": dict(dim=-1, keepdim=True), "column": dict(dim=0, keepdim=True), "tensor": {}}[per]
        if sym:
            top = x.abs().amax(**dims) if abs_max else x.amax(**dims)
            scale = top / levels
            low, high = (-128, 127) if levels != 127 else (-127, 127)
        else:
            lo, hi = x.amin(**dims), x.amax(**dims)
            if hold_zero:
                lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = (hi - lo) / span
            low, high = (0, 255) if unsigned else (-128, 127)
        if zero_guard == "one":
            scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        elif zero_guard == "eps":
            scale = scale.clamp(min=torch.finfo(x.dtype).eps)
        if sym:
            zero_point = torch.zeros(scale.shape, dtype=torch.int32)
        else:
            base = 0 if unsigned else -128
            raw = base - lo / scale if zp_sign == 1 else lo / scale - base
            zero_point = torch.round(raw).to(torch.int32) if zp_round else raw
        y = x / scale + zero_point
        y = {"round": torch.round, "floor": torch.floor, "trunc": lambda t: t}[rounding](y)
        if clamp:
            y = torch.clamp(y, low, high)
        q = y.to(torch.uint8 if unsigned else torch.int8) if q_int8 else y
        return q, scale, zero_point

    return quantize


def _quant_cases(g):
    zero_row = _randn(g, 5, 8)
    zero_row[2] = 0.0
    mixed = _randn(g, 4, 9)
    mixed[1] = 0.0
    mixed[3] = -mixed[3].abs() - 0.1  # every number negative
    scales = torch.tensor([1e-3, 0.1, 1.0, 100.0])[:, None]
    return [
        Case("a 4 × 16 weight matrix, symmetric", (_randn(g, 4, 16), True)),
        Case("a 3 × 12 weight matrix, asymmetric", (_randn(g, 3, 12), False)),
        Case("activations after a ReLU (every number >= 0), 3 × 10, asymmetric",
             (_randn(g, 3, 10).abs() + 0.05, False)),
        Case("rows of very different sizes (0.001 to 100), symmetric", (_randn(g, 4, 7) * scales, True)),
        Case("the same kind of rows, asymmetric", (_randn(g, 4, 7) * scales + 0.5 * scales, False)),
        Case("a 5 × 8 matrix with an all-zero row, symmetric", (zero_row, True)),
        Case("a 4 × 9 matrix with an all-zero row and an all-negative row, asymmetric", (mixed, False)),
        Case("a 6 × 5 matrix with one large outlier per row, asymmetric",
             (_randn(g, 6, 5) + 8.0 * torch.eye(6, 5), False)),
    ]


def _quant_judge(got, x, symmetric):
    q, scale, zero_point = got
    if q.dtype != torch.int8:
        return (f"the values of `q` are right, but its dtype is {q.dtype}: store them as torch.int8 "
                "(.to(torch.int8)) — one byte each is the point of int8")
    if zero_point.is_floating_point() or zero_point.dtype == torch.bool:
        return (f"the values of `zero_point` are right, but its dtype is {zero_point.dtype}: a zero point is an "
                "integer (e.g. .to(torch.int32)), so that 0 is exactly a level of the grid")
    if not scale.is_floating_point():
        return f"`scale` has dtype {scale.dtype}: keep it a floating-point tensor, like x"
    return None


def _quant_explain(got, want, x, symmetric):
    if not (isinstance(got, (tuple, list)) and len(got) == 3 and all(isinstance(t, torch.Tensor) for t in got)):
        return "Return a tuple (q, scale, zero_point) of three tensors"
    q, scale, zero_point = got
    R = x.shape[0]
    if tuple(scale.shape) != (R, 1) or tuple(zero_point.shape) != (R, 1):
        return (f"`scale` and `zero_point` hold one number per row, shape (R, 1) = ({R}, 1): reduce over the "
                "last axis with keepdim=True")
    if tuple(q.shape) != tuple(x.shape):
        return f"`q` has one integer per number of x: shape {tuple(x.shape)}"
    if q.double().min() < -128 or q.double().max() > 127:
        return "Some of your q lie outside int8's range [−128, 127]: clamp before converting"
    scale_ok = torch.allclose(scale.double(), want[1].double(), rtol=1e-4, atol=1e-8)
    if not scale_ok:
        return ("Your `scale` is not right: symmetric, max|x| / 127 of each row; asymmetric, (max − min) / 255 of "
                "each row's range stretched to hold 0; 1 for an all-zero row")
    if not torch.equal(zero_point.double(), want[2].double()):
        return "Your `scale` is right, your `zero_point` is not: −128 − round(min / scale) for asymmetric, 0 for symmetric"
    return "Your `scale` and `zero_point` are right, your `q` is not: round(x / scale) + zero_point, then clamp"


QUANT = Exercise(
    id=f"{CHAPTER}/quantize_int8",
    title="Per-row int8 quantisation, symmetric and asymmetric",
    reference=quantize_int8,
    cases=_quant_cases,
    output_names=("q", "scale", "zero_point"),
    atol=1e-6,
    rtol=1e-4,
    judge=_quant_judge,
    explain=_quant_explain,
    forbidden=("torch.quantize_per_channel", "torch.quantize_per_tensor", "torch.fake_quantize_per_channel_affine",
               "torch.fake_quantize_per_tensor_affine", "torch.ao"),
    nan_hint="a row of zeros has max|x| = 0, so x / scale is 0/0: give such a row scale 1",
    mistakes=[
        Mistake("128 levels on each side instead of 127 (symmetric)", _quant_variant(levels=128),
                "symmetric int8 uses [−127, 127], so that +max and −max are both levels: scale = max|x| / 127. "
                "With 128, the largest positive number would need +128, which int8 does not have."),
        Mistake("128 levels on each side and no clamp: +128 wraps around in int8",
                _quant_variant(levels=128, clamp=False),
                "scale = max|x| / 127, and always clamp to the range before .to(torch.int8): out of range, the "
                "conversion does not saturate."),
        Mistake("the asymmetric span, 255 levels, used for the symmetric scale", _quant_variant(levels=255 / 2),
                "symmetric: the range [−max|x|, max|x|] maps onto [−127, 127], so scale = max|x| / 127."),
        Mistake("max(x) instead of max(|x|) for the symmetric scale", _quant_variant(abs_max=False),
                "a row's largest magnitude may be a negative number: scale = x.abs().amax(dim=-1, keepdim=True) / 127."),
        Mistake("no rounding: the conversion to int8 truncates toward 0", _quant_variant(rounding="trunc"),
                ".to(torch.int8) cuts off the fraction (2.9 -> 2, −2.9 -> −2): round first (torch.round), then "
                "clamp, then convert."),
        Mistake("floor instead of round", _quant_variant(rounding="floor"),
                "floor makes every error negative (on average half a level): take the nearest level, torch.round."),
        Mistake("one scale for the whole tensor instead of one per row", _quant_variant(per="tensor"),
                "per row means each row (an output channel) has its own scale and zero point: reduce over the "
                "last axis only, with keepdim=True, giving (R, 1)."),
        Mistake("one scale per column instead of per row", _quant_variant(per="column"),
                "a row is x[i, :]: reduce over the last axis (dim=-1), not the first."),
        Mistake("an all-zero row divided by a zero scale", _quant_variant(zero_guard="none"),
                "a row of zeros has range 0, so x / scale is 0/0 (NaN): give such a row scale 1, as the "
                "statement says (torch.where(scale == 0, 1, scale))."),
        Mistake("a tiny epsilon instead of scale 1 for an all-zero row", _quant_variant(zero_guard="eps"),
                "clamping the scale to an epsilon avoids the 0/0 too, but the statement fixes scale = 1 for a "
                "row whose range is 0."),
        Mistake("256 levels instead of 255 for the asymmetric scale", _quant_variant(span=256),
                "int8 has 256 values, −128 … 127, but 255 steps between the lowest and the highest: "
                "scale = (max − min) / 255."),
        Mistake("the asymmetric range not stretched to hold 0", _quant_variant(hold_zero=False),
                "use min(x_min, 0) and max(x_max, 0): then 0 (a ReLU's zeros, padding) is exactly a level, and the "
                "zero point lies in [−128, 127]."),
        Mistake("the zero point not rounded to an integer", _quant_variant(zp_round=False),
                "the zero point is the integer level that stands for 0: −128 − round(min / scale)."),
        Mistake("the zero point's sign flipped", _quant_variant(zp_sign=-1),
                "the lowest number, min, must land on −128: q = round(x / scale) + zero_point with "
                "zero_point = −128 − round(min / scale) (positive when min < 0)."),
        Mistake("the unsigned range 0 … 255 (uint8) instead of int8's −128 … 127", _quant_variant(unsigned=True),
                "this exercise stores signed int8: the lowest number maps to −128, so zero_point = −128 − "
                "round(min / scale), and q is torch.int8."),
        Mistake("the symmetric formula used in the asymmetric case too", _quant_variant(always_symmetric=True),
                "asymmetric quantisation spends all 256 levels on [min, max] (stretched to hold 0), with a zero "
                "point; symmetric wastes half of them on a row that is all positive."),
    ],
)


# ============================================================================= 4. magnitude pruning
def magnitude_prune_masks(weights, sparsity):
    """Global magnitude pruning: bool masks (True = kept) that zero the round(sparsity · n) weights of
    smallest |w| among all n weights of all the tensors together."""
    flat = torch.cat([w.detach().abs().flatten() for w in weights])  # (n,): every weight, one ranking
    k = round(sparsity * flat.numel())  # how many to prune
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, stable=True)[:k]] = False  # the k smallest magnitudes
    pieces = keep.split([w.numel() for w in weights])
    return [m.reshape(w.shape) for m, w in zip(pieces, weights)]


def _prune_pieces(weights, keep):
    return [m.reshape(w.shape) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


def _prune_by(weights, score, k):
    """Masks that prune the k weights of smallest score (flat, all tensors together)."""
    keep = torch.ones(score.numel(), dtype=torch.bool)
    keep[torch.argsort(score, stable=True)[:k]] = False
    return _prune_pieces(weights, keep)


def _flat(weights):
    return torch.cat([w.detach().flatten() for w in weights])


def _prune_variant(kind):
    """Code for each catalogued slip (BUGGY in the tests); the catalogue matches them by symptom."""
    def masks(weights, sparsity):
        w = _flat(weights)
        n = w.numel()
        k = round(sparsity * n)
        if kind == "largest":
            return _prune_by(weights, -w.abs(), k)
        if kind == "signed":
            return _prune_by(weights, w, k)
        if kind == "density":
            return _prune_by(weights, w.abs(), n - k)
        if kind == "inverted":
            return [~m for m in _prune_by(weights, w.abs(), k)]
        if kind == "per_tensor":
            return [_prune_by([t], t.detach().abs().flatten(), round(sparsity * t.numel()))[0] for t in weights]
        if kind == "truncated":
            return _prune_by(weights, w.abs(), int(sparsity * n))
        if kind == "off_by_one":
            return _prune_by(weights, w.abs(), min(k + 1, n))
        if kind == "ties":
            if k == 0:
                return [torch.ones_like(t, dtype=torch.bool) for t in weights]
            threshold = w.abs().kthvalue(k).values
            return _prune_pieces(weights, w.abs() > threshold)
        if kind == "float":
            return [m.float() for m in _prune_by(weights, w.abs(), k)]
        if kind == "weights":
            return [t * m for t, m in zip(weights, _prune_by(weights, w.abs(), k))]
        raise ValueError(kind)

    return masks


def _as_masks(got, weights):
    """The learner's masks as flat bool 'kept' vector, or None if they are not a list of masks of the shapes."""
    if not isinstance(got, (list, tuple)) or len(got) != len(weights):
        return None
    if not all(isinstance(m, torch.Tensor) and m.shape == w.shape for m, w in zip(got, weights)):
        return None
    return torch.cat([m.flatten() for m in got])


def _ranked(kept, score):
    """Every pruned weight has a score <= every kept one."""
    if kept.all() or not kept.any():
        return True
    return bool(score[~kept].max() <= score[kept].min())


def _prune_symptom(kind):
    """A probe: does the learner's result show this slip's symptom on this case?"""
    def probe(weights, sparsity):
        w = _flat(weights)
        n = w.numel()
        k = round(sparsity * n)

        def test(got):
            flat = _as_masks(got, weights)
            if flat is None:
                return False
            if kind == "float":
                return flat.is_floating_point() and flat.ne(0).sum() == n - k and _ranked(flat.ne(0), w.abs())
            if kind == "weights":
                return (flat.is_floating_point() and bool(((flat == 0) | (flat == w)).all())
                        and flat.eq(0).sum() == max(k, int(w.eq(0).sum())) and _ranked(flat.ne(0), w.abs()))
            if flat.dtype != torch.bool:
                return False
            pruned = int((~flat).sum())
            if kind == "largest":
                return pruned == k and _ranked(flat, -w.abs())
            if kind == "signed":
                return pruned == k and _ranked(flat, w)
            if kind == "density":
                return pruned == n - k and _ranked(flat, w.abs())
            if kind == "inverted":
                return int(flat.sum()) == k and _ranked(~flat, w.abs())
            if kind == "per_tensor":
                return all(int((~m).sum()) == round(sparsity * t.numel())
                           and _ranked(m.flatten(), t.detach().abs().flatten()) for m, t in zip(got, weights))
            if kind == "truncated":
                return pruned == int(sparsity * n) and _ranked(flat, w.abs())
            if kind == "off_by_one":  # (on some case: pruning k ± 1 is impossible at k = 0 or n)
                return abs(pruned - k) <= 1 and _ranked(flat, w.abs())
            if kind == "ties":  # a wrong count only where the k-th smallest |w| is shared
                if pruned == k or k == 0:
                    return _ranked(flat, w.abs())
                at = w.abs().sort().values[k - 1]
                tied = w.abs() == at
                return int(tied.sum()) > 1 and _ranked(flat, w.abs()) and bool(
                    flat[tied].all() or (~flat[tied]).all())
            raise ValueError(kind)

        return Probe(test)

    return probe


def _prune_cases(g):
    def layer(*shape, std):
        return _randn(g, *shape, scale=std)

    grid = torch.randint(-3, 4, (40,), generator=g).float() * 0.25  # quantised weights: many equal |w|
    return [
        Case("three tensors of different scales (a 6 × 8 matrix, 8 biases, a 4 × 6 matrix), sparsity 0.5",
             ([layer(6, 8, std=0.5), layer(8, std=0.05), layer(4, 6, std=2.0)], 0.5)),
        Case("one 10 × 10 matrix, sparsity 0.9", ([layer(10, 10, std=1.0)], 0.9)),
        Case("two tensors, 54 weights in all, sparsity 0.37 (0.37 · 54 = 19.98 is not a whole number)",
             ([layer(5, 6, std=1.0), layer(24, std=0.3)], 0.37)),
        Case("weights on a coarse grid, as after quantisation: many equal magnitudes, sparsity 0.3",
             ([grid[:24].reshape(4, 6), grid[24:]], 0.3)),
        Case("a convolution kernel (4, 2, 3, 3) and its 4 biases, sparsity 0.75",
             ([layer(4, 2, 3, 3, std=0.2), layer(4, std=0.01)], 0.75)),
        Case("five bias vectors of 6 weights each, sparsity 0.37 (2.22 per vector, 11.1 in all)",
             ([layer(6, std=0.1 * (i + 1)) for i in range(5)], 0.37)),
        Case("sparsity 0: nothing is pruned", ([layer(3, 4, std=1.0), layer(5, std=1.0)], 0.0)),
        Case("sparsity 1: everything is pruned", ([layer(2, 3, std=1.0)], 1.0)),
    ]


def _prune_judge(got, weights, sparsity):
    if not isinstance(got, (list, tuple)):
        return f"your result is {core._describe(got)}; return a list with one mask per tensor"
    if len(got) != len(weights):
        return f"your list holds {len(got)} masks for {len(weights)} tensors: one mask per tensor"
    for i, (m, w) in enumerate(zip(got, weights)):
        if not isinstance(m, torch.Tensor):
            return f"mask {i} is {core._describe(m)}; every mask is a torch.Tensor"
        if m.shape != w.shape:
            return f"mask {i} has shape {tuple(m.shape)}; a mask has the shape of its tensor, {tuple(w.shape)}"
        if m.dtype != torch.bool:
            return f"mask {i} has dtype {m.dtype}: masks are bool, True where a weight is kept"
    flat, w = torch.cat([m.flatten() for m in got]), _flat(weights)
    n, k, pruned = w.numel(), round(sparsity * w.numel()), int((~flat).sum())
    if pruned != k:
        return (f"your masks prune {pruned} of the {n} weights: too {'many' if pruned > k else 'few'} — "
                "sparsity s asks for exactly round(s · n) of them, ties at the threshold included")
    if not _ranked(flat, w.abs()):
        return ("your masks prune the right number of weights, but some pruned weight has a larger |w| than a kept "
                "one: prune the smallest magnitudes, ranked across all the tensors together")
    return None


PRUNE_KINDS = {
    "largest": ("the largest weights pruned instead of the smallest",
                "magnitude pruning drops the weights that matter least: the smallest |w|."),
    "signed": ("the signed values ranked instead of the magnitudes",
               "−3 is a large weight: rank by w.abs(), not w, or every negative weight goes first."),
    "density": ("sparsity and density swapped",
                "sparsity is the fraction set to ZERO: prune round(sparsity · n) weights and keep the rest."),
    "inverted": ("the masks inverted (True where a weight is pruned)",
                 "a mask is multiplied with the weights: True (1) keeps a weight, False (0) zeroes it."),
    "per_tensor": ("each tensor pruned at the sparsity on its own, not one global ranking",
                   "global pruning ranks all the weights of all the tensors together: a tensor of small weights "
                   "loses more of them than one of large weights. Concatenate the flattened |w| first."),
    "truncated": ("the count truncated with int() instead of rounded",
                  "int(0.37 · 54) = int(19.98) = 19: the statement asks for round(sparsity · n)."),
    "off_by_one": ("one weight too many or too few pruned",
                   "prune exactly k = round(sparsity · n) weights: the k smallest, i.e. order[:k] of the sorted "
                   "magnitudes — check slicing and kthvalue's 1-based k."),
    "ties": ("a threshold comparison: the weights tied with the threshold all pruned or all kept",
             "|w| > threshold (or >=) gets the count wrong when several weights share the threshold's magnitude, "
             "as quantised weights do: rank with argsort and prune exactly the first k."),
    "weights": ("the pruned weights returned instead of the masks",
                "return the masks themselves (bool, True = kept); the caller multiplies w * mask."),
    "float": ("masks of 1.0 and 0.0 instead of bool",
              "the pattern is right; return bool masks (True = kept), e.g. a comparison or torch.ones(..., "
              "dtype=torch.bool)."),
}

PRUNE = Exercise(
    id=f"{CHAPTER}/magnitude_prune_masks",
    title="Global magnitude pruning at a given sparsity",
    reference=None,
    cases=_prune_cases,
    judge=_prune_judge,
    forbidden=("torch.nn.utils.prune", "torch.nn.utils.prune.global_unstructured",
               "torch.nn.utils.prune.l1_unstructured"),
    forbidden_why="rank the magnitudes yourself",
    mistakes=[Mistake(name, _prune_symptom(kind), hint) for kind, (name, hint) in PRUNE_KINDS.items()],
)


# ============================================================================= 5. plan a key/value cache
def kv_cache_plan(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    """Bytes one token adds to the cache (K and V, every layer, one sequence), and the longest length all
    `batch` sequences can reach together within memory_bytes."""
    per_token = 2 * n_layers * n_kv_heads * head_dim * dtype.itemsize  # K and V: only the key/value heads
    return {"bytes_per_token": per_token, "max_tokens": memory_bytes // (batch * per_token)}


def _plan(n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes, slip=None):
    kv = 1 if slip == "keys_only" else 2
    heads = n_heads if slip == "query_heads" else n_kv_heads
    width = n_heads * head_dim if slip == "d_model_per_head" else head_dim
    size = {"bits": 8 * dtype.itemsize, "float32": 4, "float16": 2}.get(slip, dtype.itemsize)
    layers = 1 if slip == "one_layer" else n_layers
    per_token = kv * layers * heads * width * size
    reported = per_token * batch if slip == "batch_in_token" else per_token
    if slip == "no_batch":
        tokens = memory_bytes // per_token
    elif slip == "ceil":
        tokens = -(-memory_bytes // (batch * per_token))
    elif slip == "batch_in_token":
        tokens = memory_bytes // (batch * reported)
    else:
        tokens = memory_bytes // (batch * per_token)
    return {"bytes_per_token": reported, "max_tokens": tokens}


_PLAN_KEYS = ("bytes_per_token", "max_tokens")
GiB = 2 ** 30


def _plan_cases(g):
    return [
        Case("SmolLM2-135M: 30 layers, 9 query heads, 3 key/value heads of 64, bfloat16, 8 sequences, 2 GiB",
             (30, 9, 3, 64, torch.bfloat16, 8, 2 * GiB)),
        Case("a LLaMA-2-7B-like model (no grouping): 32 layers, 32 heads of 128, float16, 4 sequences, 66 GiB",
             (32, 32, 32, 128, torch.float16, 4, 66 * GiB)),
        Case("a Mistral-7B-like model: 32 layers, 32 query heads, 8 key/value heads of 128, bfloat16, "
             "16 sequences, 64 GiB", (32, 32, 8, 128, torch.bfloat16, 16, 64 * GiB)),
        Case("multi-query attention (a Falcon-7B-like model): 32 layers, 71 query heads, 1 key/value head of 64, "
             "float16, 32 sequences, 24 GiB", (32, 71, 1, 64, torch.float16, 32, 24 * GiB)),
        Case("a LLaMA-2-70B-like model with a float8 cache: 80 layers, 64 query heads, 8 key/value heads of 128, "
             "8 sequences, 60 GiB", (80, 64, 8, 128, torch.float8_e4m3fn, 8, 60 * GiB)),
        Case("SmolLM2-135M with an int8 cache, one sequence, 512 MiB", (30, 9, 3, 64, torch.int8, 1, 512 * 2 ** 20)),
        Case("a small float32 model: 6 layers, 8 heads of 64, 2 sequences, 100,000,000 bytes",
             (6, 8, 8, 64, torch.float32, 2, 100_000_000)),
    ]


def _plan_judge(got, *args):
    if not isinstance(got, Mapping):
        return f"your result is {core._describe(got)}; return a dict with the keys {', '.join(map(repr, _PLAN_KEYS))}"
    if set(got) != set(_PLAN_KEYS):
        return f"use exactly the keys {', '.join(map(repr, _PLAN_KEYS))} (yours: {sorted(map(str, got))})"
    not_int = [k for k in _PLAN_KEYS if not isinstance(got[k], int) or isinstance(got[k], bool)]
    if not_int:
        return (f"every value must be a Python int, an exact count: `{not_int[0]}` is "
                f"{core._describe(got[not_int[0]])} (use // and int(...))")
    return None


def _factor(got, want):
    """n > 1 if got = n · want or want = n · got for a whole n, else None."""
    if got <= 0 or want <= 0:
        return None
    big, small = max(got, want), min(got, want)
    return big // small if big % small == 0 and big > small else None


def _plan_explain(got, want, n_layers, n_heads, n_kv_heads, head_dim, dtype, batch, memory_bytes):
    verdict = _plan_judge(got)
    if verdict:
        return verdict[0].upper() + verdict[1:]
    # the quantities a factor may come from, to name the ones it matches
    suspects = [(2, "keys and values: 2"), (8, "bits against bytes: 8"), (batch, f"the batch: {batch}"),
                (n_layers, f"the layers: {n_layers}"), (n_kv_heads, f"the key/value heads: {n_kv_heads}"),
                (n_heads // n_kv_heads, f"query heads per key/value head: {n_heads // n_kv_heads}"),
                (head_dim, f"head_dim: {head_dim}"), (dtype.itemsize, f"bytes per number: {dtype.itemsize}")]
    said = []
    for k in _PLAN_KEYS:
        if got[k] == want[k]:
            continue
        how = f"`{k}` is too {'large' if got[k] > want[k] else 'small'}"
        n = _factor(got[k], want[k])
        if n:
            named = [why for value, why in suspects if value == n and value > 1]
            how += f", by a factor of {n}" + (f" (check {' or '.join(named)})" if named else "")
        said.append(how)
    right = [f"`{k}`" for k in _PLAN_KEYS if got[k] == want[k]]
    msg = "; ".join(said) + (f"; {', '.join(right)} is right" if right else "")
    if right == ["`max_tokens`"]:
        msg += (": so only how you report bytes_per_token is off — it counts bytes (not bits, not KiB) for one "
                "token of ONE sequence, over all layers")
    if right == ["`bytes_per_token`"]:
        msg += (": max_tokens is memory_bytes // (batch · bytes_per_token), with memory_bytes in bytes as "
                "given, rounded down")
    return msg[0].upper() + msg[1:]


PLAN_SLIPS = {
    "keys_only": ("the values forgotten (keys only)",
                  "the cache keeps a key AND a value vector per token, head and layer: the factor 2."),
    "query_heads": ("the query heads counted instead of the key/value heads",
                    "with grouped-query (or multi-query) attention only the n_kv_heads key/value heads are cached; "
                    "the query heads share them."),
    "d_model_per_head": ("d_model per key/value head instead of head_dim",
                         "each key/value head stores head_dim numbers per token; d_model = n_heads · head_dim is the "
                         "width of all the query heads together."),
    "bits": ("bits instead of bytes", "dtype.itemsize is in bytes (2 for bfloat16); torch.finfo(dtype).bits is 8 times more."),
    "float32": ("4 bytes per number whatever the dtype",
                "the cache stores numbers in the given dtype: dtype.itemsize bytes each (1, 2 or 4)."),
    "float16": ("2 bytes per number whatever the dtype",
                "the cache stores numbers in the given dtype: dtype.itemsize bytes each (1 for int8 and float8, "
                "4 for float32)."),
    "one_layer": ("one layer only", "every layer keeps its own keys and values: multiply by n_layers."),
    "no_batch": ("the batch left out of max_tokens",
                 "all `batch` sequences grow together: each token position costs batch · bytes_per_token."),
    "batch_in_token": ("bytes_per_token given for the whole batch",
                       "bytes_per_token is for ONE sequence's token; the batch comes in only for max_tokens."),
    "ceil": ("max_tokens rounded up", "the last, partial token does not fit: round down (integer division //)."),
}


def _plan_slip(slip):
    return lambda *args: _plan(*args, slip=slip)


PLAN = Exercise(
    id=f"{CHAPTER}/kv_cache_plan",
    title="Plan a key/value cache: bytes per token and the longest context that fits",
    reference=kv_cache_plan,
    cases=_plan_cases,
    atol=0.0,
    rtol=0.0,
    judge=_plan_judge,
    explain=_plan_explain,
    mistakes=[Mistake(name, _plan_slip(slip), hint) for slip, (name, hint) in PLAN_SLIPS.items()],
)

EXERCISES = [FLASH, SOFT, QUANT, PRUNE, PLAN]
