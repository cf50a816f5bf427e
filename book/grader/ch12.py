"""Graded exercises of chapter 12 — the Vision Transformer: patches, tokens, rollout, sizes.

The chapter prints ``patchify``, ``PatchEmbedding``, ``ViTConfig`` and ``ViT`` from
``book/vit.py`` and uses ``attention_rollout`` after stating its formula, so none of these is an
exercise as printed. The learner instead

1. **derives** the inverse of ``patchify`` (``unpatchify``): the order of the patches and of the
   pixels inside each one, on colour images and on images that are not square;
2. **extends** the class token to DeiT's two special tokens (``add_deit_tokens``): class token,
   distillation token, the patches, and a position for every one of them;
3. **debugs** a rollout with three bugs (``attention_rollout``): the residual identity, the
   row renormalisation and the order of the product;
4. **predicts** a ViT's sequence length and parameter count from its sizes (``vit_sizes``).

Every case is small, seeded and made here: nothing needs the MNIST data or a trained model.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from book.grader import core
from book.grader.core import Case, Exercise, Mistake, bug_combinations
from book.vit import patchify

CHAPTER = "12_vision_transformer"


def _randn(g, *shape):
    return torch.randn(*shape, generator=g)


# ============================================================================= 1. unpatchify
def unpatchify(patches, patch_size, height, width):
    """(B, N, C·p·p) in patchify's layout -> the images (B, C, height, width)."""
    B, N, D = patches.shape
    p = patch_size
    C, gh, gw = D // (p * p), height // p, width // p
    x = patches.reshape(B, gh, gw, C, p, p)  # patch (row, col), then its (C, p, p) pixels
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, gh, p, gw, p)
    return x.reshape(B, C, height, width)


def _unpatchify_cases(g):
    def case(name, B, C, H, W, p):
        images = _randn(g, B, C, H, W)
        return Case(name, (patchify(images, p), p, H, W))

    return [
        case("two 28 × 28 grey digits, patch 7 (a 4 × 4 grid)", 2, 1, 28, 28, 7),
        case("three 12 × 12 colour images (C = 3), patch 4", 3, 3, 12, 12, 4),
        case("a 8 × 12 colour image, wider than high: a 2 × 3 grid of 4 × 4 patches", 1, 3, 8, 12, 4),
        case("two 15 × 10 images with C = 2, higher than wide: a 3 × 2 grid of 5 × 5 patches", 2, 2, 15, 10, 5),
        case("one 6 × 6 image with C = 4 and patch 2", 1, 4, 6, 6, 2),
    ]


def _unpatchify_variant(kind):
    def wrong(patches, patch_size, height, width):
        B, N, D = patches.shape
        p = patch_size
        C, gh, gw = D // (p * p), height // p, width // p
        if kind == "columns":  # patch n taken as (column, row)
            x = patches.reshape(B, gw, gh, C, p, p).permute(0, 3, 2, 4, 1, 5)
        elif kind == "pixels_transposed":
            x = patches.reshape(B, gh, gw, C, p, p).permute(0, 3, 1, 5, 2, 4)
        elif kind == "channels_last":  # each patch read as (p, p, C), the einops/timm layout
            x = patches.reshape(B, gh, gw, p, p, C).permute(0, 5, 1, 3, 2, 4)
        elif kind == "reshape_only":
            return patches.reshape(B, C, height, width)
        elif kind == "grid_swapped":  # grid_h and grid_w exchanged
            x = patches.reshape(B, gw, gh, C, p, p).permute(0, 3, 1, 4, 2, 5)
        elif kind == "no_row_interleave":  # (B, C, gh, gw, p, p) glued as it is
            x = patches.reshape(B, gh, gw, C, p, p).permute(0, 3, 1, 2, 4, 5)
        elif kind == "hwc_output":
            x = patches.reshape(B, gh, gw, C, p, p).permute(0, 1, 4, 2, 5, 3)
            return x.reshape(B, height, width, C)
        return x.reshape(B, C, height, width)

    return wrong


def _unpatchify_explain(got, want, patches, patch_size, height, width):
    B, N, D = patches.shape
    C = D // patch_size ** 2
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(want.shape):
        return (f"Return the images as (B, C, height, width): here B = {B}, C = D / p² = {C}, "
                f"{height} × {width}")
    try:
        back = patchify(got, patch_size)  # (B, N, D): your images cut again
    except Exception:
        return None
    same = [(back[b, n] == patches[b, n]).all().item() for b in range(B) for n in range(N)]
    if all(same):
        return None
    found = [any(torch.equal(back[b, n], patches[b, m]) for m in range(N)) for b in range(B) for n in range(N)]
    if all(found):
        return ("Every patch of your image holds the pixels of one input patch, intact, but not in its place: "
                "patch n sits in grid row n // grid_w and column n % grid_w")
    sorted_match = all(torch.equal(back[b, n].sort().values, patches[b, n].sort().values)
                       for b in range(B) for n in range(N))
    if sorted_match:
        return ("Your patches are in the right places, but the pixels inside each one are out of order: "
                "a flattened patch runs channel by channel, then row by row (C, p, p)")
    return "Cut your image again with patchify: it does not give back the patches you were given"


