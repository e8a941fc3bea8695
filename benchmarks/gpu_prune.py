"""GPU readiness of the pruning engine: how busy the calibration passes keep the device, and peak
memory against what one block + the calibration activations need.

A random ~1.1B Llama (TinyLlama's shape, bf16, built from a LlamaConfig: nothing is downloaded)
lives on the host; the engine moves one block at a time to the device. Calibration ids are random
(throughput does not depend on the text). Measured, per method (Wanda, SparseGPT):
- wall time of `prune_blocks` and peak CUDA memory (max allocated);
- the block forwards' FLOPs it ran (counted below) per second, as a share of the device's bf16 peak;
and once, a plain forward through every block (what the calibration passes are made of).

FLOPs per token of one block forward: 2 x its linear weights, plus 2 x seqlen x hidden for the
attention products (QK^T and AV over the causal half; kernels skip the masked half). The Wanda /
SparseGPT statistics pass skips the last linear (down_proj); every block but the last is re-run
pruned to feed the next.

Only torch + transformers are needed (no datasets / Ray / MLflow / Optuna):

    python benchmarks/gpu_prune.py --out gpu_prune.json            # on a GPU, < 3 minutes on an H200
    python benchmarks/gpu_prune.py --tiny --device cpu --out x.json  # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks.models import block_linears, find_blocks  # noqa: E402
from tasks.pruning import METHODS  # noqa: E402
from tasks.pruning.pipeline import capture, propagate, prune_blocks  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, without sparsity).
PEAK_BF16 = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0,
             "L40S": 362.1, "A10G": 70.0, "L4": 121.0}
SIZES = {
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096),
    "tiny": dict(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override or device.type != "cuda":
        return override
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def build(size: str, dtype: torch.dtype, device: torch.device):
    """The random model in host memory; initialised on the device when there is one (much faster)."""
    cfg = LlamaConfig(**SIZES[size])
    torch.manual_seed(0)
    with torch.device(device if device.type == "cuda" else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.to("cpu").eval(), cfg


def block_flops(block, seqlen: int, hidden: int) -> tuple[float, float]:
    """(FLOPs per token of a full block forward, of the statistics pass that stops before down_proj)."""
    linears = block_linears(block)
    full = 2 * sum(l.weight.numel() for l in linears.values()) + 2 * seqlen * hidden
    last = 2 * next(l.weight.numel() for n, l in linears.items() if n.endswith("down_proj"))
    return full, full - last


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return time.perf_counter() - t0, peak, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="a 2-block toy model (CPU smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--nsamples", type=int, default=None, help="default 64 (1b) / 4 (tiny)")
    p.add_argument("--seqlen", type=int, default=None, help="default 2048 (1b) / 32 (tiny)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--methods", default="wanda,sparsegpt")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not in the table")
    p.add_argument("--out", default=None, help="write the JSON result here too")
    args = p.parse_args()
    size = "tiny" if args.tiny else "1b"
    nsamples = args.nsamples or (4 if args.tiny else 64)
    seqlen = args.seqlen or (32 if args.tiny else 2048)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    t0 = time.perf_counter()
    model, cfg = build(size, dtype, device)
    build_s = time.perf_counter() - t0
    _, blocks = find_blocks(model)
    n_blocks, tokens = len(blocks), nsamples * seqlen
    full, stats_pass = block_flops(blocks[0], seqlen, cfg.hidden_size)
    elt = torch.empty((), dtype=dtype).element_size()
    one_block = sum(p.numel() for p in blocks[0].parameters()) * elt
    activations = tokens * cfg.hidden_size * elt
    rest = sum(p.numel() for p in model.parameters()) * elt - n_blocks * one_block  # embeddings, norm, head
    peak = peak_tflops(device, args.peak_tflops)
    ids = torch.randint(0, cfg.vocab_size, (nsamples, seqlen), generator=torch.Generator().manual_seed(1))
    lang = torch.zeros(nsamples, dtype=torch.long)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "dtype": args.dtype, "peak_bf16_tflops": peak,
              "model": {"size": size, "params": sum(p.numel() for p in model.parameters()), "blocks": n_blocks,
                        "hidden": cfg.hidden_size, "intermediate": cfg.intermediate_size},
              "nsamples": nsamples, "seqlen": seqlen, "batch_size": args.batch_size, "build_s": build_s,
              "memory_gib": {"one_block": one_block / 2**30, "activations": activations / 2**30,
                             "embeddings_and_head": rest / 2**30}}

    def rate(flop, seconds):
        tf = flop / seconds / 1e12
        return {"seconds": seconds, "tflops": tf, "fraction_of_peak": tf / peak if peak else None}

    def forward_only():  # every block on the device in turn, activations propagated: one calibration pass
        with torch.no_grad():
            inps, calls = capture(model, ids, args.batch_size, device)
            sync(device)
            t = time.perf_counter()
            for i, block in enumerate(blocks):
                block.to(device)
                propagate(block, inps, calls[i])
                block.to("cpu")
            sync(device)
            return time.perf_counter() - t

    forward_only()  # warm-up: kernels, allocator
    seconds, mem, inner = measure(forward_only, device)
    result["forward"] = {**rate(full * tokens * n_blocks, inner), "with_capture_s": seconds,
                         "peak_gib": mem / 2**30 if mem else None}

    for name in args.methods.split(","):
        cls = METHODS.get(name)
        dense = {k: v.clone() for k, v in model.state_dict().items()}
        seconds, mem, (_, report) = measure(lambda: prune_blocks(model, cls(cls.Params()), [0.5] * n_blocks, None, ids,
                                                                 lang, 1, args.batch_size, device), device)
        flop = tokens * (stats_pass * n_blocks + full * (n_blocks - 1))
        result[name] = {**rate(flop, seconds), "block_forward_flops": flop,
                        "sparsity": sum(r["actual"] for r in report) / n_blocks,
                        "peak_gib": mem / 2**30 if mem else None,
                        "peak_over_block_plus_activations": mem / (one_block + activations) if mem else None}
        model.load_state_dict(dense)
        print(f"{name}: {seconds:.1f} s", flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
