"""Graded exercises of chapter 08 — the full Transformer: schedule, loss, greedy and beam decoding."""
from __future__ import annotations

import math

import torch

from book.decoding import beam_search, greedy_decode
from book.grader.core import Case, Exercise, Mistake
from book.training import label_smoothing_loss, noam_lr

CHAPTER = "08_transformer_from_scratch"
PAD, BOS, EOS = 0, 1, 2


# ----------------------------------------------------------------------------- 1. the warm-up schedule
def _noam_cases(g):
    combos = [(1, 512, 4000), (100, 512, 4000), (4000, 512, 4000), (20000, 512, 4000),
              (1, 64, 200), (199, 64, 200), (200, 64, 200), (1500, 64, 200)]
    return [Case(f"step {s}, d_model {d}, warmup {w}", (s, d, w)) for s, d, w in combos]


NOAM = Exercise(
    id=f"{CHAPTER}/noam_lr",
    title="The warm-up learning-rate schedule",
    reference=noam_lr,
    cases=_noam_cases,
    atol=1e-12,
    rtol=1e-6,
    returns=float,
    mistakes=[
        Mistake("steps counted from 0 (an off-by-one)", lambda s, d, w: noam_lr(s + 1, d, w),
                "the formula is for step >= 1 as given: don't add 1 to step."),
        Mistake("max instead of min", lambda s, d, w: d**-0.5 * max(s**-0.5, s * w**-1.5),
                "the rate is the smaller of the two branches: the rising line during warm-up, then the 1/√step decay."),
        Mistake("warmup^-0.5 instead of warmup^-1.5", lambda s, d, w: d**-0.5 * min(s**-0.5, s * w**-0.5),
                "the warm-up branch is step · warmup^-1.5, so the two branches meet exactly at step = warmup."),
        Mistake("the d_model^-0.5 factor missing", lambda s, d, w: min(s**-0.5, s * w**-1.5),
                "multiply by d_model ** -0.5: wider models get smaller steps."),
        Mistake("d_model^+0.5 instead of d_model^-0.5", lambda s, d, w: d**0.5 * min(s**-0.5, s * w**-1.5),
                "wider models get *smaller* steps: the factor is d_model ** -0.5 (a minus sign in the exponent)."),
        Mistake("step^+0.5 instead of step^-0.5 in the decay", lambda s, d, w: d**-0.5 * min(s**0.5, s * w**-1.5),
                "after warm-up the rate decays like 1/√step: step ** -0.5."),
        Mistake("the warm-up branch step / warmup instead of step · warmup^-1.5",
                lambda s, d, w: d**-0.5 * min(s**-0.5, s / w),
                "the rising line is step · warmup ** -1.5, so that at step = warmup it meets warmup ** -0.5."),
    ],
)


# ----------------------------------------------------------------------------- 2. label smoothing
def _ls_cases(g):
    def case(n, v, smoothing, n_ignored, scale=1.0, ignore=PAD):
        logits = torch.randn(n, v, generator=g) * scale
        target = torch.randint(0, v, (n,), generator=g)
        target[target == ignore] = (ignore + 1) % v  # the ignored class only where we put it
        target[torch.randperm(n, generator=g)[:n_ignored]] = ignore
        return Case(f"{n} positions, {v} classes, smoothing {smoothing}, {n_ignored} ignored", (logits, target, smoothing, ignore))

    return [case(6, 5, 0.0, 0), case(10, 7, 0.1, 3), case(32, 12, 0.2, 8), case(8, 6, 0.1, 2, ignore=4),
            case(16, 9, 0.1, 4, scale=300.0)]


def _ls_unmasked_smoothing(logits, target, smoothing, ignore_index):
    log_p = torch.log_softmax(logits, -1)
    keep = target != ignore_index
    nll = -log_p.gather(-1, target.clamp(min=0)[:, None]).squeeze(-1)
    return (1 - smoothing) * nll[keep].mean() + smoothing * (-log_p.mean(-1)).mean()


