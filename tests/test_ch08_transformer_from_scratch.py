"""Chapter 08: the assembled Transformer equals torch.nn.Transformer; data, training and decoding
behave as the chapter says; and the chapter's data for test_exercises.py."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from book.data.dates import FORMATS, CharVocab, encode_pairs, examples, render, split_dates, target_text, training_batches
from book.decoding import beam_search, greedy_decode
from book.grader import ch08
from book.convert import copy_from_torch
from book.layers import decoder_self_mask, key_padding_mask
from book.training import lr_at, noam_lr, teacher_forcing_loss, train, transformer_adam
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
    assert examples(split.test[:5], "iso", seed=3) != examples(split.test[:5], "iso", seed=4)  # by that seed
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
    model.eval()
    out = greedy_decode(model, src, 12, vocab.BOS, vocab.EOS)
    assert out.shape[0] == 50
    _assert_greedy(model, src, out, 12, vocab.BOS, vocab.EOS)
    maps = attention_maps(model)
    assert maps["cross-attention"][0].shape[:2] == (50, 2)
    for i in range(3):  # a beam of one is greedy search
        torch.testing.assert_close(beam_search(model, src[i:i + 1], 1, 12, vocab.BOS, vocab.EOS),
                                   _up_to_eos(out[i], vocab.EOS))
    best = beam_search(model, src[:1], 3, 12, vocab.BOS, vocab.EOS)
    assert best[0] == vocab.BOS and (best[-1] == vocab.EOS or len(best) == 13)
    assert (best[1:-1] != vocab.EOS).all()


# ----------------------------------------------------------------------------- decoding on models of known output
def _up_to_eos(row, eos):
    ends = (row == eos).nonzero()
    return row[: ends[0, 0] + 1] if len(ends) else row


@torch.no_grad()
def _assert_greedy(model, src, out, max_len, bos, eos):
    """out is greedy decoding: <bos>, then at each step the argmax of the logits of the prefix so far
    (recomputed here from the whole prefix), <eos> once a row has finished; it stops when every row
    has finished or after max_len steps."""
    memory = model.encode(src)
    assert out.dtype == torch.long and out.shape[1] <= max_len + 1
    assert (out[:, 0] == bos).all()
    for t in range(1, out.shape[1]):
        done = (out[:, :t] == eos).any(1)
        want = torch.where(done, eos, model.decode(out[:, :t], memory)[:, -1].argmax(-1))
        assert torch.equal(out[:, t], want), f"step {t}"
    if out.shape[1] < max_len + 1:
        assert (out == eos).any(1).all(), "stopped before max_len with a row unfinished"
    assert not (out[:, :-1] == eos).any(1).all(), "went on after every row had finished"


def _chains(V=7):
    """Table 0: <bos> 3 4 <eos>; table 1: <bos> 5 5 5 ... (never ends); table 2: <bos> <eos>."""
    bos, eos = ch08.BOS, ch08.EOS
    tables = torch.full((3, V, V), -10.0)
    tables[1, :, eos] = -1e9  # table 1 never finishes, not even in a beam's unlikely hypotheses
    tables[:, eos, eos] = 10.0
    tables[0, bos, 3] = tables[0, 3, 4] = tables[0, 4, eos] = 10.0
    tables[1, bos, 5] = tables[1, 5, 5] = 10.0
    tables[2, bos, eos] = 10.0
    return ch08.MarkovModel(tables)


def test_greedy_decode_on_a_model_of_known_output():
    model, B, E = _chains(), ch08.BOS, ch08.EOS
    src = torch.tensor([[0], [1], [2]])
    out = greedy_decode(model, src, 5, B, E)
    assert out.tolist() == [[B, 3, 4, E, E, E], [B, 5, 5, 5, 5, 5], [B, E, E, E, E, E]]  # finished rows pad with <eos>
    _assert_greedy(model, src, out, 5, B, E)
    out = greedy_decode(model, torch.tensor([[0], [2]]), 9, B, E)
    assert out.tolist() == [[B, 3, 4, E], [B, E, E, E]]  # stops once every row has finished
    assert greedy_decode(model, torch.tensor([[1]]), 0, B, E).tolist() == [[B]]


def test_beam_search_on_models_of_known_output():
    model, B, E = _chains(), ch08.BOS, ch08.EOS
    assert beam_search(model, torch.tensor([[0]]), 2, 8, B, E).tolist() == [B, 3, 4, E]
    assert beam_search(model, torch.tensor([[2]]), 3, 8, B, E).tolist() == [B, E]
    assert beam_search(model, torch.tensor([[1]]), 2, 4, B, E).tolist() == [B, 5, 5, 5, 5]  # none finished
    with pytest.raises(ValueError, match="one source"):
        beam_search(model, torch.tensor([[0], [1]]), 2, 4, B, E)
    harness = ch08._models(torch.Generator().manual_seed(0))  # the grader's random tables and its trap
    for case in ch08._greedy_cases(torch.Generator().manual_seed(0)):
        _assert_greedy(*case.args[:2], greedy_decode(*case.args), *case.args[2:])
    for table in range(4):
        src = torch.tensor([[table]])
        torch.testing.assert_close(beam_search(harness, src, 1, 8, B, E),
                                   _up_to_eos(greedy_decode(harness, src, 8, B, E)[0], E))


def test_schedule_has_warmup_then_decay_then_cooldown():
    lrs = [lr_at(s, 1000, 64, 100, 1.0, 0.3) for s in range(1, 1001)]
    assert max(range(1000), key=lambda i: lrs[i]) == 99
    assert lrs[-1] < lrs[700] / 50
    with pytest.raises(ValueError):
        noam_lr(0, 64, 100)


# ----------------------------------------------------------------------------- data for test_exercises.py
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


def ls_one_hot(logits, target, smoothing, ignore_index):
    keep = target != ignore_index
    logits, target = logits[keep], target[keep]
    V = logits.shape[-1]
    want = F.one_hot(target, V).to(logits.dtype) * (1 - smoothing) + smoothing / V
    return -(want * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def beam_heap_of_candidates(model, src, beam_size, max_len, bos, eos):
    """The statement's reading: of all candidates keep the top beam_size; those ending in <eos> finish."""
    import heapq
    memory = model.encode(src)
    live, done = [(0.0, [bos])], []
    for _ in range(max_len):
        cands = []
        for score, toks in live:
            lp = torch.log_softmax(model.decode(torch.tensor([toks]), memory)[0, -1], -1)
            cands += [(score + v, toks + [i]) for v, i in zip(*map(torch.Tensor.tolist, lp.topk(beam_size)))]
        best = heapq.nlargest(beam_size, cands, key=lambda c: c[0])
        done += [c for c in best if c[1][-1] == eos]
        live = [c for c in best if c[1][-1] != eos]
        if not live or max((c[0] for c in done), default=-math.inf) >= live[0][0]:
            break
    return torch.tensor(max(done or live, key=lambda c: c[0])[1])


