"""Chapter 08's date translator: how it is trained and scored, in one place.

Chapter 08 trains it with ``trained(...)``, which goes through ``book.artifacts.cached``: the first
call in a build trains, every later call with the same config, recipe and code — chapter 13,
appendix A, a reader's kernel — loads the same weights and the same training history instead of
training again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from book import artifacts
from book.data.dates import encode_pairs, examples, training_batches
from book.decoding import beam_search, greedy_decode
from book.training import History, lr_at, teacher_forcing_loss, train, transformer_adam
from book.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class Recipe:
    """How chapter 08 trains: Adam with the warm-up schedule, label smoothing, clipping."""

    steps: int
    batch_size: int = 64
    seed: int = 0
    warmup: int = 200
    lr_scale: float = 0.5
    cooldown: float = 0.3
    smoothing: float = 0.1
    clip: float = 1.0
    probe: int = 500  # held-out dates measured during training
    eval_every: int = 20  # token accuracy (teacher-forced, cheap) every eval_every steps ...
    exact_every: int = 200  # ... and exact match (greedy decoding) every exact_every steps and at the end


def exact_match(model, pairs, vocab, decode="greedy", beam_size=4, batch_size=500):
    """Share of (source, target) pairs the model translates exactly right."""
    model.eval()
    device = next(model.parameters()).device
    right = 0
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        src, _ = encode_pairs(chunk, vocab)
        src = src.to(device)
        if decode == "greedy":
            outs = greedy_decode(model, src, max_len=24, bos=vocab.BOS, eos=vocab.EOS)
            texts = [vocab.decode(o[1:]) for o in outs]
        else:
            texts = [vocab.decode(beam_search(model, s[None], beam_size, 24, vocab.BOS, vocab.EOS)[1:])
                     for s in src]
        right += sum(text == t for text, (_, t) in zip(texts, chunk))
    return right / len(pairs)


def token_accuracy(model, src, tgt, pad):
    """Share of real target tokens predicted right with teacher forcing: src (B, S), tgt (B, T)."""
    with torch.no_grad():
        logits = model(src, tgt[:, :-1])  # (B, T-1, V)
    want = tgt[:, 1:]
    real = want != pad
    return ((logits.argmax(-1) == want) & real).sum().item() / real.sum().item()


def fit(cfg: TransformerConfig, recipe: Recipe, target, split, vocab, device):
    """Train a fresh Transformer on ``target`` ("iso", "zh", ...); returns (model, History)."""
    r = recipe
    torch.manual_seed(r.seed)
    model = Transformer(cfg).to(device)
    probe = examples(split.test[:r.probe], target, seed=2)  # held-out dates, a fixed set
    probe_src, probe_tgt = (t.to(device) for t in encode_pairs(probe, vocab))
    now = {"step": 0}

    def evaluate(m):  # every eval_every steps: token accuracy; every exact_every: exact match too
        scores = {"accuracy": token_accuracy(m, probe_src, probe_tgt, vocab.PAD)}
        if now["step"] % r.exact_every == 0 or now["step"] == r.steps:
            scores["exact"] = exact_match(m, probe, vocab)
        return scores

    hist = train(model, training_batches(split.train, target, vocab, batch_size=r.batch_size, seed=r.seed),
                 lambda m, batch: teacher_forcing_loss(m, *batch, vocab.PAD, smoothing=r.smoothing), r.steps,
                 optimizer=transformer_adam(model),  # Adam(β = 0.9, 0.98; ε = 1e-9), rate from the schedule
                 schedule=lambda step: lr_at(step, r.steps, cfg.d_model, r.warmup, r.lr_scale, r.cooldown),
                 clip=r.clip, evaluate=evaluate, eval_every=r.eval_every,
                 on_step=lambda step, loss: now.update(step=step), desc=f"training ({target})")
    return model, hist


def _pack(model, hist: History) -> dict:
    """(model, History) -> a dict of tensors, the form book.artifacts saves."""
    nan, f64 = float("nan"), torch.float64
    return {**{f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()},
            "hist.loss": torch.tensor(hist.loss, dtype=f64), "hist.lr": torch.tensor(hist.lr, dtype=f64),
            "hist.seconds": torch.tensor(hist.seconds, dtype=f64),
            "evals.step": torch.tensor([s for s, _, _ in hist.evals]),
            "evals.seconds": torch.tensor([t for _, t, _ in hist.evals], dtype=f64),
            "evals.accuracy": torch.tensor([e["accuracy"] for *_, e in hist.evals], dtype=f64),
            "evals.exact": torch.tensor([e.get("exact", nan) for *_, e in hist.evals], dtype=f64)}


def _unpack(saved: dict, cfg: TransformerConfig, device):
    model = Transformer(cfg)
    model.load_state_dict({k[len("model."):]: v for k, v in saved.items() if k.startswith("model.")})
    hist = History(loss=saved["hist.loss"].tolist(), lr=saved["hist.lr"].tolist(),
                   seconds=saved["hist.seconds"].tolist())
    for step, sec, acc, exact in zip(*(saved[f"evals.{k}"].tolist() for k in ("step", "seconds", "accuracy",
                                                                              "exact"))):
        hist.evals.append((int(step), sec, {"accuracy": acc} if exact != exact else
                           {"accuracy": acc, "exact": exact}))  # exact != exact: NaN, not measured
    return model.to(device).eval(), hist


def trained(cfg: TransformerConfig, recipe: Recipe, target, split, vocab, device):
    """Chapter 08's model for ``target``, trained once per build and cached: (model, History)."""
    from book import attention, layers, multihead, positional, training, transformer
    from book.data import dates
    import book.translator as this

    saved = artifacts.cached(f"ch08-date-translator-{target}",
                             {"model": cfg, "recipe": recipe, "split": (len(split.train), len(split.test))},
                             lambda: _pack(*fit(cfg, recipe, target, split, vocab, device)),
                             code=(this, transformer, training, layers, multihead, attention, positional, dates))
    return _unpack(saved, cfg, device)


# chapter 08's sizes and runs: the models that later chapters and `python -m book.serve` load
CHAPTER08_STEPS = {"iso": 600, "zh": 500}


def chapter08_config(vocab) -> TransformerConfig:
    """The configuration chapter 08 trains: d_model 64, 4 heads, 2 + 2 layers, one shared vocabulary."""
    return TransformerConfig(src_vocab_size=len(vocab), tgt_vocab_size=len(vocab), d_model=64, num_heads=4,
                             d_ff=128, num_encoder_layers=2, num_decoder_layers=2, pad_id=vocab.PAD)


def chapter08(target="iso", device="cpu"):
    """Chapter 08's trained translator for ``target`` ("iso" or "zh"), from the cache (trained on first use).

    Returns ``(model, vocab, split)``: the model in eval mode on ``device``, the character vocabulary and
    the train/test split of dates it was trained and scored on.
    """
    from book.data.dates import CharVocab, split_dates

    if target not in CHAPTER08_STEPS:
        raise ValueError(f"target must be one of {sorted(CHAPTER08_STEPS)}, not {target!r}")
    vocab = CharVocab()
    split = split_dates(seed=0, test_fraction=0.1)
    model, _ = trained(chapter08_config(vocab), Recipe(steps=CHAPTER08_STEPS[target]), target, split, vocab, device)
    return model, vocab, split