def _ls_other_classes(logits, target, smoothing, ignore_index):
    log_p = torch.log_softmax(logits, -1)
    V = logits.size(-1)
    dist = torch.full_like(log_p, smoothing / (V - 1)).scatter(-1, target[:, None], 1 - smoothing)
    loss = -(dist * log_p).sum(-1)
    return loss[target != ignore_index].mean()


def _ls_mean_over_all(logits, target, smoothing, ignore_index):
    log_p = torch.log_softmax(logits, -1)
    nll = -log_p.gather(-1, target[:, None]).squeeze(-1)
    per = (1 - smoothing) * nll + smoothing * (-log_p.mean(-1))
    per = per * (target != ignore_index)
    return per.mean()


def _ls_unstable(logits, target, smoothing, ignore_index):
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    log_p = torch.log(p)
    nll = -log_p.gather(-1, target[:, None]).squeeze(-1)
    loss = (1 - smoothing) * nll + smoothing * (-log_p.mean(-1))
    return loss[target != ignore_index].mean()


def _ls_variant(axis=-1, reduce="mean", smooth="mean", ignore=True):
    def loss_fn(logits, target, smoothing, ignore_index):
        log_p = torch.log_softmax(logits, dim=axis)
        nll = -log_p.gather(-1, target.clamp(min=0)[:, None]).squeeze(-1)
        spread = -log_p.sum(-1) if smooth == "sum" else -log_p.mean(-1)
        loss = (1 - smoothing) * nll + smoothing * spread
        keep = target != ignore_index if ignore else torch.ones_like(target, dtype=torch.bool)
        return loss[keep].sum() if reduce == "sum" else loss[keep].mean()

    return loss_fn


LABEL_SMOOTHING = Exercise(
    id=f"{CHAPTER}/label_smoothing_loss",
    title="Label smoothing",
    reference=label_smoothing_loss,
    cases=_ls_cases,
    atol=1e-5,
    rtol=1e-4,
    nan_hint="exp() of large logits overflows: use torch.log_softmax (it subtracts the max for you)",
    forbidden=("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.CrossEntropyLoss",
               "torch.nn.NLLLoss"),
    forbidden_why="build the smoothed cross-entropy from torch.log_softmax yourself (compare with "
                  "F.cross_entropy outside your function)",
    mistakes=[
        Mistake("smoothing loss counted at ignored positions", _ls_unmasked_smoothing,
                "leave out every position whose target is ignore_index — both the true-class and the smoothing term."),
        Mistake("ε spread over the other V−1 classes", _ls_other_classes,
                "PyTorch's convention spreads ε uniformly over all V classes (the right one included): "
                "target distribution (1-ε)·one_hot + ε/V."),
        Mistake("a mean over all positions, ignored ones included", _ls_mean_over_all,
                "divide by the number of positions that are not ignored, not by all of them."),
        Mistake("log(softmax) computed naively", _ls_unstable,
                "exp() of logits in the hundreds overflows; use torch.log_softmax."),
        Mistake("the log-softmax over the positions (dim=0) instead of the classes", _ls_variant(axis=0),
                "each position's V logits give one distribution over the classes: log_softmax over dim=-1."),
        Mistake("a sum over the positions instead of a mean", _ls_variant(reduce="sum"),
                "average over the positions that are not ignored (F.cross_entropy's reduction='mean')."),
        Mistake("ε times the sum of -log p over the classes instead of their mean", _ls_variant(smooth="sum"),
                "ε is spread as ε/V on each class, so the smoothing term is ε · mean over the classes of -log p."),
        Mistake("ignore_index not used (every position counted)", _ls_variant(ignore=False),
                "leave out the positions whose target is ignore_index, from the terms and from the count."),
    ],
)


