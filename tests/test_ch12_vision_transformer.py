"""Chapter 12: the Vision Transformer from the book's encoder, the MNIST digits, and the exercise data.

Model tests: patchify is a reshape and equals a strided convolution; the ViT's shapes for every
pooling and position choice; positions are what make it see the layout; attention rollout keeps
rows that sum to 1; the parameter counts match the grader's formula. Data tests: the split is
disjoint, stratified and seeded; the shift augmentation moves pixels where it says.
"""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book import vit
from book.data import mnist
from book.grader import ch12
from book.vit import ViT, ViTConfig, attention_rollout, patchify

TINY = dict(d_model=16, num_heads=2, d_ff=32, num_layers=2)


# ----------------------------------------------------------------------------- patches
def test_patchify_is_a_reshape_in_row_major_order():
    images = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    patches = patchify(images, 4)
    assert patches.shape == (2, 6, 3 * 16)  # a 2 × 3 grid of 4 × 4 patches, 3 channels
    assert torch.equal(patches[:, 0], images[:, :, :4, :4].reshape(2, -1))  # top left
    assert torch.equal(patches[:, 1], images[:, :, :4, 4:8].reshape(2, -1))  # its right neighbour
    assert torch.equal(patches[:, 3], images[:, :, 4:, :4].reshape(2, -1))  # second row of the grid
    with pytest.raises(ValueError, match="cannot be cut"):
        patchify(images, 5)


def test_patch_embedding_equals_a_strided_convolution():
    torch.manual_seed(0)
    embed = vit.PatchEmbedding(patch_size=7, channels=3, d_model=10)
    images = torch.randn(4, 3, 28, 28)
    conv = embed.as_conv2d()
    assert conv.kernel_size == (7, 7) and conv.stride == (7, 7)
    by_conv = conv(images).flatten(2).transpose(1, 2)  # (B, d, 4, 4) -> (B, 16, d)
    torch.testing.assert_close(embed(images), by_conv, atol=1e-5, rtol=1e-5)


def test_patchify_matches_unfold():
    images = torch.randn(2, 3, 12, 8)
    torch.testing.assert_close(patchify(images, 4), F.unfold(images, 4, stride=4).transpose(1, 2))


def test_unpatchify_reference_inverts_patchify():
    images = torch.randn(2, 3, 8, 12)
    assert torch.equal(ch12.unpatchify(patchify(images, 4), 4, 8, 12), images)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("pool", vit.POOLS)
@pytest.mark.parametrize("positions", vit.POSITIONS)
def test_vit_shapes_for_every_choice(pool, positions):
    cfg = ViTConfig(pool=pool, positions=positions, **TINY)
    model = ViT(cfg).eval()
    images = torch.rand(3, 1, 28, 28)
    assert model.embed(images).shape == (3, cfg.seq_len, 16)
    assert model(images).shape == (3, 10)
    assert model.attention_maps().shape == (2, 3, 2, cfg.seq_len, cfg.seq_len)
    assert cfg.seq_len == 16 + (pool == "cls")


def test_config_rejects_what_the_model_cannot_do():
    with pytest.raises(ValueError, match="multiple"):
        ViTConfig(patch_size=5)
    with pytest.raises(ValueError, match="pool"):
        ViTConfig(pool="max")
    with pytest.raises(ValueError, match="positions"):
        ViTConfig(positions="rope")


def test_sinusoidal_2d_codes_row_and_column_separately():
    pe = vit.sinusoidal_2d(4, 16)  # (16, 16)
    grid = pe.reshape(4, 4, 16)
    assert torch.equal(grid[1, 0, :8], grid[1, 3, :8])  # same row: same first half
    assert torch.equal(grid[0, 2, 8:], grid[3, 2, 8:])  # same column: same second half
    assert not torch.equal(grid[0, 0], grid[0, 1])
    with pytest.raises(ValueError):
        vit.sinusoidal_2d(4, 6)


