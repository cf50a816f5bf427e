"""Chapter 14, projects 2 and 3: question answering over this book, and summarising its pages.

Retrieval-augmented generation in five small steps, all on the book's own text:

* ``book_pages(root)``: the pages of the checkout, read at run time — the Markdown cells of
  ``chapters/*.ipynb`` and the ``chapters/*.md`` pages — cleaned of MyST markup (``clean``);
* ``chunk_page(page)``: each page cut into chunks of whole paragraphs (at most ``max_words``
  words), a chunk beginning with the last paragraph of the one before (the overlap), each chunk
  remembering its page and section;
* ``cosine_top_k``: the chunks whose embeddings (chapter 09's MiniLM) are closest to a
  question's; ``recall_at_k``: how often a page that answers the question is among the first k;
* ``build_prompt``: the question and the retrieved passages, numbered and titled, for SmolLM2's
  chat template (chapter 11), asking for an answer that cites its passages; ``cited_pages``
  reads the citations back;
* ``QUESTIONS``: questions written for the book, each with the page(s) that answer it and the
  key phrases a right answer contains.

For summarisation (project 3), ``intro_and_goals(page)`` splits a chapter's opening into its
introduction and its list of learning goals: the passage to summarise and the book's own
reference, and ``lead_sentence`` is the trivial baseline (the passage's first sentence).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

# the pages this module reads at run time: the build's execution cache re-runs a notebook that uses
# it when their prose changes (book/authoring/exec_cache.py)
READS_PAGES = ("chapters/*.ipynb", "chapters/*.md")


@dataclass(frozen=True)
class Page:
    name: str  # the file's stem: "04_self_attention", "glossary"
    title: str  # its "# " heading
    text: str  # cleaned Markdown, headings kept as "## ..." lines


@dataclass(frozen=True)
class Chunk:
    page: str  # Page.name
    title: str  # Page.title
    section: str  # the "##" heading above the chunk ("" before the first)
    text: str

    def embedding_text(self) -> str:
        """What is embedded: where the chunk is, then the chunk."""
        where = f"{self.title} — {self.section}" if self.section else self.title
        return f"{where}\n{self.text}"


# ----------------------------------------------------------------------------- the book's pages
FENCE = re.compile(r"^(```+|~~~+)\s*(\{[\w:-]+\})?.*?$\n(.*?)^\1\s*$", re.M | re.S)
ROLE_WITH_TARGET = re.compile(r"\{(?:term|doc|ref|numref)\}`([^`<]+?)\s*<[^`>]+>`")
ROLE = re.compile(r"\{(?:term|doc|ref|numref|math|sub|sup|abbr)\}`([^`]+)`")
GLUE = re.compile(r"\{glue(?::\w+)?\}`[^`]+`")
LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
COMMENT = re.compile(r"<!--.*?-->", re.S)
DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:.*$", re.M)


def clean(markdown: str) -> str:
    """MyST Markdown -> plain text a reader would see: code blocks dropped (a directive's own
    text, e.g. a glossary, kept), roles and links replaced by their text, numbers pasted from
    the build (glue) replaced by "N", emphasis and backticks removed."""
    def fence(m):  # ```{glossary} keeps its content; ```python, ```bash, ``` are code
        return m.group(3) if m.group(2) else ""

    text = COMMENT.sub("", FENCE.sub(fence, markdown))
    text = DIRECTIVE_OPTION.sub("", text)
    text = ROLE_WITH_TARGET.sub(r"\1", text)
    text = ROLE.sub(r"\1", GLUE.sub("N", text))
    text = LINK.sub(r"\1", text)
    return text.replace("**", "").replace("`", "")


def _read_page(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text(encoding="utf-8")


def book_pages(root: Path | str | None = None, exclude: Sequence[str] = ()) -> list[Page]:
    """The book's pages from the checkout's ``chapters/`` folder, in file order; ``exclude``
    names pages (file stems) to leave out."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    folder = root / "chapters"
    if not folder.is_dir():
        raise FileNotFoundError(f"no chapters/ folder in {root}")
    pages = []
    for path in sorted(folder.glob("*.ipynb")) + sorted(folder.glob("*.md")):
        if path.stem in exclude:
            continue
        text = clean(_read_page(path))
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
        pages.append(Page(path.stem, title, text))
    return pages


# ----------------------------------------------------------------------------- chunks
def paragraphs(text: str) -> list[tuple[str, str]]:
    """(section, paragraph) pairs: blank-line separated blocks, each with the "##" heading above
    it; headings themselves are not paragraphs."""
    out, section = [], ""
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.strip().splitlines()]
        body = []
        for line in lines:
            if re.match(r"^#{1,6} ", line):
                if line.startswith("## ") or line.startswith("### "):
                    section = line.lstrip("#").strip()
                continue
            body.append(line.strip())
        if body and any(c.isalnum() for c in " ".join(body)):
            out.append((section, " ".join(body)))
    return out


