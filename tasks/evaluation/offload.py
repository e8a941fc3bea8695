"""lm-eval on a model bigger than its GPUs: accelerate's hooks run it with whole decoder blocks
spread over the GPUs in order and the blocks that fit none kept in host memory, copied onto the
first GPU for their turn in each forward (CPU offload).

    with dispatched(model, offload_map(model, gpu_budgets())):
        run_lmeval(model, tok, tasks)
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from ..models import find_blocks


def gpu_budgets(reserve: float = 0.15) -> dict[int, int]:
    """Bytes of weights each visible GPU may take: its free memory less `reserve` of its total
    (lm-eval's activations and logits). Under Ray, the visible GPUs are the cell's `gpus_per_cell`."""
    import torch

    if not torch.cuda.is_available():
        return {}
    out = {}
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out[i] = max(0, int(free - reserve * total))
    return out


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def offload_map(model: nn.Module, budgets: dict[int, int]) -> dict[str, int | str]:
    """An accelerate device map: what lies outside the decoder blocks (embeddings, rotary tables,
    final norm, head) on the first GPU, since every forward starts and ends there; then the blocks
    in order, each whole, on the first GPU with room left, never going back to an earlier one;
    the rest "cpu". No GPUs: everything "cpu"."""
    if not budgets:
        return {"": "cpu"}
    prefix, blocks = find_blocks(model)
    gpus, left = list(budgets), dict(budgets)
    inside = {id(m) for b in blocks for m in b.modules()}
    seen: set[int] = set()  # tied weights (embeddings = head) count once
    out: dict[str, int | str] = {}
    for name, module in model.named_modules():
        own = [t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)) if id(t) not in seen]
        if id(module) in inside or not (own or list(module.parameters(recurse=False))):
            continue
        seen.update(id(t) for t in own)
        out[name] = gpus[0]
        left[gpus[0]] -= _nbytes(own)
    g = 0
    for i, block in enumerate(blocks):
        size = _nbytes([*block.parameters(), *block.buffers()])
        while g < len(gpus) and left[gpus[g]] < size:
            g += 1
        if g < len(gpus):
            left[gpus[g]] -= size
        out[f"{prefix}.{i}"] = gpus[g] if g < len(gpus) else "cpu"
    return out


@contextmanager
def dispatched(model: nn.Module, device_map: dict[str, int | str]):
    """`model` placed by `device_map` with accelerate's hooks for the duration, then back where it
    was, hooks removed, its weights the same tensors' values as before."""
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_module

    home = next(model.parameters()).device
    # where offloaded blocks run and lm-eval's inputs go: the first GPU of the map (accelerate would
    # take any of them)
    main = next((d for d in device_map.values() if d not in ("cpu", "disk")), "cpu")
    # force_hooks: a one-device map gets the hooks too, so the CPU tests run the same code
    dispatch_model(model, device_map, main_device=main, force_hooks=True)
    try:
        yield model
    finally:
        remove_hook_from_module(model, recurse=True)  # offloaded weights come back from the host copy
        model.to(home)
        model.__dict__.pop("hf_device_map", None)
