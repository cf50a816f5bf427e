"""Chapter 11's library: the GGUF reader and its dequantisation, the LLaMA config and name map, and
SmolLM2 in the book's GPT against Hugging Face ``transformers`` loading the same file.

The comparisons with ``transformers`` load both models once per module (about 40 s on 2 cores)."""
import numpy as np
import pytest
import torch

from book import gguf_file, pretrained
from book.decoding import generate
from book.gpt import GPT, GPTConfig

gguf = pytest.importorskip("gguf")
from gguf import quants  # noqa: E402


def _random_blocks(kind, rows, blocks, seed=0):
    """Valid random bytes of a Q4_1 / Q8_0 tensor: finite float16 scales, any quantised values."""
    rng = np.random.default_rng(seed)
    size = {"Q4_1": gguf_file.Q4_1_BLOCK_BYTES, "Q8_0": gguf_file.Q8_0_BLOCK_BYTES}[kind]
    raw = rng.integers(0, 256, size=(rows, blocks, size), dtype=np.uint8)
    scales = 2 if kind == "Q8_0" else 4  # d (and m) as float16
    raw[..., :scales] = rng.normal(0, 0.05, size=(rows, blocks, scales // 2)).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, blocks * size)


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_dequantisation_equals_the_gguf_package(kind):
    raw = _random_blocks(kind, rows=5, blocks=7)
    ours = {"Q4_1": gguf_file.dequantize_q4_1, "Q8_0": gguf_file.dequantize_q8_0}[kind](raw)
    theirs = quants.dequantize(raw, getattr(quants.GGMLQuantizationType, kind))
    assert ours.shape == (5, 7 * 32)
    assert np.array_equal(ours.numpy(), theirs)


def test_q4_1_nibble_order_by_hand():
    block = np.zeros(20, dtype=np.uint8)
    block[0:2] = np.array([1.0], dtype=np.float16).view(np.uint8)  # d = 1
    block[2:4] = np.array([-8.0], dtype=np.float16).view(np.uint8)  # m = -8
    block[4] = 0x2F  # byte 0: value 0 = 0xF (low nibble), value 16 = 0x2 (high nibble)
    w = gguf_file.dequantize_q4_1(block[None])[0]
    assert w[0].item() == 15 - 8 and w[16].item() == 2 - 8 and w[1].item() == -8


def test_bad_block_length_is_a_clear_error():
    with pytest.raises(ValueError, match="20-byte blocks"):
        gguf_file.dequantize_q4_1(np.zeros((2, 21), dtype=np.uint8))


def test_quantize_q4_1_round_trip():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 128, generator=g)
    d, m, q = gguf_file.quantize_q4_1(w)
    assert q.min() >= 0 and q.max() <= 15 and torch.equal(q, q.round())
    err = (gguf_file.fake_quantize_q4_1(w) - w).abs().reshape(6, 4, 32)
    assert (err <= d / 2 + 1e-3).all()  # within half a step (d, m rounded to float16)
    once = gguf_file.fake_quantize_q4_1(w)
    assert torch.allclose(gguf_file.fake_quantize_q4_1(once), once, atol=1e-3)  # nearly a fixed point
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf_file.quantize_q4_1(torch.zeros(3, 40))


def test_config_refuses_other_architectures():
    with pytest.raises(ValueError, match="LLaMA-style"):
        pretrained.gpt_config_from_gguf({"general.architecture": "gpt2"})


def test_generate_stops_at_eos_and_pads_finished_rows():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, max_len=64, d_model=16, num_heads=2, d_ff=32)).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = generate(model, prompt, 12, temperature=0)
    eos = free[0, 3].item()  # the first row's first new token: it finishes at once
    out = generate(model, prompt, 12, temperature=0, eos=eos)
    assert (out[0, 3:] == eos).all()
    row1 = free[1, 3:].tolist()
    if eos in row1:  # the second row stops where it first produces eos
        assert out.size(1) == 3 + row1.index(eos) + 1
    else:
        assert out.size(1) == free.size(1) and torch.equal(out[1], free[1])


# ----------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def checkpoint():
    return gguf_file.read_gguf(pretrained.smollm2_file())


@pytest.fixture(scope="module")
def smol(checkpoint):
    return pretrained.smollm2(checkpoint=checkpoint)


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    path = pretrained.smollm2_file()
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()


def test_the_file_is_smollm2(checkpoint):
    cfg = pretrained.gpt_config_from_gguf(checkpoint.metadata)
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.options.n_kv_heads, cfg.d_ff) == (30, 576, 9, 3, 1536)
    assert cfg.rope_base == 100000.0 and cfg.tie_weights and not cfg.options.bias
    kinds = {t.kind for t in checkpoint.tensors.values()}
    assert kinds == {"F32", "Q4_1", "Q8_0"}
    for t in list(checkpoint.tensors.values())[:12]:  # the real bytes, both ways
        if t.kind != "F32":
            theirs = quants.dequantize(t.raw, getattr(quants.GGMLQuantizationType, t.kind))
            assert np.array_equal(gguf_file.dequantize(t).numpy(), theirs.reshape(t.shape))


def test_loaded_model(smol):
    model = smol.model
    assert model.num_parameters() == 134_515_008
    assert model.head.weight is model.tokens.weight
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]


def test_tokenizer_equals_transformers_from_the_same_file(smol):
    transformers = pytest.importorskip("transformers")
    path = pretrained.smollm2_file()
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    texts = ["What is the capital of France?", "  two  spaces, tabs\tand\nnewlines\n\n",
             "digits 12345 and 3.14159; 2024-03-05", "ünïcödé, 中文, emoji 🙂",
             "<|im_start|>user\nhi<|im_end|>\n", "def f(x):\n    return x ** 2  # square"]
    for text in texts:
        assert smol.tokenizer(text)["input_ids"] == theirs(text)["input_ids"], text
    messages = [{"role": "user", "content": "Hi!"}]
    assert (smol.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def test_logits_equal_transformers(smol, hf_model):
    tok = smol.tokenizer
    prompts = [tok("Paris", return_tensors="pt")["input_ids"],
               tok("The capital of France is", return_tensors="pt")["input_ids"],
               smol.prompt_ids("What is the capital of France?"),
               tok(" ".join(["The quick brown fox jumps over the lazy dog."] * 12), return_tensors="pt")["input_ids"]]
    with torch.no_grad():
        for ids in prompts:
            diff = (smol.model(ids) - hf_model(ids).logits).abs().max().item()
            assert diff <= 1e-4, (ids.shape, diff)


def test_greedy_tokens_equal_transformers(smol, hf_model):
    ids = smol.prompt_ids("Tell me a short story about a robot who learns to paint.")
    n = 32
    ours = generate(smol.model, ids, n, temperature=0)[0, ids.size(1):]
    theirs = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False)[0, ids.size(1):]
    assert ours.tolist() == theirs.tolist()


def test_chat_answers_and_rejects_bad_input(smol):
    assert "Paris" in smol.chat("What is the capital of France?", max_new_tokens=16)
    with pytest.raises(ValueError, match="non-empty string"):
        smol.chat("   ")
    with pytest.raises(ValueError, match="positive integer"):
        smol.chat("Hi", max_new_tokens=0)
    with pytest.raises(ValueError, match="context"):
        smol.chat("Hi", max_new_tokens=10_000)