def _pieces(paragraph: str, max_words: int) -> list[str]:
    words = paragraph.split()
    return [" ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)] or [paragraph]


def chunk_page(page: Page, max_words: int = 80, overlap: int = 1) -> list[Chunk]:
    """The page's paragraphs packed into chunks of at most ``max_words`` words; each chunk starts
    with the last ``overlap`` paragraphs of the chunk before when they fit (the overlap), so a
    sentence that needs its neighbour is found with it. A longer paragraph is cut into pieces."""
    if max_words < 1 or overlap < 0:
        raise ValueError(f"need max_words >= 1 and overlap >= 0, got {max_words}, {overlap}")
    items = [(s, piece) for s, p in paragraphs(page.text) for piece in _pieces(p, max_words)]
    size = lambda group: sum(len(p.split()) for _, p in group)  # noqa: E731
    chunks, current = [], []
    for section, par in items:
        if current and (size(current) + len(par.split()) > max_words or section != current[-1][0]):
            chunks.append(current)
            kept = current[-overlap:] if overlap and section == current[-1][0] else []
            while kept and size(kept) + len(par.split()) > max_words:
                kept = kept[1:]
            current = kept
        current = current + [(section, par)]
    if current:
        chunks.append(current)
    return [Chunk(page.name, page.title, group[-1][0], "\n".join(p for _, p in group)) for group in chunks]


def chunk_pages(pages: Sequence[Page], max_words: int = 80, overlap: int = 1) -> list[Chunk]:
    return [c for page in pages for c in chunk_page(page, max_words, overlap)]


# ----------------------------------------------------------------------------- retrieval
def embed(encoder, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, d) unit-length embeddings of ``texts`` by a sentence encoder (``book.pretrained.minilm()``),
    in batches of texts of similar length, so that little time goes into padding."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = encoder.encode([texts[i] for i in order], batch_size=batch_size)  # (N, d), sorted
    out = torch.empty_like(vectors)
    out[torch.tensor(order, device=vectors.device)] = vectors  # back to the order of texts
    return out


def cosine_top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (Q, d), keys (N, d) -> the k largest cosine similarities per query and their
    indices, both (Q, k), best first."""
    q = queries / queries.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (Q, d) unit length
    kn = keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (N, d)
    scores = q @ kn.T  # (Q, N): cosine similarity of every question with every chunk
    return scores.topk(min(k, kn.size(0)), dim=-1)  # (Q, k) values, (Q, k) indices


def recall_at_k(retrieved: Sequence[Sequence[str]], relevant: Sequence[Sequence[str]], k: int) -> float:
    """The share of questions with at least one relevant page among their first ``k`` retrieved
    chunks' pages. retrieved[i]: the pages of question i's chunks, best first; relevant[i]: the
    pages that answer it."""
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} retrieval lists for {len(relevant)} questions")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not retrieved:
        return 0.0
    hits = [bool(set(r[:k]) & set(rel)) for r, rel in zip(retrieved, relevant)]
    return sum(hits) / len(hits)


# ----------------------------------------------------------------------------- the prompt
INSTRUCTIONS = ("Answer the question using only the numbered passages from a book about "
                "Transformers. Answer in one or two sentences and cite the passage you used, "
                "like [1]. If the passages do not answer the question, say so.")


def build_prompt(question: str, chunks: Sequence[Chunk], max_words: int = 80) -> str:
    """The user message for the chat model: instructions, the passages numbered [1], [2], …
    each under its page title, then the question. Each passage is cut to ``max_words`` words."""
    if not question.strip():
        raise ValueError("the question is empty")
    passages = []
    for i, c in enumerate(chunks, start=1):
        words = c.text.split()
        text = " ".join(words[:max_words]) + (" …" if len(words) > max_words else "")
        passages.append(f"[{i}] ({c.title}) {text}")
    return f"{INSTRUCTIONS}\n\n" + "\n\n".join(passages) + f"\n\nQuestion: {question.strip()}"


def cited_pages(answer: str, chunks: Sequence[Chunk]) -> list[str]:
    """The pages of the passages an answer cites as [n], in order of first citation (numbers
    that name no passage are ignored)."""
    pages = []
    for n in re.findall(r"\[(\d+)\]", answer):
        i = int(n) - 1
        if 0 <= i < len(chunks) and chunks[i].page not in pages:
            pages.append(chunks[i].page)
    return pages


def has_key_phrase(answer: str, phrases: Sequence[str]) -> bool:
    """Does the answer contain one of the key phrases (case-insensitive)?"""
    low = answer.lower()
    return any(p.lower() in low for p in phrases)


# ----------------------------------------------------------------------------- questions written for the book
@dataclass(frozen=True)
class Question:
    text: str
    pages: tuple[str, ...]  # the pages (file stems) that answer it
    key: tuple[str, ...]  # phrases a right answer contains, one is enough


QUESTIONS = (  # some use the book's terms, most ask in a learner's own words
    Question("Why are the attention scores divided by the square root of d_k?",
             ("04_self_attention", "glossary"), ("variance", "saturat", "softmax")),
    Question("How do I stop a token from looking at the tokens that come after it?",
             ("04_self_attention", "10_bert_gpt_t5", "glossary"), ("causal", "mask")),
    Question("Why run several smaller attentions side by side instead of one big one?",
             ("05_multi_head_attention", "glossary"), ("head", "subspace", "different")),
    Question("If I shuffle the words of a sentence, what changes in the output of attention?",
             ("06_positional_encoding", "glossary"), ("shuffle", "same", "permut")),
    Question("How can position be encoded by turning the query and key vectors?",
             ("06_positional_encoding", "11_small_llm", "glossary"), ("rotat", "rope")),
    Question("Which method punishes attention between tokens that are far apart?",
             ("06_positional_encoding", "glossary"), ("alibi",)),
    Question("How does an LSTM decide what to throw away from its memory?",
             ("03_sequence_models", "glossary"), ("forget gate", "gate")),
    Question("Why did seq2seq models without attention get worse on long inputs?",
             ("03_sequence_models",), ("one vector", "fixed", "bottleneck")),
    Question("Where does the LayerNorm sit in a pre-LN layer, compared with post-LN?",
             ("07_encoder_decoder", "glossary"), ("before", "inside")),
    Question("Can the output layer reuse the numbers of the embedding table?",
             ("07_encoder_decoder", "08_transformer_from_scratch", "glossary"), ("tying", "tied", "same")),
    Question("What does the book's first full Transformer learn to translate?",
             ("08_transformer_from_scratch", "intro"), ("date",)),
    Question("How is beam search different from always taking the most likely next token?",
             ("08_transformer_from_scratch", "glossary"), ("beams", "candidates", "several")),
    Question("Why train against softened targets instead of one-hot labels?",
             ("08_transformer_from_scratch", "12_vision_transformer", "glossary"), ("smoothing",)),
    Question("How does a tokenizer learn which pieces of words to keep?",
             ("09_huggingface", "glossary"), ("merge", "pair")),
    Question("How do you get one vector for a whole sentence out of MiniLM?",
             ("09_huggingface", "glossary"), ("mean", "average")),
    Question("What does BERT learn to guess during pretraining?",
             ("10_bert_gpt_t5", "glossary"), ("mask", "hidden", "blank")),
    Question("Why does generation get faster when the keys and values are kept?",
             ("10_bert_gpt_t5", "05_multi_head_attention", "glossary"), ("recomput", "again", "past")),
    Question("How does top-p sampling choose which tokens may be sampled?",
             ("10_bert_gpt_t5", "glossary"), ("smallest", "probability")),
    Question("How is SmolLM2 stored so that it takes so little space?",
             ("11_small_llm", "glossary"), ("4-bit", "q4", "quantis", "8-bit")),
    Question("Why do so many heads put most of their attention on the very first token?",
             ("11_small_llm", "glossary"), ("sink",)),
    Question("How can a Transformer read a picture of a handwritten digit?",
             ("12_vision_transformer", "glossary"), ("patch",)),
    Question("Why does a Vision Transformer need more data than a CNN?",
             ("12_vision_transformer", "glossary"), ("inductive bias", "locality")),
    Question("How are raw scores turned into probabilities that sum to one?",
             ("01_linear_algebra", "04_self_attention", "glossary"), ("softmax",)),
    Question("Who works out the gradients when I call backward()?",
             ("02_pytorch_essentials", "glossary"), ("autograd",)),
    Question("Can the book's translator be written with Keras instead?",
             ("a1_keras", "glossary"), ("keras", "backend")),
    Question("Which Python version does the book need?",
             ("setup",), ("3.10",)),
)


# ----------------------------------------------------------------------------- summaries (project 3)
GOALS = re.compile(r"Learning goals\.?", re.I)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(*])")


def intro_and_goals(page: Page) -> tuple[str, str] | None:
    """(introduction, learning goals) of a chapter: the text between its title and its first
    "##" heading, split at "Learning goals" — or None if the page has no such list."""
    head = re.split(r"^## ", page.text, maxsplit=1, flags=re.M)[0]
    parts = GOALS.split(head, maxsplit=1)
    if len(parts) != 2:
        return None
    kept = [line.strip() for line in parts[0].splitlines() if line.strip() and not line.startswith("# ")]
    intro = " ".join(kept)
    goals = " ".join(line.strip() for line in parts[1].splitlines() if line.strip())
    goals = re.sub(r"^By the end of this (chapter|appendix),? you can\s*", "", goals)
    return (intro, goals) if intro and goals else None


def lead_sentence(text: str) -> str:
    """The first sentence of a text: the "lead-1" summary baseline."""
    return SENTENCE_END.split(text.strip(), maxsplit=1)[0]
