"""The one pruning pipeline every method shares: capture -> hooks -> prune -> propagate.

1. capture: run the model up to its first decoder block on the calibration ids (in
   batches), recording each block's own call arguments (rotary `position_embeddings`,
   per-layer masks of sliding-window models) without running any block;
2. for each block, on the device: hooks on its linears accumulate the method's
   statistic over all batches, the method turns statistics into masks, then the
   pruned block's outputs become the next block's inputs.

Only the current block and the calibration activations live on the device.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import block_linears, find_blocks
from .schedules import Schedule, check_targets
from .stats import language_weights


class _Stop(Exception):
    pass


class _Standin(nn.Module):
    """Takes block i's place in the model's own forward; reads the real block's per-layer attributes."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: model.to(device) must not move it

    def __getattr__(self, name):  # models read per-layer attributes such as `attention_type`
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)


class _Catcher(_Standin):
    """During capture: records block i's call, passes hidden states on."""

    def __init__(self, i: int, block: nn.Module, record: list, last: bool, tuple_out: bool):
        super().__init__(block)
        self.i, self.record, self.last, self.tuple_out = i, record, last, tuple_out

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        self.record[self.i].append((hidden, args[1:], kwargs))
        if self.last:
            raise _Stop
        return (hidden,) if self.tuple_out else hidden


class _Feed(_Standin):
    """After the blocks ran one by one: block 0 hands over the last block's output, the others pass it on."""

    def __init__(self, block: nn.Module, tuple_out: bool):
        super().__init__(block)
        self.hidden, self.tuple_out = None, tuple_out

    def forward(self, *args, **kwargs):
        hidden = self.hidden if self.hidden is not None else (args[0] if args else kwargs["hidden_states"])
        return (hidden,) if self.tuple_out else hidden


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture(model, input_ids: torch.Tensor, batch_size: int, device):
    """(block 0's inputs per batch, per block and batch its other call arguments)."""
    inps, calls, _ = _capture(model, input_ids, batch_size, device)
    return inps, calls


def _capture(model, input_ids, batch_size, device):
    _, blocks = find_blocks(model)
    originals = list(blocks)
    n = len(blocks)
    record = [[] for _ in originals]

    def run(stop_at: int, tuple_out: bool, ids_batches):
        # Every block is swapped out, so model.to(device) moves only embeddings, rotary and norms.
        for i in range(n):
            blocks[i] = _Catcher(i, originals[i], record, last=i == stop_at, tuple_out=tuple_out)
        model.to(device)
        try:
            for ids in ids_batches:
                try:
                    model(input_ids=ids.to(device), use_cache=False)
                except _Stop:
                    pass
        finally:
            for i, b in enumerate(originals):
                blocks[i] = b

    batches = list(input_ids.split(batch_size))
    # Probe block 0 on one sample to learn whether blocks return tuples (BLOOM, OPT) or tensors.
    run(0, False, [batches[0][:1]])
    h, args, kw = record[0].pop()
    home = next(originals[0].parameters()).device
    tuple_out = isinstance(originals[0].to(device)(h, *args, **kw), (tuple, list))
    originals[0].to(home)
    run(n - 1, tuple_out, batches)
    inps = [h for h, _, _ in record[0]]
    calls = [[(a, kw) for _, a, kw in rec] for rec in record[:n]]
    return inps, calls, tuple_out


def propagate(block, inps, calls):
    """Replace each batch's inputs by the block's outputs (the inputs are not needed again)."""
    for b, (args, kw) in enumerate(calls):
        inps[b] = _first(block(inps[b], *args, **kw))


@torch.no_grad()
def blockwise_logits(model, input_ids: torch.Tensor, batch_size: int, device):
    """The model's logits per batch of `input_ids`, equal to its full forward, with only one decoder
    block on `device` at a time (for models bigger than the device); every block moves there once.

    The model's own forward still runs the embeddings and what follows the last block (final norm,
    head, logit soft-capping or scaling), with the blocks' work replayed from the block-by-block pass.
    """
    _, blocks = find_blocks(model)
    inps, calls, tuple_out = _capture(model, input_ids, batch_size, device)
    for i, block in enumerate(blocks):
        home = next(block.parameters()).device
        block.to(device)
        propagate(block, inps, calls[i])
        block.to(home)
    originals = list(blocks)
    for i, b in enumerate(originals):
        blocks[i] = _Feed(b, tuple_out)
    try:
        for ids, hidden in zip(input_ids.split(batch_size), inps):
            blocks[0].hidden = hidden
            yield model(input_ids=ids.to(device), use_cache=False).logits
    finally:
        for i, b in enumerate(originals):
            blocks[i] = b


def _sequential_groups(block, linears: dict, inp, call) -> list[list[str]]:
    """Linears grouped by the tensor they read (q/k/v; gate/up), in execution order."""
    seen: dict[str, int] = {}

    def hook(name):
        def record(module, inputs, output):
            seen.setdefault(name, inputs[0].data_ptr())
        return record

    hooks = [lin.register_forward_hook(hook(n)) for n, lin in linears.items()]
    try:
        block(inp, *call[0], **call[1])
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    for name in sorted(seen, key=list(seen).index):
        if groups and seen[groups[-1][0]] == seen[name]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups + [[n] for n in linears if n not in seen]


