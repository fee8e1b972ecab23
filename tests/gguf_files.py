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


# per-layer tensors: GGUF block name -> transformers name (relative to the decoder layer)
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GEMMA3_TENSORS = {
    **_LAYER_TENSORS,
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}


def write_tiny_gguf(path: Path, model, architecture: str | None = None, name: str = "tiny"):
    """Write `model` (a tiny LLaMA/Qwen2/Mistral/Gemma 3) as a float32 GGUF file llama.cpp-
    style, with a byte-level ("gpt2") vocabulary of <s>, </s> and single bytes, sized to the
    model. Gemma's norm gains are stored as llama.cpp stores them, 1 + w."""
    config = model.config
    model_type = config.model_type
    default = {"qwen2": "qwen2", "gemma3_text": "gemma3"}.get(model_type, "llama")
    arch = architecture or default  # mistral is llama
    gemma = arch == "gemma3"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_embedding_length(config.hidden_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if gemma:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
    rope = config.rope_parameters
    theta = rope["full_attention"]["rope_theta"] if gemma else rope["rope_theta"]
    writer.add_rope_freq_base(float(theta))
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
    if gemma:
        state = {k: v + 1 if k.endswith("norm.weight") else v for k, v in state.items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        layer, block = f"model.layers.{i}.", f"blk.{i}."
        for short, full in (_GEMMA3_TENSORS if gemma else _LAYER_TENSORS).items():
            tensor = state.get(layer + full)
            if tensor is None:  # a bias the model does not have
                continue
            if arch == "llama" and short in ("attn_q.weight", "attn_k.weight"):
                heads = config.num_attention_heads if short == "attn_q.weight" else None
                tensor = _permute_for_gguf(tensor, heads or config.num_key_value_heads)
            writer.add_tensor(block + short, tensor)
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
