"""Chapter 09: MiniLM in the book's own encoder equals Hugging Face's, and the Shakespeare data set.

The model tests load the real checkpoint (installed by requirements.txt as a package; nothing is
downloaded): the book's ``BertEncoder`` must give the same last hidden states as
``transformers.AutoModel`` and the same sentence embeddings as ``SentenceTransformer.encode``.
"""
import functools

import pytest
import torch

from book import convert, pretrained
from book.data import shakespeare

# sentences of different lengths, so the batch is padded; one Chinese, one with a rare word
SENTENCES = ["The cat sat on the mat.",
             "Attention is all you need, the paper said, and then the model was trained for days.",
             "Tokenisation splits an unfamiliar word like Transformerification into pieces.",
             "你好，世界", "Hi"]


@functools.lru_cache(maxsize=1)
def _minilm():
    return pretrained.minilm()


def test_book_encoder_equals_transformers_on_real_tokens():
    from transformers import AutoModel

    p = _minilm()
    batch = p.tokenize(SENTENCES)
    assert batch["attention_mask"].sum(1).unique().numel() == len(SENTENCES), "lengths must differ (padding)"
    hf = AutoModel.from_pretrained(str(pretrained.minilm_dir())).eval()
    with torch.no_grad():
        ours = p.model(batch["input_ids"], batch["attention_mask"])
        theirs = hf(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    assert ours.shape == theirs.shape == (len(SENTENCES), real.size(1), 384)
    diff = (ours - theirs)[real].abs().max().item()
    assert diff <= 1e-5, f"book encoder vs transformers: max |difference| {diff:.2e} on real tokens"


def test_sentence_embeddings_equal_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    p = _minilm()
    st = SentenceTransformer(str(pretrained.minilm_dir()), device="cpu")
    ours = p.encode(SENTENCES)
    theirs = st.encode(SENTENCES, convert_to_tensor=True)
    assert ours.shape == (len(SENTENCES), 384)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-5, f"book embeddings vs SentenceTransformer.encode: max |difference| {diff:.2e}"


def test_padding_does_not_change_a_sentence_embedding():
    p = _minilm()
    alone = p.encode(SENTENCES[:1])
    padded = p.encode(SENTENCES[:2])[:1]  # padded to the second sentence's length
    assert (alone - padded).abs().max() < 1e-5


def test_encode_rejects_a_string_and_handles_an_empty_list():
    p = _minilm()
    with pytest.raises(TypeError, match="list of strings"):
        p.encode("one sentence, not a list")
    assert p.encode([]).shape == (0, 384)


def test_every_weight_is_mapped_and_the_map_runs_both_ways():
    from safetensors.torch import load_file

    state = load_file(pretrained.minilm_dir() / "model.safetensors")
    model = pretrained.BertEncoder()
    ours = convert.to_book(state, convert.HF_BERT)
    assert set(ours) == set(model.state_dict()), "HF_BERT must map every MiniLM tensor onto BertEncoder"
    back = convert.from_book(ours, convert.HF_BERT)
    kept = {k for k in state if not convert.HF_BERT.drops(k)}
    assert set(back) == kept and all(torch.equal(back[k], state[k]) for k in kept)
    assert {k for k in state if convert.HF_BERT.drops(k)} == {"pooler.dense.weight", "pooler.dense.bias",
                                                              "embeddings.position_ids"}


def test_a_checkpoint_of_another_shape_is_refused_clearly():
    from safetensors.torch import load_file

    state = load_file(pretrained.minilm_dir() / "model.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        convert.load(pretrained.BertEncoder(pretrained.BertConfig(num_layers=4)), state, convert.HF_BERT)
    with pytest.raises(ValueError, match="not a BERT"):
        pretrained.BertConfig.from_hf({"model_type": "gpt2"})


def test_too_long_an_input_is_refused_with_the_limit():
    model = pretrained.BertEncoder(pretrained.BertConfig(num_layers=1, max_len=8))
    with pytest.raises(ValueError, match="learned positions for 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(pretrained.mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


# ----------------------------------------------------------------------------- Shakespeare
def test_plays_are_the_folio_with_its_three_kinds():
    plays = shakespeare.plays()
    assert len(plays) == 36
    counts = {g: sum(p.genre == g for p in plays) for g in shakespeare.GENRES}
    assert counts == {"comedy": 14, "history": 10, "tragedy": 12}
    assert sum(len(p.editions) == 2 for p in plays) == 35  # Troilus and Cressida: modern edition only


def test_split_is_by_whole_plays_and_both_editions_stay_together():
    train, test = shakespeare.split_plays(shakespeare.plays(), test_per_genre=3, seed=0)
    assert len(test) == 9 and len(train) == 27
    assert not {p.title for p in train} & {p.title for p in test}
    assert {p.genre for p in test} == set(shakespeare.GENRES)
    for p in test:  # a test play's passages, from both editions, never come from a training play
        assert {q.play for q in shakespeare.passages(p, 10)} == {p.title}


def test_headers_speaker_labels_and_stage_directions_are_removed():
    text = ("The Project Gutenberg EBook of Hamlet\n*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n"
            "PERSONS REPRESENTED.\nHAMLET, Prince of Denmark.\n\nACT I.\n\nSCENE 1.\n\n"
            "[Enter Barnardo.]\n\nBARNARDO.\nWho's there?\n\n  Fran. Nay answer me\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nLicence text.\n")
    assert shakespeare.spoken_lines(text) == ["Who's there?", "Nay answer me"]


def test_passages_have_about_the_asked_length():
    plays = shakespeare.plays()
    found = shakespeare.passages(plays[0], 20, words=40)
    assert len(found) == 20
    assert all(40 <= len(p.text.split()) <= 80 for p in found)
    assert all(p.label == shakespeare.GENRES.index(p.genre) for p in found)


# ---- exercise data (grader tests)
# Data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG), and two checks that the
# grader's own ground truths — GPT-2's and BERT's layers computed from their checkpoints' names —
# equal transformers' GPT-2 and the book's BertEncoder.
import copy  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from book import bpe  # noqa: E402
from book.grader import ch09  # noqa: E402
from book.layers import EncoderLayer, LayerOptions, causal_mask  # noqa: E402


# 1. one BPE training step
def bpe_step_sorted(splits, counts, vocab):
    """Counts in a Counter; the winner is the first of all pairs sorted by (-count, ids)."""
    from collections import Counter

    pairs = Counter()
    for word, symbols in splits.items():
        for p in zip(symbols, symbols[1:]):
            pairs[p] += counts[word]
    pair = sorted(pairs, key=lambda p: (-pairs[p], vocab[p[0]], vocab[p[1]]))[0]
    new = {}
    for word, symbols in splits.items():
        out = list(symbols)
        i = 0
        while i < len(out) - 1:
            if (out[i], out[i + 1]) == pair:
                out[i:i + 2] = [out[i] + out[i + 1]]
            i += 1
        new[word] = out
    return pair, new


def bpe_step_on_a_deep_copy(splits, counts, vocab):
    """Edits in place — but a deep copy of its own, so the caller's splits stay as they were."""
    splits = copy.deepcopy(splits)
    pairs = {}
    for word, symbols in splits.items():
        for p in zip(symbols, symbols[1:]):
            pairs[p] = pairs.get(p, 0) + counts[word]
    best = max(pairs.values())
    pair = min((p for p in pairs if pairs[p] == best), key=lambda p: (vocab[p[0]], vocab[p[1]]))
    for symbols in splits.values():
        i = 0
        while i < len(symbols) - 1:
            if symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
                symbols[i] += symbols.pop(i + 1)
            i += 1
    return pair, splits


def bpe_step_with_book_bpe(splits, counts, vocab):
    pair = bpe.best_pair(bpe.pair_counts(splits, counts), vocab)
    return pair, {w: bpe.merge_pair(s, pair) for w, s in splits.items()}


def bpe_step_in_place(splits, counts, vocab):
    """Right pair, right merge — assigned into the caller's splits."""
    pair, new = bpe_step_sorted(splits, counts, vocab)
    splits.update(new)
    return pair, splits


def bpe_step_adds_to_vocab(splits, counts, vocab):
    pair, new = bpe_step_sorted(splits, counts, vocab)
    vocab[pair[0] + pair[1]] = len(vocab)
    return pair, new


# 2. masked mean pooling
def pool_by_selection(hidden, attention_mask, normalize=True):
    real = attention_mask.bool()
    out = torch.stack([hidden[b][real[b]].mean(0) for b in range(hidden.shape[0])])
    return F.normalize(out, dim=-1) if normalize else out


def pool_masked_fill(hidden, attention_mask, normalize=True):
    pad = ~attention_mask.bool()[..., None]
    total = hidden.masked_fill(pad, 0.0).sum(1)
    mean = total / (~pad).sum(1).to(hidden.dtype)
    return mean / torch.linalg.vector_norm(mean, dim=-1, keepdim=True) if normalize else mean


# 3. GPT-2's names
def gpt2_transpose_then_chunk(state, i):
    p = f"h.{i}."
    out = {}
    for leaf, (w, b) in {"w_q": (0, 0), "w_k": (1, 1), "w_v": (2, 2)}.items():
        out[f"self_attn.{leaf}.weight"] = state[p + "attn.c_attn.weight"].t().chunk(3)[w].contiguous()
        out[f"self_attn.{leaf}.bias"] = state[p + "attn.c_attn.bias"].chunk(3)[b].clone()
    for ours, theirs in (("self_attn.w_o", "attn.c_proj"), ("ffn.linear1", "mlp.c_fc"),
                         ("ffn.linear2", "mlp.c_proj")):
        out[f"{ours}.weight"] = state[p + theirs + ".weight"].t().clone()
        out[f"{ours}.bias"] = state[p + theirs + ".bias"].clone()
    for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
        out[f"{ours}.weight"], out[f"{ours}.bias"] = state[p + theirs + ".weight"], state[p + theirs + ".bias"]
    return out


def gpt2_with_prefix(state, i):
    return {f"h.{i}.{k}": v for k, v in ch09.gpt2_block_to_book(state, i).items()}


def gpt2_with_the_mask_buffer(state, i):
    out = ch09.gpt2_block_to_book(state, i)
    if f"h.{i}.attn.bias" in state:
        out["self_attn.bias"] = state[f"h.{i}.attn.bias"]
    return out


def gpt2_pops_from_state(state, i):
    out = ch09.gpt2_block_to_book(state, i)
    state.pop("wte.weight")
    return out


def gpt2_fc_untransposed(state, i):
    out = ch09.gpt2_block_to_book(state, i)
    out["ffn.linear1.weight"] = state[f"h.{i}.mlp.c_fc.weight"]
    return out


# 4. one BERT layer
def bert_layer_by_copied(state, layer_index, cfg):
    from book import convert

    p = f"encoder.layer.{layer_index}."
    names = {"self_attn.w_q": "attention.self.query", "self_attn.w_k": "attention.self.key",
             "self_attn.w_v": "attention.self.value", "self_attn.w_o": "attention.output.dense",
             "norm1": "attention.output.LayerNorm", "ffn.linear1": "intermediate.dense",
             "ffn.linear2": "output.dense", "norm2": "output.LayerNorm"}
    ours = {f"{a}.{leaf}": state[f"{p}{b}.{leaf}"] for a, b in names.items() for leaf in ("weight", "bias")}
    layer = EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff,
                         options=LayerOptions(activation=cfg.activation, norm_eps=cfg.norm_eps))
    return convert.copied(layer, ours).eval()


def bert_layer_via_hf_map(state, layer_index, cfg):
    from book import convert

    layer = ch09.load_bert_layer(state, layer_index, cfg)
    convert.to_book(state, convert.HF_BERT)
    return layer


def bert_layer_state_dict(state, layer_index, cfg):
    return ch09.load_bert_layer(state, layer_index, cfg).state_dict()


def bert_layer_with_dropout(state, layer_index, cfg):
    layer = ch09.load_bert_layer(state, layer_index, cfg)
    for m in layer.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    return layer.train()


def bert_layer_gelu_tanh(state, layer_index, cfg):
    layer = ch09.load_bert_layer(state, layer_index, cfg)
    fixed = EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff,
                         options=LayerOptions(activation="gelu_tanh", norm_eps=cfg.norm_eps))
    fixed.load_state_dict(layer.state_dict())
    return fixed.eval()


# 5. MiniLM's size
def count_by_building():
    model = pretrained.BertEncoder()
    return {"embeddings": sum(p.numel() for p in model.embeddings.parameters()),
            "per_layer": sum(p.numel() for p in model.layers[0].parameters()),
            "total_encoder": sum(p.numel() for p in model.parameters())}


REFERENCES = {"gpt2_block_to_book": ch09.gpt2_block_to_book, "load_bert_layer": ch09.load_bert_layer}

BUGGY = {m.name: getattr(m.fn, "plain", m.fn)
         for ex in (ch09.BPE_STEP, ch09.GPT2_MAP, ch09.BERT_LAYER, ch09.PREDICT) for m in ex.mistakes}
BUGGY["an argument changed in place"] = bpe_step_in_place  # the catalogue's entry is a probe

ALTERNATIVES = {
    "bpe_merge_step": [bpe_step_sorted, bpe_step_on_a_deep_copy],
    "masked_mean_pool": [pool_by_selection, pool_masked_fill],
    "gpt2_block_to_book": [gpt2_transpose_then_chunk],
    "load_bert_layer": [bert_layer_by_copied],
    "predict_minilm_parameters": [count_by_building],
}

WRONG = [  # the rules the statements state, and what the feedback must say about other slips
    ("bpe_merge_step", bpe_step_with_book_bpe, "does not allow"),
    ("bpe_merge_step", bpe_step_adds_to_vocab, "an argument changed in place"),
    ("bpe_merge_step", lambda s, c, v: (list(bpe_step_sorted(s, c, v)[0]), bpe_step_sorted(s, c, v)[1]),
     "as a tuple"),
    ("bpe_merge_step", lambda s, c, v: (bpe_step_sorted(s, c, v)[0],
                                        {w: tuple(x) for w, x in bpe_step_sorted(s, c, v)[1].items()}),
     "list of strings"),
    ("masked_mean_pool", lambda h, m, n=True: pool_by_selection(h, m, n)[:, None], "Drop the token axis"),
    ("masked_mean_pool", lambda h, m, n=True: pretrained.mean_pool(h, m), "does not allow"),
    ("masked_mean_pool", lambda h, m, n=True: pool_by_selection(h, m, n).numpy(), "numpy"),
    ("gpt2_block_to_book", gpt2_with_prefix, "still start with `h."),
    ("gpt2_block_to_book", gpt2_with_the_mask_buffer, "causal mask"),
    ("gpt2_block_to_book", gpt2_pops_from_state, "changed the checkpoint"),
    ("gpt2_block_to_book", gpt2_fc_untransposed, "transposed"),
    ("gpt2_block_to_book", lambda s, i: list(ch09.gpt2_block_to_book(s, i).values()), "return a dict"),
    ("load_bert_layer", bert_layer_via_hf_map, "does not allow"),
    ("load_bert_layer", bert_layer_state_dict, "return the layer itself"),
    ("load_bert_layer", bert_layer_with_dropout, "training mode"),
    ("load_bert_layer", bert_layer_gelu_tanh, "activation"),
    ("predict_minilm_parameters", lambda: {k: float(v) for k, v in ch09.predict_minilm_parameters().items()},
     "Python int"),
    ("predict_minilm_parameters", lambda: {"embeddings": 1, "per_layer": 2}, "Use exactly the keys"),
    ("predict_minilm_parameters", lambda: tuple(ch09.predict_minilm_parameters().values()), "return a dict"),
    ("predict_minilm_parameters", lambda: dict(ch09.predict_minilm_parameters(), per_layer=1),
     "`per_layer` is too small"),
]


def test_the_graders_gpt2_block_equals_transformers():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=3, n_head=2,
                                 bos_token_id=0, eos_token_id=0)).eval()
    state = {k: v + 0.1 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}  # biases and LayerNorms away from 0 and 1
    model.load_state_dict(state)
    with torch.no_grad():
        hidden = model(torch.randint(0, 50, (2, 6)), output_hidden_states=True).hidden_states
        x, want = hidden[1], hidden[2]  # block 1's input and output
        ours = ch09._gpt2_forward(state, 1, x, 2)
        layer = EncoderLayer(16, 2, 64, norm_first=True, options=LayerOptions(activation="gelu_tanh")).eval()
        layer.load_state_dict(ch09.gpt2_block_to_book(state, 1))
        book_out = layer(x, causal_mask(6))
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(book_out, want, atol=1e-5, rtol=1e-4)


def test_the_graders_bert_layer_equals_the_book_encoder():
    cfg = ch09._bert_cfg(12, 3, 48, 3)
    state = ch09._bert_state(torch.Generator().manual_seed(0), cfg)
    model = convert.load(pretrained.BertEncoder(cfg), state, convert.HF_BERT).eval()
    x, _, is_real = ch09._bert_inputs(12, 0)
    with torch.no_grad():
        want = model.layers[2](x, is_real[:, None, None, :])
    torch.testing.assert_close(ch09._bert_forward(state, 2, cfg, x, is_real), want, atol=1e-5, rtol=1e-4)
