"""The demo model: a small multilingual byte-level Llama that polyprune trains itself.

Hubs are out of reach offline, so `polyprune demo` needs a model whose
languages really differ, and differ as in a real multilingual LLM: English
dominates and the long tail is starved. It is trained on the calibration split of
the built-in corpus (`tasks.data.builtin`): three quarters of every batch from the
ten target languages, each drawn with its share of GPT-3's training characters
tempered by an exponent (`training_shares`), the rest from all other text there.
Held-out bits per byte use the valid and test splits, which training never saw.

The same model everywhere: training runs in float32 on one thread with
deterministic kernels (bf16 autocast made weights depend on the processor), and
the weights the recipe produced ship with the package (`tasks/demo_weights/`,
bfloat16, with `training.json`). The `demo` alias copies them into
<cache root>/demo/<hash of config and corpus>/polyprune-demo-llama/ on first use,
with no training; `python -m tasks.demo_model --rebuild OUT` retrains with the
recipe (docs/data.md, "The demo model"). Another config (`--steps` in tests and
quick looks) is trained and cached under its own hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import torch

from .data import builtin
from .versions import versions as library_versions

BUILD = 2  # bump when training changes in a way the config does not show, so caches are rebuilt


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    seed: int = 0
    steps: int = 450  # fixed step count, not a time budget, so every machine trains the same model
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 672
    seqlen: int = 128
    batch: int = 32
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # matrices only; norms stay undecayed
    warmup: int = 30
    final_lr: float = 0.1  # cosine decays to this fraction of lr
    clip: float = 1.0
    target_share: float = 0.75  # of each batch, over builtin.TARGETS with `training_shares`
    temper: float = 0.3  # target languages drawn with p ~ (GPT-3 character share) ** temper
    max_position_embeddings: int = 256  # so evaluation at seqlen up to 256 works


# Each language's share of GPT-3's training data by characters, in % (Brown et al. 2020; the table
# `dataset_statistics/languages_by_character_count.csv` of github.com/openai/gpt-3). zh: simplified only.
GPT3_CHARACTER_SHARES = {"en": 92.09864, "fr": 1.77858, "de": 1.67583, "es": 0.78883, "ru": 0.22445,
                         "ja": 0.16110, "zh": 0.16012, "ar": 0.03046, "hi": 0.00289, "sw": 0.00033}


def target_probabilities(cfg: DemoConfig = DemoConfig()) -> dict[str, float]:
    """How a target row picks its language: GPT-3's shares tempered, p ~ share ** temper. Raw shares
    would give Swahili 3 rows in a million; tempering (as XLM-R and mT5 sample languages) keeps the
    long tail in training, still ~40x rarer than English at 0.3."""
    weights = {l: GPT3_CHARACTER_SHARES[l] ** cfg.temper for l in builtin.TARGETS}
    total = sum(weights.values())
    return {l: w / total for l, w in weights.items()}


def training_shares(cfg: DemoConfig = DemoConfig()) -> dict[str, float]:
    """Every language's share of the demo model's training tokens, from the recipe: target rows by
    `target_probabilities`, the rest from one stream of every other language's text, where a
    language's share is its share of that stream's tokens (UTF-8 bytes plus one end-of-document token).
    The MBS baseline of the demo's search is computed from these."""
    n_target = round(cfg.batch * cfg.target_share)
    shares = {l: n_target / cfg.batch * p for l, p in target_probabilities(cfg).items()}
    others = {l: sum(len(d.encode()) + 1 for d in builtin.documents(l, "calib"))
              for l in builtin.LANGUAGES if l not in builtin.TARGETS}
    total = sum(others.values()) + sum(len(d.encode()) + 1 for d in builtin.rest_documents())
    shares.update({l: (cfg.batch - n_target) / cfg.batch * n / total for l, n in others.items()})
    return shares


def _tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()  # bytes + 3; eos 1, pad 0; 384 ids with the extra ids; needs no files


