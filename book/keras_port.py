"""Appendix A: chapter 08's Transformer written the Keras 3 way, and the bridge to the book's.

* ``positional_table``, ``PositionalEmbedding``: token embedding × √d_model plus the
  sinusoidal table of ``book.positional`` (the same interleaved sin/cos layout);
* one small layer per attention kind, each around ``keras.layers.MultiHeadAttention`` inside
  a residual connection with a LayerNorm (post-LN, as chapter 08): ``GlobalSelfAttention``
  (encoder), ``CausalSelfAttention`` (decoder), ``CrossAttention`` (decoder → encoder);
* ``FeedForward``, ``EncoderLayer``, ``DecoderLayer``, ``Encoder``, ``Decoder`` and the model,
  ``KerasTransformer``, a ``keras.Model``: (source ids, target ids) in, logits out;
* training: ``NoamSchedule`` (a ``LearningRateSchedule`` equal to ``book.training.lr_at``),
  ``masked_loss`` (label-smoothed, padding left out), ``masked_accuracy``, and
  ``BookProgressBar`` (the book's progress bar as a Keras callback);
* the bridge: ``keras_like(cfg)`` builds a Keras model with a book config's sizes,
  ``copy_from_book(book_model, keras_model)`` copies a ``book.transformer.Transformer`` into
  it, ``greedy_decode`` translates with it.

Masks: Keras's ``attention_mask`` is bool (B, T_q, T_k), True = may attend — the book's
convention, the opposite of PyTorch's ``key_padding_mask`` (True = ignore). Weights: a Keras
``Dense`` kernel is (in, out), an ``nn.Linear`` weight (out, in); ``MultiHeadAttention``
keeps its projections per head, (d_model, h, d_k) and (h, d_k, d_model).

The layers and the model use ``keras.ops`` only, so they are written for every Keras backend;
``copy_from_book`` (it reads the book's PyTorch tensors) and ``BookProgressBar`` need torch.
"""
from __future__ import annotations

import math
import os

# Keras chooses its backend once, when it is first imported, and its default is TensorFlow
# (not installed here): the choice must be made before `import keras`. setdefault: yours wins.
os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402


# ----------------------------------------------------------------------------- embeddings
def positional_table(max_len: int, d_model: int, base: float = 10000.0) -> np.ndarray:
    """(max_len, d_model) float32: sin in the even features, cos in the odd ones."""
    pos = np.arange(max_len, dtype=np.float32)[:, None]  # (max_len, 1)
    two_i = np.arange(0, d_model, 2, dtype=np.float32)  # (d_model / 2,)
    angle = pos / base ** (two_i / d_model)  # (max_len, d_model / 2)
    table = np.zeros((max_len, d_model), dtype=np.float32)
    table[:, 0::2], table[:, 1::2] = np.sin(angle), np.cos(angle)
    return table


class PositionalEmbedding(keras.layers.Layer):
    """Token ids (B, T) -> embedding × √d_model + positions, (B, T, d_model)."""

    def __init__(self, vocab_size, d_model, max_len=64, **kwargs):
        super().__init__(**kwargs)
        self.d_model = d_model
        init = keras.initializers.RandomNormal(stddev=d_model**-0.5)  # as the book's
        self.embedding = keras.layers.Embedding(vocab_size, d_model,
                                                embeddings_initializer=init)
        self.table = positional_table(max_len, d_model)  # a constant, not a weight

    def call(self, tokens):
        T = ops.shape(tokens)[1]
        x = self.embedding(tokens) * math.sqrt(self.d_model)  # (B, T, d_model)
        return x + ops.convert_to_tensor(self.table)[None, :T]  # (B, T, d_model)


# ----------------------------------------------------------------------------- attention
class BaseAttention(keras.layers.Layer):
    """Multi-head attention in a residual connection with a LayerNorm (post-LN)."""

    def __init__(self, d_model, num_heads, **kwargs):
        super().__init__(**kwargs)
        key_dim = d_model // num_heads  # d_k: the heads share d_model
        self.mha = keras.layers.MultiHeadAttention(num_heads, key_dim)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)  # PyTorch's eps


class GlobalSelfAttention(BaseAttention):
    """Encoder: every token attends to every real token of its sequence."""

    def call(self, x, is_real):
        """x (B, S, d_model); is_real (B, S) bool, True at real tokens."""
        mask = is_real[:, None, :]  # (B, 1, S): the same keys for every query
        out = self.mha(query=x, value=x, key=x, attention_mask=mask)
        return self.norm(x + out)  # (B, S, d_model)


