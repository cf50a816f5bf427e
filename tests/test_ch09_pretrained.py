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