UNPATCHIFY = Exercise(
    id=f"{CHAPTER}/unpatchify",
    title="From patches back to the image",
    reference=unpatchify,
    cases=_unpatchify_cases,
    atol=0.0,
    rtol=0.0,
    explain=_unpatchify_explain,
    forbidden=("book.vit.patchify",),
    forbidden_why="build the image from the patches yourself (check it with patchify outside your function)",
    mistakes=[
        Mistake("the patches placed column by column", _unpatchify_variant("columns"),
                "patchify lists the patches row by row: patch n lies in grid row n // grid_w, column n % grid_w."),
        Mistake("the pixels inside each patch transposed", _unpatchify_variant("pixels_transposed"),
                "inside a flattened patch the pixel (i, j) of one channel comes at i·p + j: rows first, then "
                "columns, as in a Conv2d kernel (C, p, p)."),
        Mistake("each patch read as (p, p, C), channels last", _unpatchify_variant("channels_last"),
                "the book's patches are flattened as (C, p, p) — channel by channel — like a Conv2d weight; "
                "(p, p, C) is the layout of the original ViT code (einops' '(p1 p2 c)')."),
        Mistake("a plain reshape, with no axes moved", _unpatchify_variant("reshape_only"),
                "the numbers of one patch lie next to each other, but in the image a patch's rows are "
                "width pixels apart: split the axes into (grid_h, grid_w, C, p, p) and move them into "
                "(C, grid_h, p, grid_w, p) before the last reshape."),
        Mistake("grid_h and grid_w exchanged", _unpatchify_variant("grid_swapped"),
                "the grid has height // p rows and width // p columns; on a square image the two are equal, "
                "so test on one that is not."),
        Mistake("the patch rows not interleaved with the pixel rows", _unpatchify_variant("no_row_interleave"),
                "an image row passes through grid_w patches: the axes must be (C, grid_h, p, grid_w, p) — a "
                "patch's pixel row next to its grid row — before the reshape to (C, height, width)."),
        Mistake("the images returned channels last, (B, H, W, C)", _unpatchify_variant("hwc_output"),
                "the book's images are (B, C, H, W), as torch's Conv2d expects."),
    ],
)


# ============================================================================= 2. DeiT's tokens
def add_deit_tokens(patch_tokens, cls_token, dist_token, pos_embed):
    """(B, N, d) patch embeddings -> (B, N + 2, d): [class, distillation, patches] + positions."""
    B = patch_tokens.shape[0]
    special = torch.cat([cls_token, dist_token], dim=1).expand(B, -1, -1)  # (B, 2, d)
    return torch.cat([special, patch_tokens], dim=1) + pos_embed  # (B, N + 2, d)


def _deit_cases(g):
    def case(name, B, N, d):
        return Case(name, (_randn(g, B, N, d), _randn(g, 1, 1, d), _randn(g, 1, 1, d), _randn(g, 1, N + 2, d)))

    return [
        case("two images of 16 patches, d_model = 8", 2, 16, 8),
        case("three images of 4 patches, d_model = 6", 3, 4, 6),
        case("one image of 49 patches, d_model = 4", 1, 49, 4),
        case("four images of a single patch, d_model = 2", 4, 1, 2),
    ]


def _deit_variant(kind):
    def wrong(patch_tokens, cls_token, dist_token, pos_embed):
        B, N, d = patch_tokens.shape
        cls, dist = cls_token.expand(B, -1, -1), dist_token.expand(B, -1, -1)
        if kind == "after":
            return torch.cat([patch_tokens, cls, dist], dim=1) + pos_embed
        if kind == "swapped":
            return torch.cat([dist, cls, patch_tokens], dim=1) + pos_embed
        if kind == "patches_only":
            return torch.cat([cls, dist, patch_tokens + pos_embed[:, 2:]], dim=1)
        if kind == "patches_first_rows":
            return torch.cat([cls, dist, patch_tokens + pos_embed[:, :N]], dim=1)
        if kind == "no_dist":
            return torch.cat([cls, patch_tokens], dim=1) + pos_embed[:, :N + 1]
        if kind == "one_position":
            return torch.cat([cls, dist, patch_tokens], dim=1) + pos_embed[:, :1]
        raise ValueError(kind)

    return wrong


