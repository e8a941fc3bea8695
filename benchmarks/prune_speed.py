"""Pruning-engine benchmark (CPU by default; --device cuda on a GPU machine).

1. Wanda end to end on a small Llama (8 blocks, hidden 512): the engine (batched, and one
   sample at a time) vs. the reference implementations' loop (written out below: one sample
   at a time, full block forwards in both passes, every block propagated), same masks required;
2. M-Wanda over 4 languages vs. Wanda on the same tokens;
3. peak memory: CUDA max-allocated on a GPU, else the process's peak RSS.

    python benchmarks/prune_speed.py [--nsamples 64] [--seqlen 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tasks.models import block_linears, find_blocks
from tasks.pruning import METHODS
from tasks.pruning.pipeline import capture, propagate, prune_blocks
from tasks.pruning.stats import ActStats, language_weights
from tasks.pruning.wanda import wanda_score


def model_8x512():
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


@torch.no_grad()
def reference_loop(model, ids, device, sparsity=0.5):
    """Wanda as locuslab/wanda and llm-compressor run it: per block, every sample through the whole
    dense block with input hooks, prune (rows sorted), every sample through the pruned block (the last one too)."""
    prefix, blocks = find_blocks(model)
    inps, calls = capture(model, ids, 1, device)
    lang = torch.zeros(1, dtype=torch.long, device=device)
    masks = {}
    for i, block in enumerate(blocks):
        block.to(device)
        linears = block_linears(block)
        stats = {n: ActStats(lin.weight, language_weights(1)) for n, lin in linears.items()}
        hooks = [lin.register_forward_hook(lambda m, x, y, n=n: stats[n].add(x[0], lang)) for n, lin in linears.items()]
        for inp, (args, kw) in zip(inps, calls[i]):
            block(inp, *args, **kw)
        for h in hooks:
            h.remove()
        for n, lin in linears.items():
            score = wanda_score(lin.weight, stats[n].norm_sq())  # the references select by a stable sort
            keep = torch.ones_like(score, dtype=torch.bool)
            keep.scatter_(1, torch.sort(score, dim=-1, stable=True)[1][:, :int(score.shape[1] * sparsity)], False)
            lin.weight.mul_(keep.to(lin.weight.dtype))
            masks[f"{prefix}.{i}.{n}.weight"] = keep.cpu()
        propagate(block, inps, calls[i])
    return masks


def run(base, method, ids, lang, n_lang, batch_size, device):
    """(wall seconds, process CPU seconds, masks). CPU time is less disturbed by other jobs on a shared machine."""
    model = copy.deepcopy(base)
    n_blocks = len(find_blocks(model)[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "reference":
        masks = reference_loop(model, ids, device)
    else:
        cls = METHODS.get(method)
        masks, _ = prune_blocks(model, cls(cls.Params()), [0.5] * n_blocks, None, ids, lang, n_lang, batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0, masks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads; 1 makes CPU time a fair measure of work on a loaded machine (no spin-waits)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(1)
    base = model_8x512()
    ids = torch.randint(0, 32000, (args.nsamples, args.seqlen))
    one = torch.zeros(args.nsamples, dtype=torch.long)
    four = torch.arange(args.nsamples) % 4
    cases = {
        "reference loop, one sample at a time": ("reference", one, 1, 1),
        "wanda engine, one sample at a time": ("wanda", one, 1, 1),
        f"wanda engine, batch {args.batch_size}": ("wanda", one, 1, args.batch_size),
        f"mwanda, 4 languages, batch {args.batch_size}": ("mwanda", four, 4, args.batch_size),
    }
    times, cpu, masks = {}, {}, {}
    run(base, "wanda", ids[: args.batch_size], one[: args.batch_size], 1, args.batch_size, device)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every case alike
        for name, (method, lang, n_lang, bs) in cases.items():
            t, c, masks[name] = run(base, method, ids, lang, n_lang, bs, device)
            times.setdefault(name, []).append(t)
            cpu.setdefault(name, []).append(c)
            print(f"  {name}: {t:.2f} s wall, {c:.2f} s CPU", flush=True)  # a killed run still shows its data
    names = list(cases)
    same = all(torch.equal(masks[names[0]][k], masks[n][k]) for n in names[1:3] for k in masks[names[0]])
    med = {n: statistics.median(t) for n, t in times.items()}
    cmed = {n: statistics.median(t) for n, t in cpu.items()}
    print(f"model: Llama 8 blocks x hidden 512 ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params), "
          f"{args.nsamples} x {args.seqlen} calibration tokens, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'case':42s} {'median s':>9s} {'CPU s':>7s} {'wall-clock runs':>24s}")
    for n in names:
        print(f"{n:42s} {med[n]:9.2f} {cmed[n]:7.2f} {' '.join(f'{t:.2f}' for t in times[n]):>24s}")
    for n in names[1:3]:
        print(f"{n} vs reference loop: {med[names[0]] / med[n]:.2f}x wall, {cmed[names[0]] / cmed[n]:.2f}x CPU")
    print(f"same masks: {same}")
    print(f"mwanda (4 languages) / wanda time: {med[names[3]] / med[names[2]]:.2f}x wall, {cmed[names[3]] / cmed[names[2]]:.2f}x CPU")
    if device.type == "cuda":
        print(f"peak CUDA memory of the last run: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(model {sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20:.0f} MiB, x2 with the working copy)")


if __name__ == "__main__":
    main()