class CausalSelfAttention(BaseAttention):
    """Decoder: each token attends to the real tokens up to itself."""

    def call(self, x, is_real):
        """x (B, T, d_model); is_real (B, T) bool. Keras ANDs in the causal mask."""
        mask = is_real[:, None, :]  # (B, 1, T)
        out = self.mha(query=x, value=x, key=x, attention_mask=mask,
                       use_causal_mask=True)
        return self.norm(x + out)  # (B, T, d_model)


class CrossAttention(BaseAttention):
    """Decoder → encoder: queries from the target, keys and values from the memory."""

    def call(self, x, memory, memory_is_real):
        """x (B, T, d_model); memory (B, S, d_model); memory_is_real (B, S) bool."""
        mask = memory_is_real[:, None, :]  # (B, 1, S)
        out, scores = self.mha(query=x, value=memory, key=memory, attention_mask=mask,
                               return_attention_scores=True)
        self.last_attention_scores = scores  # (B, h, T, S), for pictures
        return self.norm(x + out)  # (B, T, d_model)


# ----------------------------------------------------------------------------- layers, stacks
class FeedForward(keras.layers.Layer):
    """x = LN(x + linear2(relu(linear1(x)))), position by position."""

    def __init__(self, d_model, d_ff, **kwargs):
        super().__init__(**kwargs)
        self.linear1 = keras.layers.Dense(d_ff, activation="relu")  # kernel (d, d_ff)
        self.linear2 = keras.layers.Dense(d_model)  # kernel (d_ff, d)
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)

    def call(self, x):
        return self.norm(x + self.linear2(self.linear1(x)))  # (B, T, d_model)


class EncoderLayer(keras.layers.Layer):
    def __init__(self, d_model, num_heads, d_ff, **kwargs):
        super().__init__(**kwargs)
        self.self_attention = GlobalSelfAttention(d_model, num_heads)
        self.ffn = FeedForward(d_model, d_ff)

    def call(self, x, is_real):
        return self.ffn(self.self_attention(x, is_real))  # (B, S, d_model)


class DecoderLayer(keras.layers.Layer):
    def __init__(self, d_model, num_heads, d_ff, **kwargs):
        super().__init__(**kwargs)
        self.self_attention = CausalSelfAttention(d_model, num_heads)
        self.cross_attention = CrossAttention(d_model, num_heads)
        self.ffn = FeedForward(d_model, d_ff)

    def call(self, x, is_real, memory, memory_is_real):
        x = self.self_attention(x, is_real)  # (B, T, d_model)
        x = self.cross_attention(x, memory, memory_is_real)  # (B, T, d_model)
        return self.ffn(x)  # (B, T, d_model)


class Encoder(keras.layers.Layer):
    """Embedding + positions, N encoder layers, a final LayerNorm (as nn.Transformer)."""

    def __init__(self, vocab_size, d_model, num_heads, d_ff, num_layers, max_len,
                 **kwargs):
        super().__init__(**kwargs)
        self.embed = PositionalEmbedding(vocab_size, d_model, max_len)
        self.layers = [EncoderLayer(d_model, num_heads, d_ff) for _ in range(num_layers)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)

    def call(self, src, is_real):
        x = self.embed(src)  # (B, S, d_model)
        for layer in self.layers:
            x = layer(x, is_real)  # (B, S, d_model)
        return self.norm(x)  # (B, S, d_model): the memory


class Decoder(keras.layers.Layer):
    """Embedding + positions, N decoder layers, a final LayerNorm."""

    def __init__(self, vocab_size, d_model, num_heads, d_ff, num_layers, max_len,
                 **kwargs):
        super().__init__(**kwargs)
        self.embed = PositionalEmbedding(vocab_size, d_model, max_len)
        self.layers = [DecoderLayer(d_model, num_heads, d_ff) for _ in range(num_layers)]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5)

    def call(self, tgt, is_real, memory, memory_is_real):
        x = self.embed(tgt)  # (B, T, d_model)
        for layer in self.layers:
            x = layer(x, is_real, memory, memory_is_real)  # (B, T, d_model)
        return self.norm(x)  # (B, T, d_model)