ALTERNATIVES = {
    "noam_lr": [lambda s, d, w: (d ** -0.5) * (s ** -0.5 if s > w else s / w ** 1.5),
                lambda s, d, w: math.pow(d, -0.5) * min(1 / math.sqrt(s), s * math.pow(w, -1.5))],
    "label_smoothing_loss": [
        ls_one_hot,
        lambda l, t, s, i: ((1 - s) * -F.log_softmax(l, -1)[t != i].gather(-1, t[t != i, None]).mean()
                            - s * F.log_softmax(l, -1)[t != i].mean())],
    "greedy_decode": [greedy_calling_the_model],
    "beam_search": [beam_with_batched_beams, beam_heap_of_candidates],
}


def _greedy_no_early_stop(model, src, max_len, bos, eos):
    ys = greedy_decode(model, src, max_len, bos, eos)
    pad = torch.full((ys.shape[0], max_len + 1 - ys.shape[1]), eos)
    return torch.cat([ys, pad], 1)  # as if the loop had run all max_len steps


def _beam_going_on_after_eos(model, src, beam_size, max_len, bos, eos):
    best = beam_search(model, src, beam_size, max_len, bos, eos)
    return torch.cat([best, torch.full((2,), eos)]) if best[-1] == eos else best


WRONG = [  # rules and shapes: what the feedback must say
    ("noam_lr", lambda s, d, w: torch.tensor(noam_lr(s, d, w)), "the exercise asks for a Python float"),
    ("label_smoothing_loss", lambda l, t, s, i: F.cross_entropy(l, t, label_smoothing=s, ignore_index=i),
     "`F.cross_entropy`"),
    ("label_smoothing_loss", lambda l, t, s, i: (1 - s) * F.nll_loss(F.log_softmax(l, -1), t, ignore_index=i)
     - s * F.log_softmax(l, -1)[t != i].mean(), "`F.nll_loss`"),
    ("greedy_decode", _greedy_no_early_stop, "never stopping early"),
    ("greedy_decode", lambda m, s, n, b, e: greedy_decode(m, s, n, b, e)[:, :-1], "stops too soon"),
    ("beam_search", _beam_going_on_after_eos, "goes on after the <eos>"),
    ("beam_search", lambda m, s, k, n, b, e: beam_search(m, s, k, n, b, e)[:-1], "the best finished hypothesis has length"),
]