# ----------------------------------------------------------------------------- 3–4. decoding, on models the harness builds
class MarkovModel:
    """A stand-in for a trained Transformer: the next token depends on the last token and on which
    table the source selects (its first token). It has the same encode/decode interface."""

    def __init__(self, tables: torch.Tensor):
        self.tables = tables  # (K, V, V) logits: tables[k, previous token] -> next-token logits

    def encode(self, src):
        return (src[:, :1].clone(),)  # memory: (B, 1) the table index

    def decode(self, tgt, memory):
        (which,) = memory
        table = self.tables[which[:, 0]]  # (B, V, V)
        return torch.gather(table, 1, tgt[:, :, None].expand(-1, -1, table.size(-1)))  # (B, T, V)

    def __call__(self, src, tgt):
        return self.decode(tgt, self.encode(src))

    def __repr__(self):
        return f"MarkovModel({self.tables.shape[0]} tables, vocabulary {self.tables.shape[-1]})"


def _table(g, V, eos_bias):
    t = torch.randn(V, V, generator=g) * 2
    t[:, PAD] = t[:, BOS] = -1e9  # never predict <pad> or <bos>
    t[:, EOS] += eos_bias
    return t + 4 * torch.randn(V, 1, generator=g)  # row shifts: same probabilities, different raw logits


def _trap_table(V):
    """Greedy takes token 3 (p≈.5) then wanders; beam finds <bos> 4 <eos> (p≈.4 · .9)."""
    t = torch.full((V, V), -1e9)
    t[BOS, 3], t[BOS, 4] = math.log(0.5), math.log(0.4)
    t[BOS, 5] = math.log(0.1)
    for tok in range(3, V):
        t[tok, EOS] = math.log(0.25)
        for nxt in range(3, V):
            t[tok, nxt] = math.log(0.75 / (V - 3))
    t[4, :] = -1e9
    t[4, EOS], t[4, 5] = math.log(0.9), math.log(0.1)
    t[EOS, EOS] = 0.0
    t[3] += 3.0  # shifting a row of logits changes no probability, only raw-logit sums
    t[4] -= 2.0
    return t


class PositionalMarkovModel(MarkovModel):
    """A MarkovModel whose <eos> logit also grows with the position, as a real decoder's may depend
    on the whole prefix: decode(tgt) must be given the whole prefix, not only its newest token."""

    def __init__(self, tables: torch.Tensor, eos_ramp: float = 0.0):
        super().__init__(tables)
        self.eos_ramp = eos_ramp

    def decode(self, tgt, memory):
        logits = super().decode(tgt, memory)  # (B, T, V)
        if self.eos_ramp:
            position = torch.arange(tgt.size(1), device=logits.device, dtype=logits.dtype)  # (T,)
            logits = logits.index_add(-1, torch.tensor([EOS], device=logits.device),
                                      self.eos_ramp * position[None, :, None].expand(logits.size(0), -1, 1))
        return logits

    def __repr__(self):
        return f"PositionalMarkovModel({self.tables.shape[0]} tables, vocabulary {self.tables.shape[-1]})"


def _models(g, V=7):
    tables = torch.stack([_table(g, V, 1.0), _table(g, V, 2.5), _table(g, V, -3.0), _trap_table(V)])
    return MarkovModel(tables)


def _greedy_cases(g):
    model = _models(g)
    ramped = PositionalMarkovModel(model.tables, eos_ramp=1.5)  # <eos> grows likelier with the length
    return [
        Case("a batch of 4 sources (one never produces <eos>), max_len 6",
             (model, torch.tensor([[0, 5], [1, 6], [2, 3], [3, 3]]), 6, BOS, EOS)),
        Case("a single source, max_len 10", (model, torch.tensor([[1, 4, 4]]), 10, BOS, EOS)),
        Case("a batch where every row ends early, max_len 12", (model, torch.tensor([[0], [3], [0]]), 12, BOS, EOS)),
        Case("a model whose next token depends on the whole prefix, a batch of 3, max_len 9",
             (ramped, torch.tensor([[1], [2], [0]]), 9, BOS, EOS)),
    ]


