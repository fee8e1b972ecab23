"""Tiny GGUF files written llama.cpp-style from tiny transformers models, for the tests that
load, dequantize or cache GGUFs (in this process or in others)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from tokenizers import pre_tokenizers


def _permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaving of LLaMA q/k rows (transformers' GGUF reader undoes it)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path: Path, model, architecture: str | None = None, name: str = "tiny"):
    """Write `model` (a tiny LLaMA/Qwen2/Mistral) as a float32 GGUF file llama.cpp-style, with a
    byte-level ("gpt2") vocabulary of <s>, </s> and single bytes, sized to the model."""
    config = model.config
    model_type = config.model_type
    arch = architecture or ("qwen2" if model_type == "qwen2" else "llama")  # mistral is llama
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_embedding_length(config.hidden_size)
    head_dim = config.hidden_size // config.num_attention_heads
    if arch != "qwen2":
        writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    tokens = ["<s>", "</s>", *sorted(pre_tokenizers.ByteLevel.alphabet())][: config.vocab_size]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    writer.add_token_scores([0.0] * len(tokens))  # no merges: derived from these (none)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)

    state = {key: value.detach().float().numpy() for key, value in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        layer, block = f"model.layers.{i}.", f"blk.{i}."
        q, k = state[layer + "self_attn.q_proj.weight"], state[layer + "self_attn.k_proj.weight"]
        if arch == "llama":
            q = _permute_for_gguf(q, config.num_attention_heads)
            k = _permute_for_gguf(k, config.num_key_value_heads)
        writer.add_tensor(block + "attn_norm.weight", state[layer + "input_layernorm.weight"])
        writer.add_tensor(block + "attn_q.weight", q)
        writer.add_tensor(block + "attn_k.weight", k)
        writer.add_tensor(block + "attn_v.weight", state[layer + "self_attn.v_proj.weight"])
        for short, proj in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj")):
            if layer + f"self_attn.{proj}.bias" in state:
                writer.add_tensor(
                    block + f"attn_{short}.bias", state[layer + f"self_attn.{proj}.bias"]
                )
        writer.add_tensor(block + "attn_output.weight", state[layer + "self_attn.o_proj.weight"])
        writer.add_tensor(
            block + "ffn_norm.weight", state[layer + "post_attention_layernorm.weight"]
        )
        writer.add_tensor(block + "ffn_gate.weight", state[layer + "mlp.gate_proj.weight"])
        writer.add_tensor(block + "ffn_up.weight", state[layer + "mlp.up_proj.weight"])
        writer.add_tensor(block + "ffn_down.weight", state[layer + "mlp.down_proj.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