# ----------------------------------------------------------------------------- the model
class KerasTransformer(keras.Model):
    """(source ids (B, S), target ids (B, T)) -> next-token logits (B, T, V).

    The output projection is the target embedding table (tied), as in chapter 08.
    """

    def __init__(self, src_vocab_size, tgt_vocab_size, d_model=64, num_heads=4, d_ff=128,
                 num_layers=2, max_len=64, pad_id=0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id
        sizes = (d_model, num_heads, d_ff, num_layers, max_len)
        self.encoder = Encoder(src_vocab_size, *sizes)
        self.decoder = Decoder(tgt_vocab_size, *sizes)

    def call(self, inputs):
        src, tgt = inputs  # (B, S), (B, T) token ids
        src_real = ops.not_equal(src, self.pad_id)  # (B, S) bool, True at real tokens
        tgt_real = ops.not_equal(tgt, self.pad_id)  # (B, T)
        memory = self.encoder(src, src_real)  # (B, S, d_model)
        h = self.decoder(tgt, tgt_real, memory, src_real)  # (B, T, d_model)
        table = self.decoder.embed.embedding.embeddings  # (V, d_model), tied
        return ops.matmul(h, ops.transpose(table))  # (B, T, V)


# ----------------------------------------------------------------------------- training
class NoamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """book.training.lr_at as a Keras schedule: warm-up, 1/√step, optional cool-down.

    Keras calls it with the optimizer's step counter, which starts at 0, the book's 1.
    """

    def __init__(self, d_model, warmup, scale=1.0, total_steps=None, cooldown=0.0):
        self.d_model, self.warmup, self.scale = d_model, warmup, scale
        self.total_steps, self.cooldown = total_steps, cooldown

    def __call__(self, step):
        s = ops.cast(step, "float32") + 1.0  # the book's 1-based step
        lr = self.d_model**-0.5 * ops.minimum(ops.rsqrt(s), s * self.warmup**-1.5)
        if self.cooldown > 0:  # to 0 over the last `cooldown` share of the run
            left = (self.total_steps - s + 1.0) / (self.cooldown * self.total_steps)
            lr = lr * ops.minimum(1.0, left)
        return self.scale * lr

    def get_config(self):
        return {"d_model": self.d_model, "warmup": self.warmup, "scale": self.scale,
                "total_steps": self.total_steps, "cooldown": self.cooldown}


def masked_loss(pad_id=0, smoothing=0.1):
    """A Keras loss: label-smoothed cross-entropy over the real target tokens only."""

    def loss(y_true, logits):  # y_true (B, T) ids, logits (B, T, V)
        one_hot = ops.one_hot(y_true, ops.shape(logits)[-1])  # (B, T, V)
        ce = keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=smoothing)  # (B, T)
        real = ops.cast(ops.not_equal(y_true, pad_id), ce.dtype)  # (B, T)
        return ops.sum(ce * real) / ops.sum(real)

    return loss


def masked_accuracy(pad_id=0):
    """A Keras metric: the share of real target tokens whose argmax is right."""

    def masked_accuracy(y_true, logits):
        guess = ops.argmax(logits, axis=-1)  # (B, T)
        right = ops.equal(guess, ops.cast(y_true, guess.dtype))  # (B, T)
        real = ops.not_equal(y_true, pad_id)  # (B, T)
        hits = ops.cast(ops.logical_and(right, real), "float32")
        return ops.sum(hits) / ops.sum(ops.cast(real, "float32"))

    return masked_accuracy


class BookProgressBar(keras.callbacks.Callback):
    """The book's progress bar (book.training.progress_bar) for fit(verbose=0)."""

    def __init__(self, steps, desc="model.fit"):
        super().__init__()
        self.steps, self.desc, self.bar = steps, desc, None

    def on_train_begin(self, logs=None):
        from book.training import progress_bar

        self.bar = progress_bar(total=self.steps, desc=self.desc)

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_train_end(self, logs=None):
        self.bar.close()


# ----------------------------------------------------------------------------- the bridge
def keras_like(cfg) -> KerasTransformer:
    """A built Keras model with the sizes of a book TransformerConfig (random weights)."""
    if cfg.num_encoder_layers != cfg.num_decoder_layers:
        raise ValueError("this port uses one num_layers for both stacks")
    model = KerasTransformer(cfg.src_vocab_size, cfg.tgt_vocab_size, cfg.d_model,
                             cfg.num_heads, cfg.d_ff, cfg.num_encoder_layers, cfg.max_len,
                             cfg.pad_id)
    ids = np.ones((1, 2), dtype="int32")
    model((ids, ids))  # the first call creates the weights
    return model