def _stream(texts: list[str], tokenizer) -> torch.Tensor:
    """All documents as one token stream, each followed by eos."""
    ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
    return torch.tensor([t for doc in ids for t in doc], dtype=torch.long)


def _batches(cfg: DemoConfig, tokenizer):
    """Endless (batch, seqlen) windows: target-language rows first, then rows from the rest of the corpus."""
    targets = [_stream(builtin.documents(lang, "calib"), tokenizer) for lang in builtin.TARGETS]
    others = [builtin.documents(lang, "calib") for lang in builtin.LANGUAGES if lang not in builtin.TARGETS]
    rest = _stream([d for docs in others for d in docs] + builtin.rest_documents(), tokenizer)
    n_target = round(cfg.batch * cfg.target_share)
    probs = torch.tensor(list(target_probabilities(cfg).values()), dtype=torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed)

    def window(stream):
        start = torch.randint(0, len(stream) - cfg.seqlen, (1,), generator=gen).item()
        return stream[start : start + cfg.seqlen]

    while True:
        langs = torch.multinomial(probs, n_target, replacement=True, generator=gen).tolist()
        rows = [window(targets[i]) for i in langs] + [window(rest) for _ in range(cfg.batch - n_target)]
        yield torch.stack(rows)


def _model(cfg: DemoConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=384, hidden_size=cfg.hidden, intermediate_size=cfg.ffn, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config)


def _lr_factor(cfg: DemoConfig, step: int) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.final_lr + (1 - cfg.final_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def train(cfg: DemoConfig = DemoConfig(), progress: bool = True):
    """Train the demo model. Returns (model in eval mode, tokenizer, {"losses": [...], "time_s": ...}).
    float32, one thread, deterministic kernels: the same weights on any x86 or ARM CPU that runs
    this torch (a thread count changes reduction order, so it is pinned)."""
    from tqdm.auto import tqdm

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, progress, tqdm)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: DemoConfig, progress: bool, tqdm):
    tokenizer = _tokenizer()
    model = _model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s))
    batches = _batches(cfg, tokenizer)
    losses = []
    start = time.perf_counter()
    model.train()
    with tqdm(range(cfg.steps), desc="training demo model", disable=not progress) as bar:
        for _ in bar:
            ids = next(batches)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model, tokenizer, {"losses": losses, "time_s": time.perf_counter() - start}


NAME = "polyprune-demo-llama"  # the folder's name, so records and tables show a name, not a cache hash
ALIAS = "demo"  # usable wherever a model is named (tasks.models.resolve_alias)


SHIPPED = Path(__file__).with_name("demo_weights")  # the recipe's weights, bfloat16, and their training.json


