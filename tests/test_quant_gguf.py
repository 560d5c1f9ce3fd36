"""ferroformer.quant.load_gguf: small Llama and GPT-2 files written here with the
gguf package (every block type, mixed within a layer) against the float model
over the same decoded weights; damaged files refused naming the file; and
SmolLM2-135M-Instruct loaded quantized against the dequantizing loader."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from ferroformer.models import GPT, Llama
from ferroformer.nn import Embedding, Linear
from ferroformer.quant import (
    FORMATS,
    QuantizedEmbedding,
    QuantizedLinear,
    dequantize,
    load_gguf,
    quantize,
)

from helpers import assert_close

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")


def byte_level_alphabet():
    """GPT-2's 256 byte-level BPE symbols (bytes_to_unicode)."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def encode(values, qtype, rng):
    """float (rows, n) -> the bytes (or float array) of ``qtype`` for the gguf writer."""
    v = np.asarray(values, np.float32)
    if qtype == "F32":
        return v
    if qtype == "F16":
        return v.astype(np.float16)
    if qtype == "BF16":
        return (v.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    if qtype == "Q5_K":  # no quantizer: random blocks with small finite scales
        fmt = FORMATS["Q5_K"]
        raw = rng.integers(0, 256, (v.shape[0], v.shape[1] // 256, fmt.type_size), np.uint8)
        for at in fmt.half_offsets:
            raw[:, :, at : at + 2] = (
                (np.abs(rng.standard_normal(raw.shape[:2])) * 1e-4)
                .astype(np.float16)
                .view(np.uint8)
                .reshape(*raw.shape[:2], 2)
            )
        return raw.reshape(v.shape[0], -1)
    return quantize(v, qtype)


def write_gguf(path, arch, meta, tensors, rng):
    """tensors: name -> (float values, type name) in ferroformer's (out, in) layout."""
    w = gguf.GGUFWriter(os.fspath(path), arch)
    for key, v in meta.items():
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, v)
    for name, (values, qtype) in tensors.items():
        data = encode(values, qtype, rng)
        raw_dtype = None if qtype in ("F32", "F16") else gguf.GGMLQuantizationType[qtype]
        w.add_tensor(name, data, raw_dtype=raw_dtype)  # the writer reads a shape off the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def decoded(values, qtype, rng_state):
    """What the file's bytes of ``values`` decode to (the float twin's weight)."""
    data = encode(values, qtype, np.random.default_rng(rng_state))
    if qtype in ("F32", "F16"):
        return np.asarray(data, np.float32)
    return dequantize(data, qtype)


VOCAB = 257  # the byte-level alphabet and one merge
TOKENIZER = {
    "tokenizer.ggml.model": "gpt2",
    "tokenizer.ggml.tokens": [*byte_level_alphabet(), "Ġt"],
    "tokenizer.ggml.token_type": [1] * VOCAB,
    "tokenizer.ggml.merges": ["Ġ t"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2,
}

# a mix of every block type, different within a layer (llama.cpp's Q4_K_M mixes too)
LLAMA_TYPES = [
    {
        "attn_q": "Q4_K",
        "attn_k": "Q6_K",
        "attn_v": "Q8_0",
        "attn_output": "Q5_0",
        "ffn_gate": "Q4_1",
        "ffn_up": "Q5_1",
        "ffn_down": "Q4_0",
    },
    {
        "attn_q": "F16",
        "attn_k": "BF16",
        "attn_v": "F32",
        "attn_output": "Q5_K",
        "ffn_gate": "Q4_K",
        "ffn_up": "Q6_K",
        "ffn_down": "Q8_0",
    },
]


def llama_file(tmp_path, *, tied=False, meta_edit=None, tensor_edit=None, seed=0):
    """(path, float Llama over the weights the file decodes to) of a 2-layer Llama file."""
    d, h, kv, ff, L = 256, 4, 2, 512, 2
    src = Llama(
        vocab_size=VOCAB,
        max_seq_len=64,
        d_model=d,
        n_heads=h,
        n_kv_heads=kv,
        n_layers=L,
        d_ff=ff,
        rope_base=5e4,
        norm_eps=1e-5,
        tie_embeddings=tied,
        backend="numpy",
        rng=seed,
    )
    p = {k: v.data for k, v in src.named_parameters()}
    rng = np.random.default_rng(seed)
    for k in p:  # norms away from 1, so that a misplaced one shows
        if p[k].ndim == 1:
            p[k] = (1 + 0.3 * rng.standard_normal(p[k].shape)).astype(np.float32)
    hd = d // h
    tensors = {
        "token_embd.weight": (p["tok_emb.weight"], "Q8_0"),
        "output_norm.weight": (p["norm.weight"], "F32"),
    }
    if not tied:
        tensors["output.weight"] = (p["lm_head.weight"], "Q6_K")
    for i, types in enumerate(LLAMA_TYPES):
        f = f"blocks.{i}."
        qkv, fc1 = p[f + "attn.qkv.weight"], p[f + "ff.fc1.weight"]
        parts = {
            "attn_q": qkv[: h * hd],
            "attn_k": qkv[h * hd : (h + kv) * hd],
            "attn_v": qkv[(h + kv) * hd :],
            "attn_output": p[f + "attn.proj.weight"],
            "ffn_gate": fc1[:ff],
            "ffn_up": fc1[ff:],
            "ffn_down": p[f + "ff.fc2.weight"],
        }
        for name, values in parts.items():
            tensors[f"blk.{i}.{name}.weight"] = (values, types[name])
        tensors[f"blk.{i}.attn_norm.weight"] = (p[f + "ln1.weight"], "F32")
        tensors[f"blk.{i}.ffn_norm.weight"] = (p[f + "ln2.weight"], "F32")
    meta = {
        "llama.block_count": L,
        "llama.context_length": 64,
        "llama.embedding_length": d,
        "llama.feed_forward_length": ff,
        "llama.attention.head_count": h,
        "llama.attention.head_count_kv": kv,
        "llama.rope.freq_base": 5e4,
        "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.dimension_count": hd,
        **TOKENIZER,
    }
    # the twin: each tensor as the file's bytes decode it (Q5_K's random blocks included)
    twin = {k: v.copy() for k, v in p.items()}
    state = {n: decoded(v, q, seed) for n, (v, q) in tensors.items()}
    twin["tok_emb.weight"] = state["token_embd.weight"]
    if not tied:
        twin["lm_head.weight"] = state["output.weight"]
    for i in range(L):
        f, g = f"blocks.{i}.", f"blk.{i}."
        twin[f + "attn.qkv.weight"] = np.concatenate([state[g + f"attn_{n}.weight"] for n in "qkv"])
        twin[f + "attn.proj.weight"] = state[g + "attn_output.weight"]
        twin[f + "ff.fc1.weight"] = np.concatenate(
            [state[g + "ffn_gate.weight"], state[g + "ffn_up.weight"]]
        )
        twin[f + "ff.fc2.weight"] = state[g + "ffn_down.weight"]
    src.load_state_dict(twin)
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    path = write_gguf(
        tmp_path / "tiny-llama.gguf", "llama", meta, tensors, np.random.default_rng(seed)
    )
    return path, src.eval()


def is_mapped(a) -> bool:
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a.obj if isinstance(a, memoryview) else a, mmap.mmap)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_file_loads_as_its_blocks(tmp_path, tied, rng):
    path, twin = llama_file(tmp_path, tied=tied)
    model, tok = load_gguf(path, backend="numpy", activations="float")
    assert not model.training and model.config["tie_embeddings"] == tied
    assert model.config["max_seq_len"] == 64 and model.config["rope_base"] == 5e4
    # no float weight matrix anywhere: only norms are float parameters
    assert all(p.data.ndim == 1 for p in model.parameters())
    assert not any(isinstance(m, (Linear, Embedding)) for m in model.modules())
    quantized = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert len(quantized) == 2 * 4 + 1
    assert all(is_mapped(part.data) for m in quantized for part in m.parts)
    assert isinstance(model.tok_emb, QuantizedEmbedding) and is_mapped(model.tok_emb.table.data)
    qkv0 = model.blocks[0].attn.qkv
    assert qkv0.qtype == "Q4_K+Q6_K+Q8_0" and model.blocks[1].attn.proj.qtype == "Q5_K"
    assert model.lm_head.qtype == ("Q8_0" if tied else "Q6_K")
    ids = rng.integers(0, 256, (2, 9))
    assert_close(model(ids), twin(ids), rtol=1e-4, atol=1e-4)
    assert np.array_equal(model.generate([ids[0]], 5), twin.generate([ids[0]], 5))
    assert tok.vocab_size == VOCAB and tok.eos_id == 2


def test_llama_file_max_seq_len_and_backend(tmp_path, rng, host_backend):
    path, twin = llama_file(tmp_path)
    model, _ = load_gguf(path, backend=host_backend, max_seq_len=16, activations="float")
    assert model.config["max_seq_len"] == 16 and model.ops is host_backend
    ids = rng.integers(0, 256, (1, 7))
    assert_close(np.asarray(model(ids)), twin(ids), rtol=1e-3, atol=1e-3)


def test_llama_file_int8_activations_agree_on_every_host_backend(tmp_path, rng, host_backend):
    """The default int8 mode: the same rounding of x on every backend, so the rust
    backend's integer dots give the numpy reference's logits (the op-level tests hold
    them to 1e-5); both stay near the float model's."""
    path, twin = llama_file(tmp_path)
    model, _ = load_gguf(path, backend=host_backend, max_seq_len=16)
    ref, _ = load_gguf(path, backend="numpy", max_seq_len=16)
    assert {m.activations for m in model.modules() if isinstance(m, QuantizedLinear)} == {"int8"}
    ids = rng.integers(0, 256, (2, 7))
    got, want, exact = np.asarray(model(ids)), ref(ids), twin(ids)
    # equal up to float32 summation, except where that flips a rounding of x to
    # int8 in a later layer (a step of one quantum, max|x_chunk| / 127)
    assert np.abs(got - want).max() < 0.01 * np.abs(exact).max()
    assert np.abs(want - exact).max() < 0.05 * np.abs(exact).max()
    assert np.abs(want - exact).max() > 0  # the rounding is really there
    with pytest.raises(ValueError, match="load_gguf: activations must be"):
        load_gguf(path, activations="int4")


def gpt2_file(tmp_path, seed=0):
    d, L, ctx = 64, 2, 48
    src = GPT(
        vocab_size=VOCAB,
        max_seq_len=ctx,
        d_model=d,
        n_heads=4,
        n_layers=L,
        backend="numpy",
        rng=seed,
    )
    rng = np.random.default_rng(seed)
    p = {k: v.data for k, v in src.named_parameters()}
    for k in p:
        if p[k].ndim == 1:
            p[k] = (p[k] + 0.2 * rng.standard_normal(p[k].shape)).astype(np.float32)
    tensors = {
        "token_embd.weight": (p["wte.weight"], "Q8_0"),
        "position_embd.weight": (p["wpe.weight"], "F16"),
        "output_norm.weight": (p["ln_f.weight"], "F32"),
        "output_norm.bias": (p["ln_f.bias"], "F32"),
    }
    types = {"attn_qkv": "Q8_0", "attn_output": "Q4_0", "ffn_up": "Q5_1", "ffn_down": "Q4_1"}
    ours = {
        "attn_norm": "ln1",
        "attn_qkv": "attn.qkv",
        "attn_output": "attn.proj",
        "ffn_norm": "ln2",
        "ffn_up": "ff.fc1",
        "ffn_down": "ff.fc2",
    }
    twin = dict(p)
    for i in range(L):
        for theirs, mine in ours.items():
            for kind in ("weight", "bias"):
                key = f"blocks.{i}.{mine}.{kind}"
                q = types.get(theirs, "F32") if kind == "weight" else "F32"
                tensors[f"blk.{i}.{theirs}.{kind}"] = (p[key], q)
                twin[key] = decoded(p[key], q, seed)
    twin["wte.weight"] = decoded(p["wte.weight"], "Q8_0", seed)
    twin["wpe.weight"] = decoded(p["wpe.weight"], "F16", seed)
    meta = {
        "gpt2.block_count": L,
        "gpt2.context_length": ctx,
        "gpt2.embedding_length": d,
        "gpt2.feed_forward_length": 4 * d,
        "gpt2.attention.head_count": 4,
        "gpt2.attention.layer_norm_epsilon": 1e-5,
        **TOKENIZER,
    }
    path = write_gguf(tmp_path / "tiny-gpt2.gguf", "gpt2", meta, tensors, rng)
    src.load_state_dict(twin)
    return path, src.eval()


def test_gpt2_file_loads_as_its_blocks(tmp_path, rng):
    path, twin = gpt2_file(tmp_path)
    model, _ = load_gguf(path, backend="numpy", max_seq_len=20, activations="float")
    assert model.config["max_seq_len"] == 20
    assert isinstance(model.head, QuantizedLinear) and model.head.qtype == "Q8_0"
    assert not any(isinstance(m, (Linear, Embedding)) for m in model.modules())
    ids = rng.integers(0, 256, (2, 20))
    short = GPT(**{**twin.config, "max_seq_len": 20}, backend="numpy", rng=0)
    short.load_state_dict({**twin.state_dict(), "wpe.weight": twin.wpe.weight.data[:20]})
    assert_close(model(ids), short.eval()(ids), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="max_seq_len 49 must be an int in"):
        load_gguf(path, max_seq_len=49)


# -- damaged and unsupported files ------------------------------------------------------
def _set(key, value):
    def edit(meta):
        meta[key] = value

    return edit


def _drop(name):
    def edit(tensors):
        del tensors[name]

    return edit


def _add(name, values, qtype="F32"):
    def edit(tensors):
        tensors[name] = (values, qtype)

    return edit


DAMAGED = {
    "more blocks than tensors": (
        dict(meta_edit=_set("llama.block_count", 3)),
        "no tensor blk.2.attn_k.weight",
    ),
    "wrong width": (dict(meta_edit=_set("llama.embedding_length", 128)), "shape"),
    "heads do not divide": (dict(meta_edit=_set("llama.attention.head_count", 3)), "not divisible"),
    "partial rope": (
        dict(meta_edit=_set("llama.rope.dimension_count", 32)),
        "partial rotary embeddings are not supported",
    ),
    "missing tensor": (
        dict(tensor_edit=_drop("blk.1.ffn_up.weight")),
        "no tensor blk.1.ffn_up.weight",
    ),
    "unknown tensor": (
        dict(tensor_edit=_add("rope_freqs.weight", np.ones(32, np.float32))),
        "unexpected.*rope_freqs.weight",
    ),
    "non-finite norm": (
        dict(tensor_edit=_add("blk.0.ffn_norm.weight", np.full(256, np.nan, np.float32))),
        "blk.0.ffn_norm.weight holds non-finite values",
    ),
    "no context length": (
        dict(meta_edit=lambda m: m.pop("llama.context_length")),
        "llama.context_length must be a positive int",
    ),
    "other architecture": (
        dict(meta_edit=_set("general.architecture", "mamba")),
        "architecture 'mamba' is not supported; supported: llama, gpt2",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_are_refused_naming_the_file(tmp_path, case):
    kwargs, message = DAMAGED[case]
    path, _ = llama_file(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=message) as e:
        load_gguf(path)
    assert str(path) in str(e.value)


def test_unsupported_tensor_type_is_refused_by_name(tmp_path):
    iq2 = gguf.GGMLQuantizationType.IQ2_XS
    w = gguf.GGUFWriter(os.fspath(tmp_path / "iq2.gguf"), "llama")
    size = gguf.GGML_QUANT_SIZES[iq2][1]
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, size), np.uint8), raw_dtype=iq2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        ValueError,
        match=r"iq2.gguf: .*tensor blk.0.attn_q.weight: quantized type "
        r"IQ2_XS is not supported; supported: F32",
    ):
        load_gguf(tmp_path / "iq2.gguf")


def test_truncated_and_odd_files_are_refused(tmp_path):
    path, _ = llama_file(tmp_path)
    data = path.read_bytes()
    for n in (len(data) - 100, 2000, 30, 5):
        cut = tmp_path / f"cut{n}.gguf"
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError, match=f"cut{n}.gguf"):
            load_gguf(cut)
    with pytest.raises(ValueError, match="not a regular file"):
        load_gguf(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_gguf(tmp_path / "absent.gguf")


# -- SmolLM2-135M-Instruct, quantized against dequantized --------------------------------
@pytest.fixture(scope="module")
def smollm_pair():
    from ferroformer.pretrained.files import MissingPackage, package_path
    from ferroformer.pretrained.smollm import load_smollm

    try:
        path = package_path("SmolLM2-135M-Instruct")
    except MissingPackage as e:
        pytest.skip(str(e))
    quantized, tok = load_gguf(path, backend="numpy", max_seq_len=256, activations="float")
    floats, _ = load_smollm(backend="numpy", max_seq_len=256, dequantize=True)
    return quantized, floats, tok


def test_smollm_quantized_matches_the_dequantizing_loader(smollm_pair):
    quantized, floats, tok = smollm_pair
    ids = np.array([tok.encode("The capital of France is")])
    # the same block values, decoded per layer instead of once: the same logits
    assert_close(quantized(ids), floats(ids), rtol=1e-5, atol=1e-4)
    assert quantized.lm_head.qtype == "Q8_0" and quantized.blocks[0].ff.fc1.qtype == "Q4_1"
    new_q = quantized.generate(ids, 4)
    assert np.array_equal(new_q, floats.generate(ids, 4))
    assert tok.decode(new_q[0].tolist()).strip().startswith("Paris")
    # the default int8 activations: the same answer
    from ferroformer.quant import set_activations

    try:
        set_activations(quantized, "int8")
        new_8 = quantized.generate(ids, 4)
        assert tok.decode(new_8[0].tolist()).strip().startswith("Paris")
    finally:
        set_activations(quantized, "float")