def _numpy(t):
    return t.detach().cpu().numpy()


def _dense(layer, linear):
    """nn.Linear (weight (out, in), bias) -> Keras Dense (kernel (in, out), bias)."""
    layer.set_weights([_numpy(linear.weight).T, _numpy(linear.bias)])


def _norm(layer, norm):
    layer.set_weights([_numpy(norm.weight), _numpy(norm.bias)])  # gamma, beta


def _attention(layer, mha):
    """The book's MultiHeadAttention (w_q, w_k, w_v, w_o) -> layer.mha, head by head."""
    h = mha.num_heads
    weights = []
    for linear in (mha.w_q, mha.w_k, mha.w_v):
        d_out, d_in = linear.weight.shape
        weights += [_numpy(linear.weight).T.reshape(d_in, h, d_out // h),  # (d, h, d_k)
                    _numpy(linear.bias).reshape(h, d_out // h)]  # (h, d_k)
    d_out, d_in = mha.w_o.weight.shape
    weights += [_numpy(mha.w_o.weight).T.reshape(h, d_in // h, d_out),  # (h, d_k, d)
                _numpy(mha.w_o.bias)]
    layer.mha.set_weights(weights)  # Keras's order: query, key, value, output


def _check_copyable(cfg):
    opts = cfg.layer
    if (cfg.positions != "sinusoidal" or cfg.norm_first or not cfg.tie_weights
            or cfg.dropout or opts.activation != "relu" or opts.norm != "layer"
            or opts.norm_eps != 1e-5 or not opts.bias
            or opts.n_kv_heads not in (None, cfg.num_heads)):
        raise ValueError("copy_from_book ports chapter 08's model: sinusoidal positions, "
                         "post-LN, ReLU, LayerNorm(eps=1e-5), biases, tied weights, "
                         "no dropout")


def copy_from_book(book_model, keras_model) -> None:
    """A book.transformer.Transformer's weights -> a KerasTransformer of the same sizes."""
    _check_copyable(book_model.cfg)
    enc, dec = keras_model.encoder, keras_model.decoder
    enc.embed.embedding.set_weights([_numpy(book_model.src_embed.weight)])  # (V, d) as is
    dec.embed.embedding.set_weights([_numpy(book_model.tgt_embed.weight)])
    for ours, theirs in zip(enc.layers, book_model.encoder.layers, strict=True):
        _attention(ours.self_attention, theirs.self_attn)
        _norm(ours.self_attention.norm, theirs.norm1)
        _dense(ours.ffn.linear1, theirs.ffn.linear1)
        _dense(ours.ffn.linear2, theirs.ffn.linear2)
        _norm(ours.ffn.norm, theirs.norm2)
    for ours, theirs in zip(dec.layers, book_model.decoder.layers, strict=True):
        _attention(ours.self_attention, theirs.self_attn)
        _norm(ours.self_attention.norm, theirs.norm1)
        _attention(ours.cross_attention, theirs.cross_attn)
        _norm(ours.cross_attention.norm, theirs.norm2)
        _dense(ours.ffn.linear1, theirs.ffn.linear1)
        _dense(ours.ffn.linear2, theirs.ffn.linear2)
        _norm(ours.ffn.norm, theirs.norm3)
    _norm(enc.norm, book_model.encoder.norm)
    _norm(dec.norm, book_model.decoder.norm)


def greedy_decode(keras_model, src, max_len, bos, eos):
    """src (B, S) ids -> (B, ≤ 1 + max_len) ids: <bos>, then the argmax, step by step;
    a finished row is padded with <eos>, as in book.decoding.greedy_decode.

    No key/value cache: each step runs the whole model, encoder included, over the whole
    prefix.
    """
    src = np.asarray(src)
    out = np.full((src.shape[0], 1), bos, dtype=src.dtype)  # (B, 1)
    done = np.zeros(src.shape[0], dtype=bool)
    for _ in range(max_len):
        logits = keras_model((src, out), training=False)  # (B, t, V)
        nxt = ops.convert_to_numpy(ops.argmax(logits[:, -1], axis=-1)).astype(src.dtype)
        nxt = np.where(done, eos, nxt)  # (B,): a finished row gets <eos>
        out = np.concatenate([out, nxt[:, None]], axis=1)  # (B, t + 1)
        done |= nxt == eos
        if done.all():
            break
    return out