def recipe(cfg: DemoConfig = DemoConfig()) -> tuple[dict, str]:
    """What the weights are a function of (config, corpus, build) and its hash: the cache folder's name."""
    spec = {"config": dataclasses.asdict(cfg), "corpus": builtin.corpus_version(), "build": BUILD}
    return spec, hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def demo_model_path(cfg: DemoConfig = DemoConfig(), progress: bool = True) -> Path:
    """The demo model's folder <cache>/demo/<hash>/polyprune-demo-llama (loadable by plain
    transformers): the shipped weights when `cfg` is the recipe they were made with, else trained
    on first use."""
    spec, digest = recipe(cfg)
    home = builtin.cache_root() / "demo" / digest
    path = home / NAME
    if path.is_dir():
        return path
    shipped = load_shipped(cfg, digest)
    model, tokenizer, log = shipped if shipped is not None else train(cfg, progress)
    tmp_home = home.with_name(f"{digest}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_home, ignore_errors=True)
    tmp = tmp_home / NAME
    model.save_pretrained(tmp)  # safetensors (float32) and config.json
    tokenizer.save_pretrained(tmp)
    record = {**spec, "hash": digest, "source": "shipped" if shipped is not None else "trained", "versions": versions(), **log}
    (tmp / "training.json").write_text(json.dumps(record, indent=1))
    try:
        tmp_home.rename(home)  # atomic: the folder appears complete or not at all
    except OSError:  # another process finished first; its model is the same
        shutil.rmtree(tmp_home)
    return path


def versions() -> dict[str, str]:
    """The libraries every record names (tasks.versions), and the packages the corpus is read from."""
    return {**library_versions(), **{p: version(p) for p in builtin.PACKAGES}}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_shipped(cfg: DemoConfig, digest: str):
    """(model, tokenizer, log) from tasks/demo_weights when they were made by this recipe, else None."""
    weights, record = SHIPPED / "model.safetensors", SHIPPED / "training.json"
    if not (weights.is_file() and record.is_file()):
        return None
    shipped = json.loads(record.read_text())
    if shipped.get("hash") != digest:
        return None  # another recipe (a changed config or corpus): train it
    if file_sha256(weights) != shipped.get("sha256"):
        from .errors import UserError

        raise UserError("demo model", f"{weights} does not match its training.json (sha256); reinstall polyprune, "
                                      f"or rebuild it: python -m tasks.demo_model --rebuild {SHIPPED}")
    from safetensors.torch import load_file

    model = from_shipped_state(cfg, load_file(weights))
    return model, _tokenizer(), {k: shipped[k] for k in ("losses", "time_s", "sha256", "quality") if k in shipped}


def from_shipped_state(cfg: DemoConfig, state: dict[str, torch.Tensor]):
    """The model (eval mode, float32) whose weights are the shipped bfloat16 `state` (lm_head tied, not stored)."""
    model = _model(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.tie_weights()
    return model.eval()


def ship(model, log: dict, cfg: DemoConfig, out: Path) -> dict:
    """Write the trained model as shipped weights into `out`: bfloat16 safetensors (6 MB; the model
    *is* these rounded weights) and training.json (recipe, hash, versions, losses, sha256, quality)."""
    from safetensors.torch import save_file

    from .demo_quality import target_quality

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, out / "model.safetensors")
    spec, digest = recipe(cfg)
    quality = target_quality(from_shipped_state(cfg, state), _tokenizer())  # the model as it ships: rounded
    record = {**spec, "hash": digest, "versions": versions(), "threads": 1, "deterministic": True, **log,
              "sha256": file_sha256(out / "model.safetensors"), "quality": quality}
    (out / "training.json").write_text(json.dumps(record, indent=1))
    return record


def alias_config() -> DemoConfig:
    """The config the `demo` alias trains: the recipe's, or POLYPRUNE_DEMO_STEPS steps (a shortened
    model for tests and quick looks; its hash differs, so it never replaces the real one)."""
    steps = os.environ.get("POLYPRUNE_DEMO_STEPS")
    if not steps:
        return DemoConfig()
    if not steps.isdigit() or int(steps) < 1:
        from .errors import UserError

        raise UserError("POLYPRUNE_DEMO_STEPS", f"must be a positive integer, got {steps!r}")
    return DemoConfig(steps=int(steps))


def model_hash(path: str | os.PathLike) -> str | None:
    """The cache hash of a demo model folder (None for any other folder)."""
    record = Path(path) / "training.json"
    if Path(path).name != NAME or not record.is_file():
        return None
    return json.loads(record.read_text()).get("hash") or Path(path).parent.name


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.demo_model --rebuild OUT`: train the recipe (float32, one thread; ~6-12 min on
    a CPU core) into OUT as shipped weights, and say how far they are from the shipped ones."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.demo_model", description=main.__doc__.splitlines()[0])
    parser.add_argument("--rebuild", metavar="OUT", required=True, help="folder for model.safetensors + training.json")
    args = parser.parse_args(argv)
    from .demo_quality import compare_weights

    cfg = DemoConfig()
    model, _, log = train(cfg, progress=True)
    record = ship(model, log, cfg, Path(args.rebuild))
    print(json.dumps({"out": args.rebuild, "hash": record["hash"], "sha256": record["sha256"],
                      "vs_shipped": compare_weights(Path(args.rebuild), SHIPPED)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