def _greedy_variant(stop=True, bos_out=True, position=-1, stop_when_any=False, early=True, newest_only=False,
                    axis=False):
    @torch.no_grad()
    def decode(model, src, max_len, bos, eos):
        memory = model.encode(src)
        ys = torch.full((src.size(0), 1), bos, dtype=torch.long)
        done = torch.zeros(src.size(0), dtype=torch.bool)
        for _ in range(max_len):
            logits = model.decode(ys[:, -1:] if newest_only else ys, memory)
            nxt = logits.argmax(1)[:, 0] if axis else logits[:, position].argmax(-1)
            if stop:
                nxt = torch.where(done, eos, nxt)
            ys = torch.cat([ys, nxt[:, None]], 1)
            done |= nxt == eos
            if early and (done.any() if stop_when_any else done.all()):
                break
        return ys if bos_out else ys[:, 1:]

    return decode


def _explain_greedy(got, want, model, src, max_len, bos, eos):
    if not isinstance(got, torch.Tensor) or got.dim() != 2 or got.shape[0] != want.shape[0]:
        return None
    if got.shape[1] > want.shape[1] and (got[:, :want.shape[1]] == want).all():
        return (f"your result has {got.shape[1]} columns and agrees with the expected one on the first "
                f"{want.shape[1]}: every row had produced <eos> by then — stop the loop as soon as all rows are done")
    if got.shape[1] < want.shape[1] and (want[:, :got.shape[1]] == got).all():
        return "your result stops too soon: generate up to max_len new tokens (and stop early only when every row is done)"
    return None


GREEDY = Exercise(
    id=f"{CHAPTER}/greedy_decode",
    title="Greedy decoding",
    reference=greedy_decode,
    cases=_greedy_cases,
    explain=_explain_greedy,
    mistakes=[
        Mistake("not stopping at <eos> (finished rows keep generating)", _greedy_variant(stop=False),
                "once a row has produced <eos>, keep appending <eos> to it; stop when every row is done."),
        Mistake("the output without the leading <bos>", _greedy_variant(bos_out=False),
                "return the whole sequence, starting with <bos>."),
        Mistake("predicting from the first position instead of the last", _greedy_variant(position=0),
                "the next token comes from the logits of the last position: logits[:, -1]."),
        Mistake("stopping as soon as any row finishes", _greedy_variant(stop_when_any=True),
                "stop when *all* rows have produced <eos> (or after max_len tokens)."),
        Mistake("never stopping early (always max_len steps)", _greedy_variant(early=False),
                "once every row has produced <eos>, the rest would only be <eos> padding: leave the loop "
                "(if done.all(): break)."),
        Mistake("only the newest token fed to the model", _greedy_variant(newest_only=True),
                "without a cache, the decoder needs the whole prefix: model.decode(ys, memory), then take the "
                "last position's logits. (Feeding one token is what the chapter's KV cache allows — it keeps "
                "the rest inside the model.)"),
        Mistake("the argmax taken over the positions instead of the vocabulary", _greedy_variant(axis=True),
                "logits are (B, T, V): take the last position, logits[:, -1], then argmax over the vocabulary (dim=-1)."),
    ],
)


def _beam_cases(g):
    model = _models(g)
    cases = [Case(f"the source selecting a trap table, beam {k}", (model, torch.tensor([[3, 1]]), k, 8, BOS, EOS))
             for k in (2, 3)]
    cases += [Case(f"source table {i}, beam 3, max_len 6", (model, torch.tensor([[i]]), 3, 6, BOS, EOS)) for i in range(3)]
    return cases


def _beam_greedy(model, src, beam_size, max_len, bos, eos):
    out = greedy_decode(model, src, max_len, bos, eos)[0]
    ends = (out == eos).nonzero()
    return out[: ends[0, 0] + 1] if len(ends) else out


