"""Pruning-engine benchmark (CPU by default; --device cuda on a GPU machine).

1. Wanda end to end on a small Llama (8 blocks, hidden 512): batched calibration
   forwards vs. one sample at a time (the reference loop), same masks required;
2. M-Wanda over 4 languages vs. Wanda on the same tokens;
3. peak memory: CUDA max-allocated on a GPU, else the process's peak RSS.

    python benchmarks/prune_speed.py [--nsamples 64] [--seqlen 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from tasks.models import find_blocks
from tasks.pruning import METHODS
from tasks.pruning.pipeline import prune_blocks


def model_8x512():
    cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def run(base, method, ids, lang, n_lang, batch_size, device):
    model = copy.deepcopy(base)
    cls = METHODS.get(method)
    n_blocks = len(find_blocks(model)[1])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    masks, _ = prune_blocks(model, cls(cls.Params()), [0.5] * n_blocks, None, ids, lang, n_lang, batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, masks


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(1)
    base = model_8x512()
    ids = torch.randint(0, 32000, (args.nsamples, args.seqlen))
    one = torch.zeros(args.nsamples, dtype=torch.long)
    four = torch.arange(args.nsamples) % 4
    cases = {
        f"wanda, one sample at a time": ("wanda", one, 1, 1),
        f"wanda, batch {args.batch_size}": ("wanda", one, 1, args.batch_size),
        f"mwanda, 4 languages, batch {args.batch_size}": ("mwanda", four, 4, args.batch_size),
    }
    times, masks = {}, {}
    run(base, "wanda", ids[: args.batch_size], one[: args.batch_size], 1, args.batch_size, device)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every case alike
        for name, (method, lang, n_lang, bs) in cases.items():
            t, masks[name] = run(base, method, ids, lang, n_lang, bs, device)
            times.setdefault(name, []).append(t)
    names = list(cases)
    same = all(torch.equal(masks[names[0]][k], masks[names[1]][k]) for k in masks[names[0]])
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"model: Llama 8 blocks x hidden 512 ({sum(p.numel() for p in base.parameters()) / 1e6:.1f}M params), "
          f"{args.nsamples} x {args.seqlen} calibration tokens, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'case':42s} {'median s':>9s} {'runs':>24s}")
    for n in names:
        print(f"{n:42s} {med[n]:9.2f} {' '.join(f'{t:.2f}' for t in times[n]):>24s}")
    print(f"batched vs one-at-a-time speed-up: {med[names[0]] / med[names[1]]:.2f}x (same masks: {same})")
    print(f"mwanda (4 languages) / wanda time: {med[names[2]] / med[names[1]]:.2f}x")
    if device.type == "cuda":
        print(f"peak CUDA memory of the last run: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"peak process RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(model {sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20:.0f} MiB, x2 with the working copy)")


if __name__ == "__main__":
    main()
