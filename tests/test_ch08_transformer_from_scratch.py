"""Chapter 08: the assembled Transformer equals torch.nn.Transformer; data, training, decoding and
the graded exercises behave as the chapter says."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book.data.dates import FORMATS, CharVocab, encode_pairs, examples, render, split_dates, target_text, training_batches
from book.decoding import beam_search, greedy_decode
from book.grader import ch08, check
from book.convert import copy_from_torch
from book.layers import decoder_self_mask, key_padding_mask
from book.training import label_smoothing_loss, lr_at, noam_lr, teacher_forcing_loss, train, transformer_adam
from book.transformer import Transformer, TransformerConfig, attention_maps, load_checkpoint, save_checkpoint

warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")


def test_equal_to_torch_transformer_with_copied_weights():
    torch.manual_seed(0)
    cfg = TransformerConfig(50, 50, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=3, num_decoder_layers=2)
    theirs = nn.Transformer(32, 4, 3, 2, 64, dropout=0.0, batch_first=True).eval()
    ours = Transformer(cfg).eval()
    copy_from_torch(ours.encoder, theirs.encoder)
    copy_from_torch(ours.decoder, theirs.decoder)
    src_real = torch.arange(8)[None] < torch.tensor([8, 3])[:, None]
    tgt_real = torch.arange(6)[None] < torch.tensor([6, 4])[:, None]
    xs, xt = torch.randn(2, 8, 32), torch.randn(2, 6, 32)
    with torch.no_grad():
        mine = ours.decoder(xt, ours.encoder(xs, key_padding_mask(src_real)), decoder_self_mask(tgt_real),
                            key_padding_mask(src_real))
        ref = theirs(xs, xt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.bool),
                     src_key_padding_mask=~src_real, tgt_key_padding_mask=~tgt_real, memory_key_padding_mask=~src_real)
    assert (mine - ref)[tgt_real].abs().max() <= 1e-5


def test_weight_tying_and_parameter_count():
    cfg = TransformerConfig(40, 40, d_model=32, num_heads=2, d_ff=64)
    m = Transformer(cfg)
    assert m.generator.weight is m.tgt_embed.weight
    untied = Transformer(TransformerConfig(40, 40, d_model=32, num_heads=2, d_ff=64, tie_weights=False))
    assert untied.num_parameters() - m.num_parameters() == 40 * 32
    with pytest.raises(ValueError):
        TransformerConfig(10, 10, d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="max_len"):
        m(torch.ones(1, 70, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


def test_checkpoint_round_trip(tmp_path):
    m = Transformer(TransformerConfig(20, 20, d_model=16, num_heads=2, d_ff=32)).eval()
    save_checkpoint(m, tmp_path / "m.pt")
    r = load_checkpoint(tmp_path / "m.pt").eval()
    src, tgt = torch.randint(1, 20, (2, 5)), torch.randint(1, 20, (2, 4))
    assert torch.equal(m(src, tgt), r(src, tgt))


def test_dates_split_by_date_and_render_every_format():
    split = split_dates(seed=0)
    assert not set(split.train) & set(split.test) and len(split.test) == 3652
    vocab = CharVocab()
    import datetime as dt
    d = dt.date(2024, 3, 5)
    sources = {f.name: render(d, f) for f in FORMATS}
    assert sources["US numeric"] == "03/05/2024" and sources["German numeric"] == "05.03.2024"
    assert sources["US, full"] == "Tuesday, March 5, 2024"
    assert target_text(d, "zh", True) == "2024年3月5日星期二" and target_text(d, "zh", False) == "2024年3月5日"
    assert target_text(d, "iso", True) == "2024-03-05"
    for s, t in examples(split.test[:200], "zh", seed=0):
        assert vocab.decode(vocab.encode(s)) == s and vocab.decode(vocab.encode(t, bos=True, eos=True)) == t
    assert examples(split.test[:5], "iso", seed=3) == examples(split.test[:5], "iso", seed=3)  # seeded
    with pytest.raises(ValueError):
        target_text(d, "klingon", False)


def test_a_short_training_run_learns_and_decodes():
    """Not the chapter's run: 150 steps must already beat chance by far on the ISO year digits."""
    torch.manual_seed(0)
    vocab, split = CharVocab(), split_dates()
    cfg = TransformerConfig(len(vocab), len(vocab), d_model=32, num_heads=2, d_ff=64, pad_id=vocab.PAD)
    model = Transformer(cfg)
    hist = train(model, training_batches(split.train, "iso", vocab, 32, seed=0),
                 lambda m, batch: teacher_forcing_loss(m, *batch, vocab.PAD, smoothing=0.1), 150,
                 optimizer=transformer_adam(model), schedule=lambda step: lr_at(step, 150, 32, 50, 1.0, 0.3), clip=1.0)
    assert hist.loss[-1] < hist.loss[0] * 0.6
    pairs = examples(split.test[:50], "iso", seed=0)
    src, _ = encode_pairs(pairs, vocab)
    out = greedy_decode(model, src, 12, vocab.BOS, vocab.EOS)
    assert out.shape[0] == 50 and (out[:, 0] == vocab.BOS).all()
    maps = attention_maps(model)
    assert maps["cross-attention"][0].shape[:2] == (50, 2)
    best = beam_search(model, src[:1], 3, 12, vocab.BOS, vocab.EOS)
    assert best[0] == vocab.BOS


