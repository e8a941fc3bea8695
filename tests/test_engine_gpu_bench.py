"""benchmarks/gpu_prune.py runs without a GPU (--tiny) and writes its JSON result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_prune.py"), "--tiny", "--device", "cpu",
                           "--dtype", "float32", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["model"]["blocks"] == 2 and res["nsamples"] * res["seqlen"] == 4 * 32
    for method in ("wanda", "sparsegpt"):
        assert res[method]["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert res[method]["seconds"] > 0 and res[method]["block_forward_flops"] > 0
    # statistics passes skip down_proj and the last block is not re-run: less than two full passes
    assert res["wanda"]["block_forward_flops"] < 2 * res["forward"]["tflops"] * 1e12 * res["forward"]["seconds"]
    assert res["peak_bf16_tflops"] is None and res["wanda"]["fraction_of_peak"] is None  # no peak known for a CPU