def _beam_variant(score_fn=lambda logits: torch.log_softmax(logits, -1), stop_at_first=False, rank=None,
                  keep="top", extend_finished=False):
    rank = rank or (lambda c: c[0])

    def search(model, src, beam_size, max_len, bos, eos):
        memory = model.encode(src)
        beams, finished = [(0.0, [bos])], []
        for _ in range(max_len):
            cands = []
            for score, toks in beams:
                if extend_finished and toks[-1] == eos:  # a finished hypothesis treated like any other
                    cands.append((score, toks + [eos]))
                    continue
                lp = score_fn(model.decode(torch.tensor([toks]), memory)[0, -1])
                top = lp.topk(beam_size)
                cands += [(score + v, toks + [i]) for v, i in zip(top.values.tolist(), top.indices.tolist())]
            cands.sort(key=rank, reverse=True)
            if extend_finished:
                beams = cands[:beam_size]
                if all(t[-1] == eos for _, t in beams):
                    break
                continue
            if keep == "all_finished":  # every finished candidate set aside, ranked above the cut or not
                finished += [c for c in cands if c[1][-1] == eos]
                beams = [c for c in cands if c[1][-1] != eos][:beam_size]
            else:
                top_k = cands[:beam_size]
                finished += [c for c in top_k if c[1][-1] == eos]
                beams = [c for c in top_k if c[1][-1] != eos]
            if stop_at_first and finished:
                return torch.tensor(finished[0][1])
            if not beams or max((rank(f) for f in finished), default=-math.inf) >= rank(beams[0]):
                break
        pool = (finished or beams) if not extend_finished else beams
        return torch.tensor(max(pool, key=rank)[1])

    return search


_beam_raw_logits = _beam_variant(lambda logits: logits)  # no log_softmax


def _explain_beam(got, want, model, src, beam_size, max_len, bos, eos):
    """Say what the length of the learner's hypothesis tells, when it differs from the expected one."""
    if not isinstance(got, torch.Tensor) or got.dim() != 1 or got.numel() == 0 or got.shape == want.shape:
        return None
    toks = got.tolist()
    if toks[0] != bos:
        return "the result should start with <bos>"
    if eos in toks[:-1]:
        return (f"your result has length {len(toks)} and goes on after the <eos> at position {toks.index(eos)}: "
                "a hypothesis that produced <eos> is finished — move it to the finished list and don't extend it")
    want_done = bool(want[-1] == eos)
    if want_done:
        return (f"your result has length {len(toks)}; the best finished hypothesis has length {want.numel()} — did "
                "you keep extending a hypothesis after it produced <eos>, or rank them by something other than "
                "the total log-probability (no length normalisation)?")
    return (f"your result has length {len(toks)}; the expected one has length {want.numel()} and is unfinished: "
            f"within max_len = {max_len} steps no finished hypothesis made it into the top beam_size of its step. "
            "Keep only the top beam_size candidates of each step, finished or not; a finished candidate below "
            "them is dropped")


BEAM = Exercise(
    id=f"{CHAPTER}/beam_search",
    title="Beam search",
    reference=beam_search,
    cases=_beam_cases,
    time_limit=3.0,
    explain=_explain_beam,
    mistakes=[
        Mistake("greedy search (only the best token is kept each step)", _beam_greedy,
                "keep the beam_size best *prefixes* at every step, scored by their total log-probability."),
        Mistake("hypotheses scored with raw logits, not log-probabilities", _beam_raw_logits,
                "turn each step's logits into log-probabilities with torch.log_softmax before adding them up."),
        Mistake("returning the first hypothesis that finishes", _beam_variant(stop_at_first=True),
                "set finished hypotheses aside and keep searching until the best finished one beats every live one."),
        Mistake("length-normalised scores (the mean log-probability per token)",
                _beam_variant(rank=lambda c: c[0] / (len(c[1]) - 1)),
                "this exercise ranks by the *total* log-probability (the sum), as the statement says; length "
                "normalisation is a common refinement, but it changes which hypothesis wins."),
        Mistake("finished hypotheses collected from outside the top beam_size candidates",
                _beam_variant(keep="all_finished"),
                "each step keeps only its top beam_size candidates overall; those among them that end in <eos> "
                "are finished. A finished candidate ranked below them is dropped like any other."),
        Mistake("finished hypotheses kept in the beam and extended", _beam_variant(extend_finished=True),
                "a hypothesis that ends in <eos> is done: move it to the finished list, don't extend it."),
    ],
)

EXERCISES = [NOAM, LABEL_SMOOTHING, GREEDY, BEAM]
