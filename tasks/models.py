"""Load causal LMs and find their decoder blocks and prunable linears.

Supported layouts (transformers 5): Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2,
Gemma3 (text), Cohere, Cohere2 keep their blocks at `model.layers`; OPT at
`model.decoder.layers`; GPT-NeoX at `gpt_neox.layers`; BLOOM at `transformer.h`.
Anything else falls back to the longest ModuleList of blocks holding linears.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import UserError

BLOCK_PATHS = ("model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.h", "model.language_model.layers")
# The FFN's down projection: its inputs are post-activation neurons (M-Wanda's activation probability).
DOWN_PROJ = ("down_proj", "dense_4h_to_h", "fc2", "c_proj", "w2")
DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(prefix, blocks) of the decoder stack, e.g. ("model.layers", ModuleList)."""
    for path in BLOCK_PATHS:
        blocks = _get(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return path, blocks
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and any(isinstance(m, nn.Linear) for m in module[0].modules()):
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise UserError("model", f"no decoder blocks found in {type(model).__name__} (looked for {', '.join(BLOCK_PATHS)})")
    return best


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The prunable linears of a block, by name inside the block, in registration order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def prunable_weights(model: nn.Module) -> dict[str, nn.Linear]:
    """Full weight name (as in the state dict) -> linear, for every block of the model."""
    prefix, blocks = find_blocks(model)
    return {f"{prefix}.{i}.{name}.weight": lin for i, b in enumerate(blocks) for name, lin in block_linears(b).items()}


def max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return None


def resolve_alias(name: str) -> str:
    """THE model-name resolver's one rule beyond paths: the alias `demo` is the demo model's folder
    (trained and cached on first use); any other name is returned as given."""
    from . import demo_model

    if name != demo_model.ALIAS:
        return name
    return str(demo_model.demo_model_path(demo_model.alias_config(), progress=True))


def model_name(model: str) -> str:
    """A readable name for records and tables: a hub id as given, a local folder by its own name."""
    local = Path(model).expanduser()
    return local.name if local.is_dir() and local.name else model


def load_model(name: str, dtype: str = "auto", device: str = "cpu", trust_remote_code: bool = False):
    """(model, tokenizer) from a hub id, a local folder or the alias `demo`, in eval mode on `device`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per load drowns the one-line errors and our own progress
    if dtype not in DTYPES:
        raise UserError("dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    name = resolve_alias(name)
    local = Path(name).expanduser()
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserError("model", f"folder {name!r} does not exist")
    if local.exists() and not (local / "config.json").exists():
        raise UserError("model", f"{name!r} has no config.json; give a folder saved with save_pretrained or a hub id")
    source = str(local) if local.exists() else name
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError("model", f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
    find_blocks(model)
    model.eval()
    return model.to(device), tokenizer


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the dense weights of every prunable linear, to restore between cells without a reload."""
    return {k: lin.weight.detach().clone() for k, lin in prunable_weights(model).items()}


@torch.no_grad()
def restore(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    for k, lin in prunable_weights(model).items():
        lin.weight.copy_(snap[k])
