"""Graded exercises of chapter 06 — positional encoding: references, seeded cases, classic mistakes.

The chapter prints ``sinusoidal_positional_encoding``, ``offset_matrix``, ``apply_rope`` and
``alibi_bias`` line for line, so none of them is an exercise: these make the learner derive, debug
and extend instead — read a position back from its sinusoidal encoding (the clock hands), fix a
RoPE attention step that decodes with a key/value cache, reorder a checkpoint's W_Q/W_K rows from
the interleaved to the "rotate half" layout, and stretch RoPE to a longer context (position
interpolation and NTK-aware scaling, whose base the learner derives).
"""
from __future__ import annotations

import math

import torch

from book.grader.core import Case, Exercise, Mistake, bug_combinations
from book.positional import apply_rope

CHAPTER = "06_positional_encoding"
BASE = 10000.0


def _randn(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _rotate(x, positions, base=BASE, direction=1.0, layout="interleaved", two_i_of=lambda two_i: two_i):
    """RoPE written out, with the knobs the mistakes turn (angles in float64, result in x's dtype)."""
    d = x.size(-1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)
    theta = base ** (-two_i_of(two_i) / d)
    angle = direction * torch.as_tensor(positions, dtype=torch.float64)[..., None] * theta
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    if layout == "half":
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- 1. read the clock hands
def position_from_encoding(pe: torch.Tensor) -> torch.Tensor:
    """(..., d_model) rows of the sinusoidal table (base 10000) -> (...) their positions, whole
    numbers. The slowest pair (features d-2, d-1) has not turned a full circle yet, so its angle,
    atan2(sin, cos) taken in [0, 2π), divided by its frequency, is the position."""
    d = pe.size(-1)
    omega = BASE ** (-(d - 2) / d)  # the slowest pair's frequency
    angle = torch.remainder(torch.atan2(pe[..., d - 2], pe[..., d - 1]), 2 * math.pi)  # [0, 2π)
    return (angle / omega).round().long()


def _pe_rows(positions, d):
    """The rows of sinusoidal_positional_encoding(·, d) at these (integer) positions, float32."""
    two_i = torch.arange(0, d, 2, dtype=torch.float32)
    angle = positions.float()[..., None] / BASE ** (two_i / d)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)


def _read_cases(g):
    def case(name, positions, d):
        return Case(name, (_pe_rows(positions, d),))

    return [
        case("d_model = 16, 12 positions in random order, all below 5000", torch.randint(0, 5000, (12,), generator=g),
             16),
        case("d_model = 4, 20 positions in random order below 620 (past half a turn of the slowest pair)",
             torch.randint(0, 620, (20,), generator=g), 4),
        case("d_model = 8, positions 1000 … 1011 (as when decoding with a cache)", torch.arange(1000, 1012), 8),
        case("d_model = 2 (a single pair), positions 0 … 6 in random order", torch.randperm(7, generator=g), 2),
        case("a batch of shape (3, 5, 64), positions below 20000", torch.randint(0, 20000, (3, 5), generator=g), 64),
        case("a single vector of shape (32,) (no batch axis)", torch.tensor(777), 32),
    ]