def collect(block, linears: dict, make_stats, inps, calls, lang_batches):
    """Run the block over all batches with hooks filling one statistic per linear.

    Each forward stops as soon as every linear has seen its input: what the block would compute
    after that (the last linear's product, the residual) is discarded by this pass anyway.
    """
    stats = {n: make_stats(n, lin) for n, lin in linears.items()}
    pending: set[str] = set()
    current = {}

    def hook(name):
        def record(module, inputs):
            stats[name].add(inputs[0].detach(), current["lang"])
            pending.discard(name)
            if not pending:
                raise _Stop
        return record

    hooks = [lin.register_forward_pre_hook(hook(n)) for n, lin in linears.items()]
    try:
        for b, (args, kw) in enumerate(calls):
            current["lang"] = lang_batches[b]
            pending.update(linears)
            try:
                block(inps[b], *args, **kw)
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return stats


@torch.no_grad()
def schedule_targets(model, schedule: Schedule, target: float, input_ids, lang, n_lang, batch_size, device, progress=False):
    """Per-block sparsities; schedules that need statistics get one dense pass first (owl pools the
    languages, cwl correlates them unweighted: neither reads the mix's weights)."""
    prefix, blocks = find_blocks(model)
    if not schedule.needs_stats:
        return check_targets(schedule.allocate([], target, len(blocks)))
    from .stats import ActStats

    inps, calls = capture(model, input_ids, batch_size, device)
    lang_batches = [l.to(device) for l in lang.split(batch_size)]
    scores = []
    for i, block in enumerate(tqdm(blocks, desc="schedule statistics", disable=not progress, leave=False)):
        home = next(block.parameters()).device
        block.to(device)
        linears = block_linears(block)
        stats = collect(block, linears, lambda n, lin: ActStats(lin.weight, language_weights(n_lang)), inps, calls[i],
                         lang_batches)
        scores.append(schedule.block_score(linears, stats))
        del stats
        propagate(block, inps, calls[i])
        block.to(home)
    return check_targets(schedule.allocate(scores, target, len(blocks)))


@torch.no_grad()
def prune_blocks(model, method, targets: list[float], nm, input_ids, lang, n_lang, batch_size, device, progress=False,
                 weights=None):
    """Prune every block in place. Returns ({weight name: keep-mask (cpu)}, per-block report).

    `weights`: the calibration languages' mix weights ([n_lang]; None: equal), which methods that
    weight per-language statistics (mwanda, mria) read."""
    prefix, blocks = find_blocks(model)
    languages = language_weights(n_lang, weights)
    masks, report = {}, []
    sequential = getattr(method.params, "true_sequential", False)
    if method.needs_calibration:
        inps, calls = capture(model, input_ids, batch_size, device)
        lang_batches = [l.to(device) for l in lang.split(batch_size)]
    for i, block in enumerate(tqdm(blocks, desc=f"pruning ({type(method).__name__})", disable=not progress)):
        t0 = time.perf_counter()
        home = next(block.parameters()).device
        block.to(device)
        linears = block_linears(block)
        if method.needs_calibration and sequential:
            groups = _sequential_groups(block, linears, inps[0], calls[i][0])
        else:
            groups = [list(linears)]
        layer_sparsity = {}
        for group in groups:
            members = {n: linears[n] for n in group}
            stats = (
                collect(block, members, lambda n, lin: method.new_stats(n, lin, languages), inps, calls[i], lang_batches)
                if method.needs_calibration else dict.fromkeys(members)
            )
            for name, lin in members.items():
                keep = method.prune(lin, stats[name], targets[i], nm)
                masks[f"{prefix}.{i}.{name}.weight"], layer_sparsity[name] = keep.cpu(), apply_keep(lin, keep)
            del stats
        if method.needs_calibration and i + 1 < len(blocks):
            propagate(block, inps, calls[i])
        block.to(home)
        report.append(block_report(i, targets[i], linears, layer_sparsity, t0))
    return masks, report


def apply_keep(lin, keep) -> float:
    """Zero the weights `keep` drops; the linear's achieved sparsity."""
    lin.weight.mul_(keep.to(lin.weight.dtype))
    return 1 - lin.weight.count_nonzero().item() / lin.weight.numel()


def block_report(i: int, target: float, linears: dict, layer_sparsity: dict, t0: float) -> dict:
    """A pruned block's line of result.json: its target, achieved sparsity (weighted by size), linears, time."""
    total = sum(lin.weight.numel() for lin in linears.values())
    zeros = sum(layer_sparsity[n] * linears[n].weight.numel() for n in layer_sparsity)
    return {"block": i, "target": target, "actual": zeros / total, "linears": layer_sparsity, "time_s": time.perf_counter() - t0}
