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

from safetensors import SafetensorError, safe_open

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


def read_config(name: str, trust_remote_code: bool = False):
    """THE reader of a model's config, nothing loaded (a local folder, the alias `demo` or a hub id):
    transformers' config of it, or one line saying why it cannot be read."""
    from transformers import AutoConfig

    local = Path(resolve_alias(name)).expanduser()
    try:
        return AutoConfig.from_pretrained(str(local) if local.exists() else name, trust_remote_code=trust_remote_code)
    except Exception as e:  # a missing or broken file, an unknown model type, remote code failing
        raise UserError("model", f"cannot read the config of {name!r}: {str(e).splitlines()[0]}") from None


def text_setting(config, keys: tuple[str, ...]) -> int | None:
    """The first of `keys` the config's language model sets (a multimodal config nests it)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return next((int(getattr(text, k)) for k in keys if getattr(text, k, None)), None)


def config_positions(config) -> int | None:
    return text_setting(config, ("max_position_embeddings", "n_positions", "seq_length"))


def max_positions(model: nn.Module) -> int | None:
    return config_positions(model.config)


def n_blocks(name: str, trust_remote_code: bool = False) -> int:
    """Decoder blocks of a model, from its config alone (`read_config`)."""
    blocks = text_setting(read_config(name, trust_remote_code), ("num_hidden_layers", "n_layer", "num_layers"))
    if blocks is None:
        raise UserError("model", f"cannot tell the number of blocks of {name!r} from its config (needed for a per-block profile)")
    return blocks


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
    if local.exists():
        check_weight_files(local)
    try:
        # safetensors only: a pickled checkpoint can run code on load
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                     use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError("model", f"cannot load {name!r}: {str(e).splitlines()[0]}") from None
    find_blocks(model)
    model.eval()
    return model.to(device), tokenizer


def fits_device(model: nn.Module, device, reserve: float = 0.15, free: int | None = None) -> bool:
    """Whether the whole model fits `device` with `reserve` of its memory left for activations.

    Host memory always counts as fitting: the model was loaded there. `free` gives the device's
    free bytes instead of measuring them (a simulated device budget, on any device type).
    """
    device = torch.device(device)
    if device.type != "cuda" and free is None:
        return True
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    missing = sum(p.numel() * p.element_size() for p in model.parameters() if p.device != device or free is not None)
    if not missing:
        return True
    total = free
    if free is None:
        free, total = torch.cuda.mem_get_info(device)
    return missing <= free - reserve * total


def check_weight_files(folder: Path) -> None:
    """One line naming the file when a local `*.safetensors` is truncated or not safetensors at all.

    Reads only the headers: a header that promises more bytes than the file holds is how a cut-off
    download or copy shows.
    """
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError("model", f"{str(path)!r} is not a complete safetensors weights file "
                                     f"({str(e).splitlines()[0]}); expected the weights written by save_pretrained") from None


def weight_bytes(config, dtype: str = "auto") -> int:
    """Bytes of a model's parameters at `dtype`, from its config alone (the model is built on the meta device)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError("dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if torch_dtype == "auto":  # what from_pretrained(dtype="auto") would pick
        torch_dtype = getattr(config, "dtype", None) or torch.float32
        torch_dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    size = torch.empty((), dtype=torch_dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * size  # buffers (rotary tables) are negligible


HOST_MEMORY_ENV = "POLYPRUNE_HOST_MEMORY_GIB"


def available_host_memory() -> int:
    """Bytes this process may still allocate: the host's available memory, or less under a cgroup
    limit, or less than $POLYPRUNE_HOST_MEMORY_GIB (a cap for shared nodes; tests simulate a small host)."""
    import os

    import psutil

    free = psutil.virtual_memory().available
    cap = os.environ.get(HOST_MEMORY_ENV)
    if cap:
        try:
            free = min(free, int(float(cap) * 2**30))
        except ValueError:
            raise UserError(HOST_MEMORY_ENV, f"must be a number of GiB, got {cap!r}") from None
    try:  # containers: the cgroup v2 limit binds before the host runs out
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def check_host_memory(name: str, dtype: str = "auto", available: int | None = None, config=None,
                      trust_remote_code: bool = False, headroom: float = 1.1) -> int:
    """Fail with one line before loading when the host lacks memory for the model's weights.

    The need is the weights at `dtype` (from the config, nothing is loaded) times `headroom` for
    what loading and pruning add; `available` overrides the measured free memory (tests simulate a
    small host with it). Returns the estimated need in bytes.
    """
    if config is None:
        config = read_config(name, trust_remote_code)
    need = int(weight_bytes(config, dtype) * headroom)
    have = available_host_memory() if available is None else int(available)
    if need > have:
        raise UserError("model", f"{name!r} needs about {_size(need)} of host memory ({dtype} weights), "
                                 f"but only {_size(have)} is available on this host")
    return need


def linear_bytes(model: nn.Module) -> int:
    """Bytes of the prunable linears' weights: what `snapshot` copies."""
    return sum(lin.weight.numel() * lin.weight.element_size() for lin in prunable_weights(model).values())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the dense weights of every prunable linear, to restore between cells without a reload."""
    return {k: lin.weight.detach().clone() for k, lin in prunable_weights(model).items()}


@torch.no_grad()
def restore(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    for k, lin in prunable_weights(model).items():
        lin.weight.copy_(snap[k])