def test_without_positions_the_vit_cannot_see_where_a_patch_is():
    """No positions: shuffling the patches leaves the prediction unchanged (a bag of patches)."""
    torch.manual_seed(0)
    images = torch.rand(2, 1, 28, 28)
    perm = torch.randperm(16)
    shuffled = patchify(images, 7)[:, perm]  # the same patches in another order
    shuffled = ch12.unpatchify(shuffled, 7, 28, 28)
    for positions, same in (("none", True), ("learned", False), ("sinusoidal_2d", False)):
        model = ViT(ViTConfig(positions=positions, **TINY)).eval()
        if positions == "learned":
            torch.nn.init.normal_(model.pos_embed, std=1.0)  # away from its small initial values
        with torch.no_grad():
            a, b = model(images), model(shuffled)
        assert torch.allclose(a, b, atol=1e-5) == same, positions


def test_class_token_and_positions_are_learned_parameters():
    model = ViT(ViTConfig(**TINY))
    names = dict(model.named_parameters())
    assert names["cls_token"].shape == (1, 1, 16) and names["pos_embed"].shape == (1, 17, 16)
    fixed = ViT(ViTConfig(positions="sinusoidal_2d", **TINY))
    assert "pos_embed" not in dict(fixed.named_parameters())
    assert torch.equal(fixed.pos_embed[0, 0], torch.zeros(16))  # the class token has no position


@pytest.mark.parametrize("args", [c.args for c in ch12._sizes_cases(None)], ids=lambda a: f"{a[0]}px-p{a[1]}")
def test_the_graders_size_formula_counts_the_book_vit(args):
    image, patch, channels, d, heads, d_ff, layers, classes, pool = args
    cfg = ViTConfig(image_size=image, patch_size=patch, channels=channels, d_model=d, num_heads=heads,
                    d_ff=d_ff, num_layers=layers, num_classes=classes, pool=pool)
    with torch.device("meta"):
        model = ViT(cfg)
    want = ch12.vit_sizes(*args)
    assert want["sequence_length"] == cfg.seq_len
    assert want["patch_embedding"] == vit.count_parameters(model.patch_embed)
    assert want["parameters"] == vit.count_parameters(model)


def test_deit_tiny_has_its_published_size():
    # DeiT-Ti (Touvron et al., 2021): 5.7 M parameters; timm's vit_tiny_patch16_224 has 5,717,416
    assert ch12.vit_sizes(224, 16, 3, 192, 3, 768, 12, 1000, "cls")["parameters"] == 5_717_416


def test_the_vit_and_cnn_run_on_the_inputs_device():
    for cfg in (ViTConfig(**TINY), ViTConfig(positions="sinusoidal_2d", pool="mean", **TINY)):
        model = ViT(cfg).to("meta")
        out = model(torch.zeros(2, 1, 28, 28, device="meta"))
        assert out.device.type == "meta" and out.shape == (2, 10)
        assert attention_rollout(model.attention_maps()).device.type == "meta"
    assert vit.SmallCNN().to("meta")(torch.zeros(2, 1, 28, 28, device="meta")).shape == (2, 10)
    assert vit.PatchEmbedding(7, 1, 8).to("meta").as_conv2d().weight.device.type == "meta"


# ----------------------------------------------------------------------------- attention rollout
def test_rollout_rows_sum_to_one_and_one_layer_is_the_mixed_attention():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(3, 2, 4, 6, 6), dim=-1)
    r = attention_rollout(w)
    assert r.shape == (2, 6, 6)
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 6))
    one = attention_rollout(w[:1])
    torch.testing.assert_close(one, 0.5 * w[0].mean(1) + 0.5 * torch.eye(6))
    # the last layer goes on the left: R = A_3 A_2 A_1
    a = 0.5 * w.mean(2) + 0.5 * torch.eye(6)
    torch.testing.assert_close(r, a[2] @ a[1] @ a[0])


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(4, 1, 2, 5, 5)
    torch.testing.assert_close(attention_rollout(eye), torch.eye(5)[None])


