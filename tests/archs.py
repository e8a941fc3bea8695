"""Tiny random configs of every supported architecture (shared by tests and benchmarks)."""

from __future__ import annotations

import transformers as T

COMMON = dict(vocab_size=384, pad_token_id=0, eos_token_id=1, bos_token_id=2)
LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, **COMMON)


def arch_configs() -> dict:
    sliding = dict(sliding_window=16)
    return {
        "llama": T.LlamaConfig(**LLAMA_LIKE),
        "mistral": T.MistralConfig(**LLAMA_LIKE, **sliding),
        "qwen2": T.Qwen2Config(**LLAMA_LIKE, use_sliding_window=True, max_window_layers=1, **sliding),
        "qwen3": T.Qwen3Config(**LLAMA_LIKE, head_dim=16),
        "gemma": T.GemmaConfig(**LLAMA_LIKE, head_dim=16),
        "gemma2": T.Gemma2Config(**LLAMA_LIKE, head_dim=16, **sliding),
        "gemma3": T.Gemma3TextConfig(**LLAMA_LIKE, head_dim=16, sliding_window_pattern=2, **sliding),
        "cohere": T.CohereConfig(**LLAMA_LIKE),
        "cohere2": T.Cohere2Config(**LLAMA_LIKE, **sliding),
        "gpt_neox": T.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                    max_position_embeddings=256, **COMMON),
        "bloom": T.BloomConfig(hidden_size=64, n_layer=3, n_head=4, **COMMON),
        "opt": T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                           max_position_embeddings=256, word_embed_proj_dim=64, **COMMON),
    }