DEIT_TOKENS = Exercise(
    id=f"{CHAPTER}/add_deit_tokens",
    title="DeiT's two special tokens and their positions",
    reference=add_deit_tokens,
    cases=_deit_cases,
    explain=lambda got, want, x, c, t, pos: (
        f"Return (B, N + 2, d) = {tuple(want.shape)}: the two special tokens in front of the {x.shape[1]} patches"
        if isinstance(got, torch.Tensor) and got.shape != want.shape else None),
    mistakes=[
        Mistake("the two tokens put after the patches", _deit_variant("after"),
                "the special tokens come first — the class token at position 0, the distillation token at "
                "position 1 — so that the model can read them at fixed places, whatever the number of patches."),
        Mistake("the class and distillation tokens swapped", _deit_variant("swapped"),
                "the order is [class, distillation, patch 1, …, patch N]."),
        Mistake("positions added to the patches only", _deit_variant("patches_only"),
                "pos_embed has N + 2 rows: one for every token, the two special tokens included. Add it after "
                "putting the tokens together."),
        Mistake("the patches given the first N positions", _deit_variant("patches_first_rows"),
                "row 0 of pos_embed belongs to the class token and row 1 to the distillation token; the patches "
                "get rows 2 to N + 1. Concatenate first, then add the whole table."),
        Mistake("the distillation token left out", _deit_variant("no_dist"),
                "DeiT has two special tokens: the sequence is N + 2 long."),
        Mistake("one position vector added to every token", _deit_variant("one_position"),
                "each token gets its own row of pos_embed: add the (1, N + 2, d) table, which broadcasts over "
                "the batch only."),
    ],
)


# ============================================================================= 3. attention rollout: find the bugs
def attention_rollout(attentions):
    """(L, B, h, T, T) -> (B, T, T): rows of (mean over heads + I) renormalised, R = A_L ⋯ A_1."""
    eye = torch.eye(attentions.shape[-1], dtype=attentions.dtype, device=attentions.device)
    a = attentions.mean(dim=2) + eye  # (L, B, T, T)
    a = a / a.sum(dim=-1, keepdim=True)
    rollout = a[0]
    for layer in a[1:]:
        rollout = layer @ rollout
    return rollout


ROLLOUT_BUGS = {
    "identity": ("the residual identity missing",
                 "each layer adds its input back (x + attention(x)): add the identity matrix to the heads' mean "
                 "before you renormalise."),
    "axis": ("each column normalised instead of each row",
             "row i says where token i reads from; it must sum to 1: divide by the sum over the last axis "
             "(dim=-1), the keys."),
    "order": ("the layers multiplied in the wrong order",
              "a later layer reads the output of the earlier ones, so it goes on the left: R = A_L ⋯ A_2 A_1, "
              "i.e. rollout = layer @ rollout."),
}


def _rollout_variant(combo=(), *, fusion="mean", renorm=True, half=False, skip_first=False):
    def rollout_fn(attentions):
        eye = torch.eye(attentions.shape[-1], dtype=attentions.dtype, device=attentions.device)
        a = attentions.amax(dim=2) if fusion == "max" else attentions.mean(dim=2)
        if "identity" not in combo:
            a = 0.5 * a + 0.5 * eye if half else a + eye
        if renorm:
            a = a / a.sum(dim=-2 if "axis" in combo else -1, keepdim=True)
        rollout = eye.expand_as(a[0]) if skip_first else a[0]
        for layer in a[1:]:
            rollout = rollout @ layer if "order" in combo else layer @ rollout
        return rollout

    return rollout_fn


def _rollout_cases(g):
    def weights(L, B, h, T, scale=2.0):
        return torch.softmax(scale * _randn(g, L, B, h, T, T), dim=-1)

    pruned = weights(3, 2, 2, 6, scale=3.0)
    pruned = torch.where(pruned < 0.1, torch.zeros_like(pruned), pruned)  # the small weights dropped
    return [
        Case("4 layers, 2 images, 2 heads, 5 tokens", (weights(4, 2, 2, 5),)),
        Case("2 layers, one image, 3 heads, 17 tokens (a class token and 16 patches)", (weights(2, 1, 3, 17),)),
        Case("a single layer, 3 images, 1 head, 4 tokens", (weights(1, 3, 1, 4),)),
        Case("6 layers, one image, 4 heads, 3 tokens, sharp attention", (weights(6, 1, 4, 3, scale=6.0),)),
        Case("3 layers with the weights under 0.1 set to 0, so the heads' rows no longer sum to 1",
             (pruned,)),
    ]


