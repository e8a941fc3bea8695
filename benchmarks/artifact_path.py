"""Does the sweep driver's memory depend on how big the cells' artifacts are? (issue 13 item 2)

One sweep of 3 cells (the dense baseline + Wanda 50% calibrated in en and in sw) with
`save_model: true`, on a small model (~1 MB of weights) and on a larger one (~200 MB of
weights: the pruned model is saved with every cell, so ~200 MB of artifacts per pruned cell).
Each sweep runs in a fresh driver process with its own local Ray and sqlite store; measured:
- the driver's peak RSS (`ru_maxrss` of the driver process; workers are other processes);
- the driver's time per cell spent recording it (`tracking.finish_cell`, timed in-process).

    python benchmarks/artifact_path.py                         # this checkout's code path
    python benchmarks/artifact_path.py --code /tmp/main-src    # another checkout (e.g. main:
                                                               # git archive main | tar -x -C /tmp/main-src)
Target: driver peak RSS independent of the artifact size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {  # name: (hidden, layers, ffn) of a random Llama; ~4 bytes per parameter on disk
    "small": (64, 2, 128),
    "200MB": (1024, 4, 2816),
}

DRIVER = r"""
import json, resource, sys, time
from pathlib import Path
from orchestrator import tracking
from orchestrator.sweep import driver, file, record

spent = []
finish = tracking.finish_cell
def timed(*a, **k):
    t0 = time.perf_counter()
    try:
        return finish(*a, **k)
    finally:
        spent.append(time.perf_counter() - t0)
tracking.finish_cell = timed
path = Path(sys.argv[1])
cfg = file.load_sweep(path)
t0 = time.perf_counter()
code = driver.execute(cfg, file.expand(cfg), file=path)
print("RESULT " + json.dumps({"code": code, "wall_s": time.perf_counter() - t0, "record_s": spent,
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_model(path: Path, hidden: int, layers: int, ffn: int) -> int:
    import torch
    from transformers import AutoModelForCausalLM, ByT5Tokenizer, LlamaConfig

    cfg = LlamaConfig(vocab_size=384, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                      num_attention_heads=8 if hidden >= 512 else 4, num_key_value_heads=8 if hidden >= 512 else 4,
                      max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def run_sweep(folder: Path, code: Path) -> dict:
    import yaml

    sweep = {"name": "artifacts", "models": ["./model"], "methods": ["wanda"], "sparsities": [0.5],
             "calibration": {"languages": ["en", "sw"], "data": "builtin", "nsamples": 4, "seqlen": 64},
             "seeds": [0], "evaluation": {"ppl": {"languages": ["en"], "nsamples": 2}},
             "resources": {"cpu_workers": 1}, "save_model": True}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_AUTH_MODE": "disabled"}
    for _ in range(3):  # on a loaded machine a local Ray may time out starting: try again
        shutil.rmtree(folder / "mlartifacts", ignore_errors=True)
        (folder / "mlflow.db").unlink(missing_ok=True)
        out = subprocess.run([sys.executable, "-c", DRIVER, str(path)], cwd=folder, env=env, capture_output=True, text=True)
        if "timed out during startup" not in out.stderr:
            break
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"the sweep failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    art = folder / "mlartifacts"
    res["artifact_mb"] = sum(p.stat().st_size for p in art.rglob("*") if p.is_file()) / 2**20 if art.exists() else 0.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose orchestrator runs the driver")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    a = ap.parse_args()
    print(f"code: {a.code}")
    print(f"{'model':8} {'params':>10} {'artifacts MB':>13} {'driver peak RSS MB':>19} {'record s/cell':>14} {'wall s':>8}")
    for name in a.sizes:
        with tempfile.TemporaryDirectory(prefix="polyprune-artifacts-") as tmp:
            folder = Path(tmp)
            n = make_model(folder / "model", *SIZES[name])
            r = run_sweep(folder, a.code.resolve())
            per_cell = sum(r["record_s"]) / max(1, len(r["record_s"]))
            print(f"{name:8} {n:>10,} {r['artifact_mb']:>13.1f} {r['peak_rss_mb']:>19.0f} {per_cell:>14.2f} {r['wall_s']:>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