# ----------------------------------------------------------------------------- the figures
def test_png_data_uri_is_a_small_grey_png_of_the_right_size():
    import base64
    import struct
    import zlib

    from book import viz

    image = torch.zeros(28, 28)
    image[10:20, 12] = 1.0
    uri = viz.png_data_uri(image, scale=2)
    assert uri.startswith("data:image/png;base64,")
    png = base64.b64decode(uri.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    assert (width, height, depth, colour) == (56, 56, 8, 0)  # 8-bit grey, scaled 2×
    raw = zlib.decompress(png[png.index(b"IDAT") + 4:png.index(b"IEND") - 8])
    rows = [raw[i * 57 + 1:(i + 1) * 57] for i in range(56)]  # a filter byte before each row
    assert rows[0][0] == 255 and rows[20][24] == 0  # paper white, ink black
    with pytest.raises(ValueError, match="grey image"):
        viz.png_data_uri(torch.zeros(1, 28, 28))


def test_tile_explorer_draws_one_mosaic_per_variant_with_gaps():
    from book import viz

    tiles = {"a": torch.rand(6, 3, 2), "b": torch.rand(6, 3, 2)}
    fig = viz.tile_explorer(tiles, ncols=4, title="tiles", control="slider", label="step")
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 2 and len(fig.data) == 1
    z = np.array(steps[1].args[0]["z"][0], dtype=float)
    assert z.shape == (2 * 4 - 1, 4 * 3 - 1)  # 2 rows of tiles of 3 × 2, one blank line between
    assert np.isnan(z[3]).all() and np.isnan(z[:, 2]).all()
    np.testing.assert_allclose(z[4:7, 0:2], tiles["b"][4].numpy(), atol=1e-4)  # tile 4: row 1, col 0
    assert "map 0" in fig.data[0].customdata[0][0]
    with pytest.raises(ValueError, match="one shape"):
        viz.tile_explorer({"a": torch.rand(6, 3, 2), "b": torch.rand(5, 3, 2)}, ncols=3, title="t")


def test_image_attention_grid_has_a_map_and_a_picture_per_cell_and_a_menu_over_pictures():
    from book import viz

    images = [torch.rand(28, 28) for _ in range(3)]
    maps = [torch.rand(2, 3, 4, 4) for _ in range(3)]  # 2 rows × 3 columns of 4 × 4 maps
    fig = viz.image_attention_grid(images, maps, patch_size=7, row_names=["r1", "r2"],
                                   col_names=["a", "b", "c"], image_names=["x", "y", "z"], title="t")
    assert len(fig.data) == 6 and len(fig.layout.images) == 6
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 3
    data, layout = buttons[2].args
    assert len(data["z"]) == 6
    np.testing.assert_allclose(np.array(data["z"][4]), maps[2][1, 1].numpy(), atol=1e-4)
    assert layout["images[5].source"] == viz.png_data_uri(images[2])
    assert list(fig.data[0].y) == sorted(fig.data[0].y, reverse=True)  # patch row 0 on top
    single = viz.image_attention_grid(images[:1], [maps[0][:1, :1]], patch_size=7, row_names=["r"],
                                      col_names=["c"], image_names=["x"], title="t")
    assert not single.layout.updatemenus  # one picture: nothing to choose
    with pytest.raises(ValueError, match="shape"):
        viz.image_attention_grid(images, [torch.rand(2, 3, 5, 5)] * 3, patch_size=7, row_names=["r1", "r2"],
                                 col_names=["a", "b", "c"], image_names=["x", "y", "z"], title="t")


# ----------------------------------------------------------------------------- the data
@functools.lru_cache(maxsize=1)
def _digits():
    return mnist.load_digits()


def test_the_digits_are_mlxtends_5000():
    images, labels = _digits()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (5000,) and labels.dtype == torch.int64
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert torch.equal(torch.bincount(labels), torch.full((10,), 500))


def test_split_is_disjoint_stratified_and_seeded():
    _, labels = _digits()
    train, test = mnist.split(labels)
    assert len(train) == 4000 and len(test) == 1000
    assert not set(train.tolist()) & set(test.tolist())
    assert set(train.tolist()) | set(test.tolist()) == set(range(5000))
    assert torch.equal(torch.bincount(labels[test]), torch.full((10,), 100))
    again = mnist.split(labels)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    other = mnist.split(labels, seed=1)
    assert not torch.equal(other[1], test)
    with pytest.raises(ValueError, match="multiple"):
        mnist.split(labels, n_test=1005)


def test_load_split_gives_the_split_images():
    images, labels = _digits()
    x_train, y_train, x_test, y_test = mnist.load_split()
    train, test = mnist.split(labels)
    assert torch.equal(x_test, images[test]) and torch.equal(y_train, labels[train])
    assert x_train.shape == (4000, 1, 28, 28)


def test_random_shift_moves_every_image_by_whole_pixels():
    images = torch.zeros(50, 2, 10, 10)
    images[:, :, 4, 5] = 1.0  # one bright pixel, away from the border
    moved = mnist.random_shift(images, 2, torch.Generator().manual_seed(0))
    assert moved.shape == images.shape
    where = moved[:, 0].flatten(1).argmax(1)
    dy, dx = where // 10 - 4, where % 10 - 5
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(zip(dy.tolist(), dx.tolist()))) > 5
    assert torch.equal(moved.sum((1, 2, 3)), torch.full((50,), 2.0))  # nothing lost, both channels alike
    assert torch.equal(moved[:, 0], moved[:, 1])
    assert mnist.random_shift(images, 0) is images