def test_the_harness_model_separates_beam_from_greedy():
    g = torch.Generator().manual_seed(0)
    differ = [c for c in ch08._beam_cases(g)
              if not torch.equal(beam_search(*c.args), ch08._beam_greedy(*c.args))]
    assert differ, "no case where beam search beats greedy"


# ----------------------------------------------------------------------------- book.translator (train once, share)
def test_translator_trains_once_and_loads_the_same_model(tmp_path, monkeypatch):
    from book import translator
    from book.data.dates import CharVocab, split_dates
    from book.transformer import TransformerConfig

    monkeypatch.setenv("BOOK_CACHE_DIR", str(tmp_path))
    vocab, split = CharVocab(), split_dates(seed=0, test_fraction=0.1)
    cfg = TransformerConfig(src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), d_model=16, num_heads=2,
                            d_ff=32, num_encoder_layers=1, num_decoder_layers=1, pad_id=vocab.PAD)
    recipe = translator.Recipe(steps=30, batch_size=16, warmup=10, probe=40, eval_every=10, exact_every=20)
    model, hist = translator.trained(cfg, recipe, "iso", split, vocab, "cpu")
    assert [s for s, _, _ in hist.evals] == [10, 20, 30]
    assert ["exact" in e for *_, e in hist.evals] == [False, True, True]  # every 20 steps and at the end
    assert all(0 <= e["accuracy"] <= 1 for *_, e in hist.evals) and len(hist.loss) == 30
    again, hist2 = translator.trained(cfg, recipe, "iso", split, vocab, "cpu")  # from the cache now
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert hist2.loss == hist.loss and hist2.evals == hist.evals
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_chapter08_loads_what_the_chapter_trains():
    """translator.chapter08() must hit the cache entries chapter 08 writes: same config, same recipes."""
    import ast

    import nbformat

    from book import translator
    from book.transformer import TransformerConfig
    from conftest import ROOT

    nb = nbformat.read(ROOT / "chapters" / "08_transformer_from_scratch.ipynb", as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    found = {}
    for node in ast.parse(code).body:  # the chapter's `cfg = TransformerConfig(...)` and its constants line
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) in ("cfg", "(STEPS_ISO, STEPS_ZH, WARMUP, "
                                                                              "LR_SCALE, COOLDOWN)"):
            found[ast.unparse(node.targets[0])] = ast.unparse(node.value)
    vocab = CharVocab()
    cfg = eval(found["cfg"], {"TransformerConfig": TransformerConfig, "vocab": vocab, "len": len})
    steps_iso, steps_zh, warmup, lr_scale, cooldown = eval(found["(STEPS_ISO, STEPS_ZH, WARMUP, LR_SCALE, COOLDOWN)"])
    assert translator.chapter08_config(vocab) == cfg
    assert translator.CHAPTER08_STEPS == {"iso": steps_iso, "zh": steps_zh}
    assert translator.Recipe(steps=1) == translator.Recipe(steps=1, warmup=warmup, lr_scale=lr_scale, cooldown=cooldown)
    with pytest.raises(ValueError, match="target"):
        translator.chapter08("fr")
