"""The Python API the orchestrator (and users) call. Plain data in, plain data out.

    model, tok = load_model("path/or/hub-id")
    res = prune(model, tok, PruneSpec(model="...", method="wanda", sparsity="0.5", calib="en,sw"))
    save_outputs("out/", model, tok, res)
    ppl = perplexity(model, tok, ["en", "sw"], data="builtin")   # {"en": 12.3, "sw": 20.1}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PruneSpec:
    """Everything that determines one pruned model. Unknown hp keys are rejected by `check_spec`."""

    model: str
    method: str
    sparsity: str  # "0.5" (unstructured fraction in [0, 1)) or "N:M"
    calib: str = "en"  # "en" | "en,de" | "en=0.7,de=0.3"
    data: str = "builtin"  # local folder, "builtin", or a hub corpus name (mc4, culturax, wikipedia, flores)
    nsamples: int = 128
    seqlen: int | None = None  # None: min(2048, the model's max positions)
    seed: int = 0
    schedule: str = "uniform"  # uniform | owl | cwl | path to a per-block list (YAML/JSON)
    hp: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8  # calibration forward batch
    device: str = "cpu"
    dtype: str = "auto"
    trust_remote_code: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