def _read_variant(pair="slowest", fn="atan2", wrap=True, omega="2i", multiply=False, rounding="round",
                  period=2 * math.pi):
    def read(pe):
        d = pe.size(-1)
        j = 0 if pair == "fastest" else d - 2  # the even feature of the pair used
        s, c = pe[..., j], pe[..., j + 1]
        if fn == "atan2":
            a = torch.atan2(s, c)
        elif fn == "swapped":
            a = torch.atan2(c, s)
        elif fn == "acos":
            a = torch.acos(c.clamp(-1, 1))
        elif fn == "atan":
            a = torch.atan(s / c)
        else:  # "asin"
            a = torch.asin(s.clamp(-1, 1))
        if wrap:
            a = torch.remainder(a, period)
        w = {"2i": BASE ** (-j / d), "i": BASE ** (-(j // 2) / d), "odd": BASE ** (-(j + 1) / d),
             "last": 1 / BASE}[omega]
        p = a * w if multiply else a / w
        return p.floor() if rounding == "floor" else p.round()

    return read


def _explain_read(got, want, pe):
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    g, w = got.detach().double(), want.double()
    if not torch.isfinite(g).all():
        return None
    if (g - g.round()).abs().max() > 1e-6 and (g - w).abs().max() < 0.5:
        return ("Your positions are close but not whole numbers: round them to the nearest integer "
                "(.round(); floor would turn 11.9998 into 11)")
    wrong = int((g - w).abs().gt(0.5).sum())
    if (g - g.round()).abs().max() <= 1e-6 and ((w - g) >= 0).all() and ((w - g) <= 1).all():
        return (f"{wrong} of {w.numel()} positions are one too small, the others right: you rounded down "
                "(floor, or .long() / int(), which cut off the fraction); round to the nearest whole number")
    if (g < 0).any():
        return (f"{wrong} of {w.numel()} positions are wrong, some of them negative: positions are never "
                "negative, so look at the range your angles lie in")
    return (f"{wrong} of {w.numel()} positions are wrong: check which pair you read, which feature holds the sine "
            "and which the cosine, and that pair's frequency")


READ = Exercise(
    id=f"{CHAPTER}/position_from_encoding",
    title="Read the position back from its encoding",
    reference=position_from_encoding,
    cases=_read_cases,
    atol=1e-6,
    rtol=0.0,
    explain=_explain_read,
    mistakes=[
        Mistake("sine and cosine swapped (atan2(cos, sin))", _read_variant(fn="swapped"),
                "torch.atan2(y, x) is the angle of the point (x, y), with y the sine: the sine of a pair sits at "
                "its even feature, the cosine at its odd one."),
        Mistake("the fastest pair read (features 0 and 1): positions only modulo 2π", _read_variant(pair="fastest"),
                "pair 0 turns by 1 radian per position, so it has gone round many times: its angle gives the "
                "position only up to multiples of 2π ≈ 6.28. Which pair has not completed a turn yet?"),
        Mistake("the angles not wrapped into [0, 2π) (atan2 returns (−π, π])", _read_variant(wrap=False),
                "past half a turn atan2 returns a negative angle: add 2π to those (torch.remainder(a, 2 * math.pi))."),
        Mistake("the angle taken with acos of the cosine alone", _read_variant(fn="acos"),
                "acos only returns angles in [0, π]: past half a turn two positions have the same cosine, and only "
                "the sign of the sine tells them apart. Use both: torch.atan2(sin, cos)."),
        Mistake("the angle taken with atan(sin / cos)", _read_variant(fn="atan"),
                "atan only returns angles in (−π/2, π/2): sin/cos loses which quadrant the point is in. "
                "torch.atan2(sin, cos) keeps the signs of both."),
        Mistake("the angles wrapped modulo π instead of 2π", _read_variant(period=math.pi),
                "one full turn is 2π: bring the angles into [0, 2π)."),
        Mistake("the angle taken with asin of the sine alone", _read_variant(fn="asin", wrap=False),
                "asin only returns angles in [−π/2, π/2]: use the sine and the cosine together, torch.atan2(sin, cos)."),
        Mistake("the slowest pair's frequency 10000^(−i/d) (pair index i instead of the even feature 2i)",
                _read_variant(omega="i"),
                "the pair on features (2i, 2i+1) turns at ω_i = 10000^(−2i/d): for the last pair the exponent "
                "uses its even feature d − 2, not d/2 − 1."),
        Mistake("the slowest pair's frequency 10000^(−(d−1)/d) (from its odd feature)", _read_variant(omega="odd"),
                "both features of a pair share one frequency, the one of the even feature: for the last pair "
                "10000^(−(d−2)/d)."),
        Mistake("the frequency 1/10000 (as if there were a pair d/2)", _read_variant(omega="last"),
                "the last pair is i = d/2 − 1 (features d − 2 and d − 1): its frequency is 10000^(−(d−2)/d), "
                "a little faster than 1/10000."),
        Mistake("the angle multiplied by the frequency instead of divided", _read_variant(multiply=True),
                "the angle is position × ω, so the position is angle / ω."),
        Mistake("positions rounded down (floor) instead of to the nearest whole number",
                _read_variant(rounding="floor"),
                "float rounding puts the raw value a hair above or below the true position (11.9998 or 12.0003): "
                "round to the nearest integer."),
    ],
)


# ----------------------------------------------------------------------------- 2. find and fix the bugs
def rope_decode_step(q, k, v, k_cache, v_cache):
    """One decoding step of RoPE attention with a key/value cache.

    q, k, v: (B, h, T_new, d) the new tokens' projections, not yet rotated; k_cache, v_cache:
    (B, h, T_past, d) from earlier steps (keys already rotated at positions 0 … T_past − 1).
    The new tokens stand at positions T_past … T_past + T_new − 1; causal attention over all
    T = T_past + T_new keys. Returns output (B, h, T_new, d), weights (B, h, T_new, T) and the
    updated cache k_cache, v_cache (B, h, T, d), every key rotated at its own position.
    """
    T_past, T_new = k_cache.size(-2), q.size(-2)
    pos = torch.arange(T_past, T_past + T_new, device=q.device)  # the new tokens' positions
    q, k = apply_rope(q, pos), apply_rope(k, pos)
    k_all, v_all = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, T_new, T)
    allowed = torch.arange(T_past + T_new, device=q.device)[None, :] <= pos[:, None]
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return weights @ v_all, weights, k_all, v_all


BUGS = {  # the three bugs of the notebook's buggy_rope_decode_step
    "positions": ("the new tokens rotated as if they stood at positions 0, 1, …",
                  "the cache already holds T_past tokens: the new ones stand at positions T_past, T_past + 1, …; "
                  "rotate their queries and keys there, or their offsets to the cached keys are wrong."),
    "values": ("the values rotated too",
               "RoPE turns what is compared — queries and keys — and nothing else: the values are mixed as they are "
               "(and stored in the cache as they are)."),
    "freq": ("the frequencies θ_i = 10000^(−i/d) (the pair index i instead of the even feature 2i)",
             "pair i on features (2i, 2i+1) turns at θ_i = 10000^(−2i/d), the sinusoidal encoding's frequencies: "
             "the exponent steps through 0, 2, 4, … (torch.arange(0, d, 2))."),
}


def _decode_variant(bugs=(), mask="causal", scale="sqrt", direction=1.0, layout="interleaved",
                    rotate_cache=False, cache_raw_keys=False, rotate_q=True, rotate_k=True, order="cache_first",
                    shift=0, doubled=False):
    def step(q, k, v, k_cache, v_cache):
        T_past, T_new, d = k_cache.size(-2), q.size(-2), q.size(-1)
        new = torch.arange(T_new) + (0 if "positions" in bugs else T_past) + shift
        freq = (lambda two_i: two_i / 2) if "freq" in bugs else (lambda two_i: 2 * two_i if doubled else two_i)

        def rot(x, p):
            return _rotate(x, p, direction=direction, layout=layout, two_i_of=freq)

        q_r = rot(q, new) if rotate_q else q
        k_r = rot(k, new) if rotate_k else k
        v_r = rot(v, new) if "values" in bugs else v
        if rotate_cache:  # the whole key sequence rotated once more after the concatenation
            k_all = rot(torch.cat([k_cache, k], dim=-2), torch.arange(T_past + T_new))
        elif order == "new_first":
            k_all = torch.cat([k_r, k_cache], dim=-2)
        else:
            k_all = torch.cat([k_cache, k_r], dim=-2)
        v_all = torch.cat([v_r, v_cache] if order == "new_first" else [v_cache, v_r], dim=-2)
        scores = q_r @ k_all.transpose(-2, -1) / {"sqrt": math.sqrt(d), "d": d, "none": 1.0}[scale]
        keys = torch.arange(T_past + T_new)
        if mask != "none":
            seen = {"top_left": torch.arange(T_new), "causal": torch.arange(T_past, T_past + T_new),
                    "double_shift": 2 * T_past + torch.arange(T_new),
                    "strict": torch.arange(T_past, T_past + T_new) - 1}[mask]
            allowed = keys[None, :] <= seen[:, None]
            scores = scores.masked_fill(~allowed, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        stored = torch.cat([k_cache, k], dim=-2) if cache_raw_keys else k_all
        return weights @ v_all, weights, stored, v_all

    return step


def _decode_case(g, name, B, h, T_past, T_new, d):
    past = _randn(g, B, h, T_past, d)
    k_cache = apply_rope(past, torch.arange(T_past))  # what earlier steps stored: rotated keys
    return Case(name, (_randn(g, B, h, T_new, d), _randn(g, B, h, T_new, d), _randn(g, B, h, T_new, d),
                       k_cache, _randn(g, B, h, T_past, d)))


def _decode_cases(g):
    return [
        _decode_case(g, "one new token after 6 cached ones, B=2, h=2, d=8", 2, 2, 6, 1, 8),
        _decode_case(g, "the first step: an empty cache (T_past = 0), 5 new tokens, B=1, h=2, d=8", 1, 2, 0, 5, 8),
        _decode_case(g, "a chunk of 3 new tokens after 5 cached ones, B=2, h=3, d=16", 2, 3, 5, 3, 16),
        _decode_case(g, "d = 2 (a single pair), 2 new tokens after 4 cached ones, B=3, h=1", 3, 1, 4, 2, 2),
        _decode_case(g, "one new token after 11 cached ones, B=1, h=4, d=32", 1, 4, 11, 1, 32),
        _decode_case(g, "4 new tokens after 8 cached ones, B=2, h=2, d=4", 2, 2, 8, 4, 4),
    ]


def _bug_mistakes():
    return bug_combinations(BUGS, lambda combo: _decode_variant(bugs=combo),
                            ("it runs and has the right shapes, but compare it with apply_rope and the chapter's "
                             "attention on the same inputs: look at the positions, at what gets rotated, at θ_i."))


def _explain_decode(got, want, *args):
    if not isinstance(got, (tuple, list)) or len(got) != 4:
        return None
    names = ("output", "weights", "k_cache", "v_cache")
    try:
        same = [isinstance(g, torch.Tensor) and g.shape == w.shape and torch.allclose(g.double(), w.double(),
                                                                                     atol=1e-5, rtol=1e-4)
                for g, w in zip(got, want)]
    except RuntimeError:
        return None
    w_got, w_want = got[1], want[1]
    if isinstance(w_got, torch.Tensor) and w_got.shape == w_want.shape and ((w_want == 0) & (w_got.abs() > 1e-6)).any():
        return ("Some new token gives weight to a key that comes after its own position: the new tokens are "
                "the last ones of the sequence, so query t may see keys 0 … T_past + t")
    if same[1] and not same[0]:
        return "The weights are right but the output is not: look at what is done to the values"
    if same[0] and same[1]:
        wrong = [n for n, ok in zip(names, same) if not ok]
        return (f"The output and the weights are right, but {' and '.join(wrong)} is not what the next step needs: "
                "the cache must hold every key rotated at its own position, and the values as they are")
    return ("The weights are wrong, so the scores are: check at which positions the new queries and keys are "
            "rotated, the frequencies θ_i, and what happens to the keys already in the cache")


DECODE = Exercise(
    id=f"{CHAPTER}/rope_decode_step",
    title="Find and fix the bugs: a RoPE decoding step with a key/value cache",
    reference=rope_decode_step,
    cases=_decode_cases,
    output_names=("output", "weights", "k_cache", "v_cache"),
    atol=1e-5,
    rtol=1e-4,
    explain=_explain_decode,
    nan_hint="a query row whose mask allows no key gives 0/0: which keys may the newest tokens see?",
    forbidden=("apply_rope", "RotaryEmbedding"),
    forbidden_why="fix the given function itself rather than call the chapter's finished RoPE (you may compare "
                  "with it outside your function)",
    mistakes=_bug_mistakes() + [
        Mistake("the cached keys rotated a second time", _decode_variant(rotate_cache=True),
                "the keys in k_cache were rotated when they were new: rotate only the new keys, then concatenate. "
                "Rotating the whole sequence again turns the old keys twice."),
        Mistake("the cache updated with the keys before their rotation", _decode_variant(cache_raw_keys=True),
                "the next step expects every key in k_cache already rotated at its position: store the rotated "
                "new keys."),
        Mistake("the queries not rotated", _decode_variant(rotate_q=False),
                "RoPE turns both sides of each score: the queries at their positions as well as the keys."),
        Mistake("the new keys not rotated", _decode_variant(rotate_k=False),
                "the new keys must be turned at their positions too, before they are compared and stored."),
        Mistake("the causal mask aligned to the top left (query t sees keys 0 … t)", _decode_variant(mask="top_left"),
                "with a cache, query t is the token at position T_past + t: it may see keys 0 … T_past + t."),
        Mistake("the positions fixed but T_past still added in the mask (the new tokens see later ones)",
                _decode_variant(mask="double_shift"),
                "once the new positions start at T_past, compare the keys with them directly: key j is allowed for "
                "the query at position p when j <= p; adding T_past again lets a chunk see its own future."),
        Mistake("no causal mask", _decode_variant(mask="none"),
                "a chunk of new tokens must not see the ones after it: mask keys j > T_past + t with -inf."),
        Mistake("a rotation the wrong way round (angle −pos·θ)", _decode_variant(direction=-1.0),
                "the chapter's rotation is counter-clockwise: (a, b) -> (a·cos − b·sin, a·sin + b·cos)."),
        Mistake("pairs (i, i + d/2) ('rotate half') instead of neighbours (2i, 2i+1)", _decode_variant(layout="half"),
                "the cache was filled with the chapter's layout: neighbouring features x[..., 0::2] and x[..., 1::2] "
                "form the pairs."),
        Mistake("the scores divided by d instead of √d", _decode_variant(scale="d"),
                "scaled dot-product attention divides by math.sqrt(d)."),
        Mistake("the scores not scaled by 1/√d", _decode_variant(scale="none"),
                "scaled dot-product attention divides the scores by math.sqrt(d) before the softmax."),
        Mistake("the new tokens one position too far (T_past + 1, T_past + 2, …)", _decode_variant(shift=1),
                "positions count from 0: the cache holds positions 0 … T_past − 1, so the first new token is at "
                "position T_past."),
        Mistake("the new tokens one position too early (T_past − 1, T_past, …)", _decode_variant(shift=-1),
                "the cache holds positions 0 … T_past − 1, so the first new token is at position T_past "
                "(k_cache.size(-2))."),
        Mistake("the even index doubled (θ_i = 10000^(−4i/d))", _decode_variant(doubled=True),
                "torch.arange(0, d, 2) already *is* 2i = 0, 2, 4, …: θ = 10000 ** (-torch.arange(0, d, 2) / d)."),
        Mistake("the mask hiding each token from itself (j < p instead of j <= p)", _decode_variant(mask="strict"),
                "a token may attend to itself: key j is allowed for the query at position p when j <= p."),
        Mistake("the new keys and values put before the cached ones", _decode_variant(order="new_first"),
                "keys stay in position order: torch.cat([k_cache, k_new], dim=-2), the same for the values."),
    ],
)


# ----------------------------------------------------------------------------- 3. interleaved -> rotate half
def rope_rows_to_half_layout(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows of W_Q or W_K (num_heads·d_k, …), or of their bias, reordered head by head so that a
    model with "half" RoPE gives the scores an interleaved-RoPE model gives: within each head, the
    even rows 0, 2, 4, … first, then the odd rows 1, 3, 5, …"""
    d_k = w.size(0) // num_heads
    return w.unflatten(0, (num_heads, d_k // 2, 2)).transpose(1, 2).flatten(0, 2)


def _rows_variant(per_head=True, inverse=False, odd_first=False, columns=False, unchanged=False):
    def reorder(w, num_heads):
        if unchanged:
            return w.clone()
        R = w.size(0)
        h = num_heads if per_head else 1
        d_k = R // h
        if inverse:  # half -> interleaved: row 2i <- i, row 2i+1 <- d_k/2 + i
            idx = torch.arange(d_k).view(2, d_k // 2).T.flatten()
        else:
            idx = torch.cat([torch.arange(1, d_k, 2), torch.arange(0, d_k, 2)] if odd_first
                            else [torch.arange(0, d_k, 2), torch.arange(1, d_k, 2)])
        perm = (torch.arange(h)[:, None] * d_k + idx[None, :]).flatten()
        return w[..., perm] if columns else w[perm]

    return reorder


def _rows_cases(g):
    return [
        Case("W_Q of a 2-head model, d_model = 8: w (8, 8)", (_randn(g, 8, 8), 2)),
        Case("W_K with 2 key/value heads of d_k = 4 in a d_model = 16 model: w (8, 16)", (_randn(g, 8, 16), 2)),
        Case("8 heads of d_k = 8: w (64, 64)", (_randn(g, 64, 64), 8)),
        Case("a single head, d_k = 6: w (6, 6)", (_randn(g, 6, 6), 1)),
        Case("3 heads of d_k = 4: w (12, 12)", (_randn(g, 12, 12), 3)),
        Case("a bias vector of 3 heads of d_k = 4: w (12,)", (_randn(g, 12), 3)),
    ]


def _explain_rows(got, want, w, num_heads):
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return None
    rows = w.reshape(w.size(0), -1).double()
    g = got.reshape(got.size(0), -1).double()
    close = torch.cdist(g, rows) < 1e-6  # (R, R): which row of w each row of yours is
    if not (close.sum(1) == 1).all():
        if w.dim() == 2 and torch.equal(torch.sort(got.double(), dim=1).values, torch.sort(w.double(), dim=1).values):
            return "Each row holds w's numbers in another order: you reordered the columns; reorder the rows"
        return "Your rows are not rows of w: only reorder the rows, do not change their numbers"
    return ("Your rows are w's rows, but in another order: head by head, which row of w must come first, "
            "which second, …?")


ROWS = Exercise(
    id=f"{CHAPTER}/rope_rows_to_half_layout",
    title="From the interleaved to the rotate-half layout: reorder W_Q and W_K",
    reference=rope_rows_to_half_layout,
    cases=_rows_cases,
    atol=0.0,
    rtol=0.0,
    explain=_explain_rows,
    mistakes=[
        Mistake("one reordering over all rows (the heads ignored)", _rows_variant(per_head=False),
                "RoPE turns each head's d_k features on their own: the pairs of head 1 are its rows d_k … 2·d_k − 1. "
                "Reorder the rows of every head separately."),
        Mistake("the reordering the other way round (half -> interleaved)", _rows_variant(inverse=True),
                "in the half layout, feature i and feature i + d_k/2 form pair i: those must be the rows that "
                "formed pair i before, 2i and 2i + 1. So the new row i is the old row 2i."),
        Mistake("the odd rows first, then the even ones", _rows_variant(odd_first=True),
                "the half layout's first coordinate x[..., i] plays the role of the interleaved x[..., 2i] "
                "(the one multiplied by cos, minus sin times the other): the even rows go first."),
        Mistake("the columns reordered instead of the rows", _rows_variant(columns=True),
                "q = x @ w.T, so each *row* of w makes one feature of q: reorder the rows (dim 0)."),
        Mistake("the rows left as they are", _rows_variant(unchanged=True),
                "with the same weights, the half layout would pair features i and i + d_k/2, which are not a "
                "pair of the interleaved model: reorder the rows."),
    ],
)


# ----------------------------------------------------------------------------- 4. stretch RoPE
def stretched_rope(x: torch.Tensor, positions, scale: float, method: str) -> torch.Tensor:
    """RoPE (the chapter's, interleaved, base 10000) stretched to a context `scale` times longer.

    "interpolation": positions divided by scale. "ntk": positions unchanged, the base raised to
    10000 · scale^(d/(d−2)) — the fastest pair is unchanged and the slowest turns scale times
    slower, like interpolation.
    """
    d = x.size(-1)
    if method == "interpolation":
        return apply_rope(x, torch.as_tensor(positions, device=x.device) / scale)
    if method == "ntk":
        return apply_rope(x, positions, base=BASE * scale ** (d / (d - 2)))
    raise ValueError(f"method must be 'interpolation' or 'ntk', got {method!r}")


def _stretch_cases(g):
    return [
        Case("interpolation, scale 4, x (2, 4, 8, 16), positions 0 … 7",
             (_randn(g, 2, 4, 8, 16), torch.arange(8), 4.0, "interpolation")),
        Case("ntk, scale 4, x (2, 4, 8, 16), positions 0 … 7", (_randn(g, 2, 4, 8, 16), torch.arange(8), 4.0, "ntk")),
        Case("ntk, scale 8, x (3, 8, 32), positions 120 … 127 (past the training length)",
             (_randn(g, 3, 8, 32), torch.arange(120, 128), 8.0, "ntk")),
        Case("interpolation, scale 2.5, x (1, 2, 10, 8), positions 100 … 109",
             (_randn(g, 1, 2, 10, 8), torch.arange(100, 110), 2.5, "interpolation")),
        Case("ntk, scale 2, d = 4, x (5, 4), positions 0 … 4", (_randn(g, 5, 4), torch.arange(5), 2.0, "ntk")),
        Case("interpolation, scale 3, x (6, 12), positions 1, 2, … 31 (odd ones)",
             (_randn(g, 16, 12), torch.arange(1, 32, 2), 3.0, "interpolation")),
        Case("ntk, scale 16, d = 64, x (1, 1, 6, 64), positions 0 … 5",
             (_randn(g, 1, 1, 6, 64), torch.arange(6), 16.0, "ntk")),
    ]


def _stretch_variant(pi="divide", ntk="ok", swap=False, layout="interleaved", direction=1.0, pair_index=False):
    def stretched(x, positions, scale, method):
        d = x.size(-1)
        pos = torch.as_tensor(positions)
        if swap:
            method = {"interpolation": "ntk", "ntk": "interpolation"}[method]
        base = BASE
        if method == "interpolation":
            pos = {"divide": pos / scale, "multiply": pos * scale, "floor": pos // scale, "none": pos,
                   "base": pos}[pi]
            if pi == "base":  # the base stretched instead of the positions
                base = BASE * scale
        else:
            if ntk == "no_exponent":
                base = BASE * scale
            elif ntk == "inverse_exponent":
                base = BASE * scale ** ((d - 2) / d)
            elif ntk == "divided":
                base = BASE / scale ** (d / (d - 2))
            elif ntk == "none":
                base = BASE
            elif ntk == "power":
                base = BASE ** scale
            else:
                base = BASE * scale ** (d / (d - 2))
            if ntk == "and_positions":
                pos = pos / scale
        return _rotate(x, pos, base=base, layout=layout, direction=direction,
                       two_i_of=(lambda two_i: two_i / 2) if pair_index else (lambda two_i: two_i))

    return stretched


def _explain_stretch(got, want, x, positions, scale, method):
    if not isinstance(got, torch.Tensor) or got.shape != want.shape or not torch.isfinite(got).all():
        return None
    if not torch.allclose(got.double().norm(dim=-1), x.double().norm(dim=-1), atol=1e-4, rtol=1e-4):
        return "Your vectors do not keep their lengths: a rotation must (each pair turned by one angle, cos and sin)"
    def turned(y):  # (..., d/2): the angle by which each pair of x was turned into y
        x1, x2, y1, y2 = x[..., 0::2].double(), x[..., 1::2].double(), y[..., 0::2].double(), y[..., 1::2].double()
        return torch.atan2(x1 * y2 - x2 * y1, x1 * y1 + x2 * y2)

    delta = turned(got) - turned(want)
    radius = x.double().unflatten(-1, (-1, 2)).norm(dim=-1)  # (..., d/2): how far a wrong angle moves a pair
    same = torch.atan2(delta.sin(), delta.cos()).abs() * radius < 1e-4  # (..., d/2)
    first, last = bool(same[..., 0].all()), bool(same[..., -1].all())
    start = f"Each vector keeps its length (a rotation, good), but for method={method!r} "
    if method == "ntk":
        if not first:
            return start + ("your fastest pair (features 0, 1) does not turn as in plain RoPE: NTK-aware scaling "
                            "leaves it as it is (does your change touch the positions?)")
        if not last:
            return start + ("the fastest pair is right but the slowest pair does not turn `scale` times slower than "
                            "in plain RoPE: solve for the base again")
        return start + "the fastest and slowest pairs are right, the pairs in between are not: use one base for all"
    if method == "interpolation":
        return start + ("the angles are wrong: every pair, the fastest included, must turn exactly `scale` times "
                        "slower than in plain RoPE, at every position, with the chapter's base")
    return None


STRETCH = Exercise(
    id=f"{CHAPTER}/stretched_rope",
    title="Stretch RoPE to a longer context: position interpolation and NTK-aware scaling",
    reference=stretched_rope,
    cases=_stretch_cases,
    atol=2e-4,
    rtol=1e-4,
    explain=_explain_stretch,
    mistakes=[
        Mistake("interpolation: the positions multiplied by the scale", _stretch_variant(pi="multiply"),
                "interpolation squeezes the longer sequence into the trained range: position p becomes p / scale."),
        Mistake("interpolation: the positions divided with // (rounded down)", _stretch_variant(pi="floor"),
                "p / scale is a fraction (position 5 at scale 4 is 1.25): // rounds it down and merges neighbours. "
                "Use true division."),
        Mistake("interpolation: the base multiplied by the scale instead of dividing the positions",
                _stretch_variant(pi="base"),
                "interpolation leaves the frequencies alone and divides every position by the scale."),
        Mistake("ntk: the base multiplied by the scale (no exponent)", _stretch_variant(ntk="no_exponent"),
                "with base' = base · s the slowest pair, θ = base'^(−(d−2)/d), slows by s^((d−2)/d), less than s. "
                "Solve base'^(−(d−2)/d) = base^(−(d−2)/d) / s for base'."),
        Mistake("ntk: the exponent (d−2)/d instead of d/(d−2)", _stretch_variant(ntk="inverse_exponent"),
                "write the slowest pair's frequency with the new base and ask it to be s times smaller: "
                "(base')^((d−2)/d) = s · base^((d−2)/d), so base' = base · s^(d/(d−2))."),
        Mistake("ntk: the base divided instead of multiplied", _stretch_variant(ntk="divided"),
                "a larger base makes the pairs turn more slowly, which is what a longer context needs."),
        Mistake("ntk: the base raised to the power scale", _stretch_variant(ntk="power"),
                "the scale multiplies the base (by some power of s): base' = 10000 · s^e. Find e from the "
                "slowest pair's frequency."),
        Mistake("θ_i = base^(−i/d) (the pair index i instead of the even feature 2i)",
                _stretch_variant(pair_index=True),
                "pair i turns at base^(−2i/d), the chapter's frequencies: the exponent steps through 0, 2, 4, …"),
        Mistake("ntk: the positions divided by the scale as well", _stretch_variant(ntk="and_positions"),
                "NTK-aware scaling changes only the base; dividing the positions too stretches twice."),
        Mistake("the two methods swapped", _stretch_variant(swap=True),
                "'interpolation' divides the positions by the scale; 'ntk' keeps them and changes the base."),
        Mistake("the scale ignored (plain RoPE)", _stretch_variant(pi="none", ntk="none"),
                "both methods use the scale: interpolation on the positions, ntk in the base."),
        Mistake("pairs (i, i + d/2) ('rotate half') instead of neighbours (2i, 2i+1)",
                _stretch_variant(layout="half"),
                "keep the chapter's layout: neighbouring features x[..., 0::2] and x[..., 1::2] form the pairs."),
        Mistake("a rotation the wrong way round (angle −pos·θ)", _stretch_variant(direction=-1.0),
                "the chapter's rotation is counter-clockwise: (a, b) -> (a·cos − b·sin, a·sin + b·cos)."),
    ],
)

EXERCISES = [READ, DECODE, ROWS, STRETCH]