def test_batches_are_full_shuffled_and_seeded():
    x, y = torch.arange(10.0).reshape(10, 1, 1, 1), torch.arange(10)
    stream = mnist.batches(x, y, 4, seed=3)
    first = [next(stream) for _ in range(4)]  # two epochs: 2 full batches each
    assert all(b[0].shape == (4, 1, 1, 1) and torch.equal(b[0].flatten().long(), b[1]) for b in first)
    assert set(torch.cat([first[0][1], first[1][1]]).tolist()) != set(range(10))  # 8 of 10, none twice
    again = mnist.batches(x, y, 4, seed=3)
    assert all(torch.equal(next(again)[1], b[1]) for b in first)


# ---- exercise data (grader tests)
# Data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).
import functools as _functools  # noqa: E402


# 1. unpatchify
def unpatchify_by_fold(patches, patch_size, height, width):
    return F.fold(patches.transpose(1, 2), (height, width), patch_size, stride=patch_size)


def unpatchify_by_loop(patches, patch_size, height, width):
    B, N, D = patches.shape
    p = patch_size
    C, per_row = D // (p * p), width // p
    out = torch.zeros(B, C, height, width, dtype=patches.dtype, device=patches.device)
    for n in range(N):
        r, c = divmod(n, per_row)
        out[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = patches[:, n].reshape(B, C, p, p)
    return out


def unpatchify_with_patchify(patches, patch_size, height, width):
    patchify(patches, patch_size)  # a forbidden call, whatever it is used for
    return unpatchify_by_fold(patches, patch_size, height, width)


# 2. DeiT's tokens
def deit_by_repeat(patch_tokens, cls_token, dist_token, pos_embed):
    B = patch_tokens.size(0)
    tokens = torch.cat([cls_token.repeat(B, 1, 1), dist_token.repeat(B, 1, 1), patch_tokens], 1)
    return tokens + pos_embed.expand_as(tokens)


def deit_in_two_steps(patch_tokens, cls_token, dist_token, pos_embed):
    B = patch_tokens.size(0)
    head = (cls_token + pos_embed[:, :1]).expand(B, -1, -1)
    dist = (dist_token + pos_embed[:, 1:2]).expand(B, -1, -1)
    return torch.cat([head, dist, patch_tokens + pos_embed[:, 2:]], dim=1)


# 3. attention rollout
def rollout_from_the_identity(attentions):
    T = attentions.shape[-1]
    eye = torch.eye(T, dtype=attentions.dtype, device=attentions.device)
    out = eye.expand(attentions.shape[1], T, T)
    for layer in attentions:
        a = layer.mean(1) + eye
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def rollout_by_reduce(attentions):
    eye = torch.eye(attentions.shape[-1], dtype=attentions.dtype, device=attentions.device)
    mixed = F.normalize(attentions.mean(2) + eye, p=1, dim=-1)
    return _functools.reduce(lambda acc, a: a @ acc, list(mixed))


def rollout_with_the_library(attentions):
    return vit.attention_rollout(attentions)


def rollout_not_normalised(attentions):
    eye = torch.eye(attentions.shape[-1], dtype=attentions.dtype, device=attentions.device)
    a = attentions.mean(2) + 2 * eye
    out = a[0]
    for layer in a[1:]:
        out = layer @ out
    return out


# 4. a ViT's sizes
def sizes_by_building(image_size, patch_size, channels, d_model, num_heads, d_ff, num_layers, num_classes, pool):
    cfg = ViTConfig(image_size=image_size, patch_size=patch_size, channels=channels, d_model=d_model,
                    num_heads=num_heads, d_ff=d_ff, num_layers=num_layers, num_classes=num_classes, pool=pool)
    with torch.device("meta"):  # shapes only: no memory, no time
        model = ViT(cfg)
    return {"sequence_length": cfg.seq_len, "patch_embedding": vit.count_parameters(model.patch_embed),
            "parameters": vit.count_parameters(model)}


REFERENCES = {}
BUGGY = {m.name: m.fn for m in ch12.SIZES.mistakes}  # a judged exercise: its mistakes as code

ALTERNATIVES = {
    "unpatchify": [unpatchify_by_fold, unpatchify_by_loop],
    "add_deit_tokens": [deit_by_repeat, deit_in_two_steps],
    "attention_rollout": [rollout_from_the_identity, rollout_by_reduce],
    "vit_sizes": [sizes_by_building],
}

WRONG = [  # the rules the statements state, and what the feedback must say about other slips
    ("unpatchify", unpatchify_with_patchify, "does not allow"),
    ("unpatchify", lambda p, s, h, w: unpatchify_by_fold(p, s, h, w).numpy(), "numpy"),
    ("unpatchify", lambda p, s, h, w: unpatchify_by_fold(p, s, h, w)[None], "(B, C, height, width)"),
    ("unpatchify", lambda p, s, h, w: unpatchify_by_fold(p.flip(1), s, h, w), "not in its place"),
    ("unpatchify", lambda p, s, h, w: unpatchify_by_fold(p.flip(2), s, h, w), "pixels inside each one"),
    ("add_deit_tokens", lambda x, c, t, pos: ch12.add_deit_tokens(x, c, t, pos)[:1], "Return (B, N + 2, d)"),
    ("attention_rollout", rollout_with_the_library, "does not allow"),
    ("attention_rollout", rollout_not_normalised, "rows do not sum to 1"),
    ("vit_sizes", lambda *a: {k: float(v) for k, v in ch12.vit_sizes(*a).items()}, "Python int"),
    ("vit_sizes", lambda *a: {"sequence_length": 1}, "exactly the keys"),
    ("vit_sizes", lambda *a: list(ch12.vit_sizes(*a).values()), "return a dict"),
    ("vit_sizes", lambda *a: dict(ch12.vit_sizes(*a), parameters=1), "`parameters` is too small"),
]