def test_schedule_has_warmup_then_decay_then_cooldown():
    lrs = [lr_at(s, 1000, 64, 100, 1.0, 0.3) for s in range(1, 1001)]
    assert max(range(1000), key=lambda i: lrs[i]) == 99
    assert lrs[-1] < lrs[700] / 50
    with pytest.raises(ValueError):
        noam_lr(0, 64, 100)


# ----------------------------------------------------------------------------- graded exercises
REFS = {"noam_lr": noam_lr, "label_smoothing_loss": label_smoothing_loss,
        "greedy_decode": greedy_decode, "beam_search": beam_search}


@pytest.mark.parametrize("ex", ch08.EXERCISES, ids=lambda e: e.name)
def test_reference_passes(ex):
    assert check(ex.id, REFS[ex.name]).passed


@pytest.mark.parametrize("ex,m", [(e, m) for e in ch08.EXERCISES for m in e.mistakes], ids=lambda x: getattr(x, "name", ""))
def test_mistakes_are_named(ex, m):
    r = check(ex.id, m.fn)
    assert not r.passed and r.mistake == m.name, r.feedback


def greedy_calling_the_model(model, src, max_len, bos, eos):
    ys = torch.full((src.size(0), 1), bos)
    for _ in range(max_len):
        nxt = model(src, ys)[:, -1].argmax(-1)
        nxt[(ys == eos).any(1)] = eos
        ys = torch.cat([ys, nxt[:, None]], 1)
        if (ys == eos).any(1).all():
            break
    return ys


def beam_with_batched_beams(model, src, beam_size, max_len, bos, eos):
    import heapq
    memory = model.encode(src)
    beams, done = [(0.0, (bos,))], []
    for _ in range(max_len):
        cand = []
        for score, toks in beams:
            lp = F.log_softmax(model.decode(torch.tensor([toks]), memory)[0, -1], -1)
            for tok in range(lp.numel()):
                cand.append((score + lp[tok].item(), toks + (tok,)))
        top = heapq.nlargest(len(cand), cand)
        beams = []
        for score, toks in top:
            if toks[-1] == eos:
                done.append((score, toks))
            else:
                beams.append((score, toks))
            if len(beams) == beam_size:
                break
        if not beams or max((d[0] for d in done), default=-math.inf) >= beams[0][0]:
            break
    return torch.tensor(max(done or beams)[1])


ALTERNATIVES = [
    ("noam_lr", lambda s, d, w: (d ** -0.5) * (s ** -0.5 if s > w else s / w ** 1.5)),
    ("noam_lr", lambda s, d, w: math.pow(d, -0.5) * min(1 / math.sqrt(s), s * math.pow(w, -1.5))),
    ("label_smoothing_loss", lambda l, t, s, i: F.cross_entropy(l, t, label_smoothing=s, ignore_index=i)),
    ("label_smoothing_loss", lambda l, t, s, i: ((1 - s) * F.nll_loss(F.log_softmax(l, -1), t, ignore_index=i)
                                                  - s * F.log_softmax(l, -1)[t != i].mean())),
    ("greedy_decode", greedy_calling_the_model),
    ("beam_search", beam_with_batched_beams),
]


@pytest.mark.parametrize("name,fn", ALTERNATIVES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALTERNATIVES)])
def test_alternatives_pass(name, fn):
    r = check(name, fn)
    assert r.passed, r.feedback


def test_the_harness_model_separates_beam_from_greedy():
    g = torch.Generator().manual_seed(0)
    differ = [c for c in ch08._beam_cases(g)
              if not torch.equal(beam_search(*c.args), ch08._beam_greedy(*c.args))]
    assert differ, "no case where beam search beats greedy"