def _rollout_mistakes():
    out = bug_combinations(ROLLOUT_BUGS, lambda combo: _rollout_variant(combo),
                           "it runs and returns (B, T, T), but compare it line by line with the formula: "
                           "what does the residual connection add, which sums must be 1, which layer comes first?")
    out += [
        Mistake("the rows not renormalised after adding the identity", _rollout_variant(renorm=False),
                "with the identity added, each row sums to 2 (or to 1 + whatever the heads' row sums to): divide "
                "every row by its sum, or the rollout grows with every layer."),
        Mistake("0.5·W + 0.5·I without the renormalisation", _rollout_variant(renorm=False, half=True),
                "halving works only while every row of W sums to exactly 1; when it doesn't (weights dropped, "
                "heads fused another way) the rows drift. Renormalise every row by its own sum."),
        Mistake("the heads fused by their maximum instead of their mean", _rollout_variant(fusion="max"),
                "the formula averages the heads: attentions.mean(dim=2)."),
        Mistake("the first layer left out of the product", _rollout_variant(skip_first=True),
                "start from the first layer's matrix (or from the identity and multiply by every layer, "
                "the first one included)."),
    ]
    return out


ROLLOUT = Exercise(
    id=f"{CHAPTER}/attention_rollout",
    title="Find and fix the bugs: attention rollout",
    reference=attention_rollout,
    cases=_rollout_cases,
    forbidden=("book.vit.attention_rollout",),
    forbidden_why="fix the given function itself rather than call the chapter's",
    explain=lambda got, want, att: (
        "Your rows do not sum to 1: every row of the rollout is a distribution over the input tokens"
        if isinstance(got, torch.Tensor) and got.shape == want.shape
        and not torch.allclose(got.sum(-1).double(), torch.ones_like(got.sum(-1)).double(), atol=1e-4) else None),
    mistakes=_rollout_mistakes(),
)


# ============================================================================= 4. predict a ViT's size
def _vit_count(image_size, patch_size, channels, d_model, num_heads, d_ff, num_layers, num_classes, pool,
               slip=None):
    """sequence length, patch-embedding and total parameters of book.vit.ViT (learned positions)."""
    grid = image_size // patch_size
    n = grid if slip == "one_side" else grid * grid
    cls = pool == "cls" or slip == "cls_with_mean"
    seq = n + (1 if cls and slip != "seq_no_cls" else 0)
    pixels = patch_size ** 2 if slip == "no_channels" else channels * patch_size ** 2
    patch = pixels * d_model + (0 if slip == "no_patch_bias" else d_model)
    positions = seq * d_model
    cls_params = d_model if cls and slip != "no_cls_params" else 0
    heads = num_heads if slip == "heads_multiply" else 1
    attention = heads * 4 * (d_model * d_model + d_model)
    ffn = 2 * d_model * d_ff + (0 if slip == "no_ffn_bias" else d_ff + d_model)
    norms = 0 if slip == "no_layer_norms" else 4 * d_model
    layer = attention + ffn + norms
    final_norm = 0 if slip == "no_final_norm" else 2 * d_model
    head = d_model * num_classes + (0 if slip == "no_head_bias" else num_classes)
    total = patch + cls_params + positions + num_layers * layer + final_norm + head
    return {"sequence_length": seq, "patch_embedding": patch, "parameters": total}


def vit_sizes(image_size, patch_size, channels, d_model, num_heads, d_ff, num_layers, num_classes, pool):
    """The sizes of book.vit.ViT(ViTConfig(...)) with learned positions."""
    return _vit_count(image_size, patch_size, channels, d_model, num_heads, d_ff, num_layers, num_classes, pool)


_SIZE_KEYS = ("sequence_length", "patch_embedding", "parameters")


def _sizes_cases(g):
    return [
        Case("chapter 12's model: 28 × 28 grey digits, patch 7, d_model 64, 4 heads, d_ff 128, 4 layers, "
             "10 classes, a class token", (28, 7, 1, 64, 4, 128, 4, 10, "cls")),
        Case("ViT-Ti/16 (DeiT-Ti): 224 × 224 colour images, patch 16, d_model 192, 3 heads, d_ff 768, "
             "12 layers, 1000 classes, a class token", (224, 16, 3, 192, 3, 768, 12, 1000, "cls")),
        Case("the same digits with patch 4 and mean pooling (no class token), d_model 32, 2 heads, d_ff 64, "
             "2 layers", (28, 4, 1, 32, 2, 64, 2, 10, "mean")),
        Case("ViT-B/16 at 384 × 384, d_model 768, 12 heads, d_ff 3072, 12 layers, 1000 classes, a class token",
             (384, 16, 3, 768, 12, 3072, 12, 1000, "cls")),
        Case("32 × 32 colour images, patch 8, d_model 48, 6 heads, d_ff 96, 3 layers, 100 classes, mean pooling",
             (32, 8, 3, 48, 6, 96, 3, 100, "mean")),
    ]


def _sizes_judge(got, *args):
    if not isinstance(got, Mapping):
        return f"your result is {core._describe(got)}; return a dict with the keys {', '.join(map(repr, _SIZE_KEYS))}"
    if set(got) != set(_SIZE_KEYS):
        return f"use exactly the keys {', '.join(map(repr, _SIZE_KEYS))} (yours: {sorted(map(str, got))})"
    not_int = [k for k in _SIZE_KEYS if not isinstance(got[k], int) or isinstance(got[k], bool)]
    if not_int:
        return (f"every value must be a Python int, the exact count: `{not_int[0]}` is "
                f"{core._describe(got[not_int[0]])}")
    return None


def _sizes_explain(got, want, *args):
    verdict = _sizes_judge(got)
    if verdict:
        return verdict[0].upper() + verdict[1:]
    said = [f"`{k}` is too {'small (something is missing)' if got[k] < want[k] else 'large'}"
            for k in _SIZE_KEYS if got[k] != want[k]]
    right = [f"`{k}`" for k in _SIZE_KEYS if got[k] == want[k]]
    msg = "; ".join(said) + (f"; {', '.join(right)} {'is' if len(right) == 1 else 'are'} right" if right else "")
    return msg[0].upper() + msg[1:]


def _sizes_slip(slip):
    return lambda *args: _vit_count(*args, slip=slip)


SIZES = Exercise(
    id=f"{CHAPTER}/vit_sizes",
    title="Predict a ViT's sequence length and size",
    reference=vit_sizes,
    cases=_sizes_cases,
    atol=0.0,
    rtol=0.0,
    time_limit=10.0,  # building the model to count it is allowed: ViT-B/16 takes a while
    judge=_sizes_judge,
    explain=_sizes_explain,
    mistakes=[
        Mistake("the class token left out of the sequence", _sizes_slip("seq_no_cls"),
                "with pool='cls' the encoder reads N patches and one class token: N + 1 tokens, and the "
                "position table has a row for each."),
        Mistake("the patches counted along one side only", _sizes_slip("one_side"),
                "an image of side S cut into patches of side p is a (S/p) × (S/p) grid: N = (S/p)²."),
        Mistake("the channels left out of a patch", _sizes_slip("no_channels"),
                "a flattened patch holds C·p·p numbers — every channel of every pixel."),
        Mistake("the patch embedding's bias forgotten", _sizes_slip("no_patch_bias"),
                "the patch embedding is an nn.Linear(C·p·p, d_model): it has d_model biases (a Conv2d has them "
                "too)."),
        Mistake("d_model numbers missing with the class token (its own vector, or its position)",
                _sizes_slip("no_cls_params"),
                "two things of d_model numbers each come with the class token, and both count: the class "
                "token itself (a learned vector) and its row of the position table."),
        Mistake("a class token counted with mean pooling", _sizes_slip("cls_with_mean"),
                "with pool='mean' there is no class token: N tokens, N position rows, and no class-token vector."),
        Mistake("the attention's parameters multiplied by the number of heads", _sizes_slip("heads_multiply"),
                "the heads cut d_model into num_heads pieces of d_model / num_heads: W_Q, W_K, W_V and W_O stay "
                "d_model × d_model whatever num_heads is."),
        Mistake("the FFN's biases forgotten", _sizes_slip("no_ffn_bias"),
                "linear1 has d_ff biases and linear2 d_model."),
        Mistake("the layers' LayerNorms forgotten", _sizes_slip("no_layer_norms"),
                "each pre-LN layer has two LayerNorms, each with a weight and a bias of d_model numbers."),
        Mistake("the final LayerNorm forgotten", _sizes_slip("no_final_norm"),
                "pre-LN layers leave the last residual sum unnormalised: the ViT has one more LayerNorm before "
                "its head."),
        Mistake("the head's bias forgotten", _sizes_slip("no_head_bias"),
                "the head is an nn.Linear(d_model, num_classes), with num_classes biases."),
    ],
)

EXERCISES = [UNPATCHIFY, DEIT_TOKENS, ROLLOUT, SIZES]
