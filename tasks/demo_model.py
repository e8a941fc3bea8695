"""The demo model: a small multilingual byte-level Llama that polyprune trains itself.

Hubs are out of reach offline, so `polyprune demo` needs a model whose
languages really differ: this one is trained on the calibration split of the
built-in corpus (`tasks.data.builtin`), half of every batch from the ten target
languages, the rest from all other text there. Held-out bits per byte use the
eval split, which training never saw. The recipe was measured on a 2-core CPU
(docs/data.md, "The demo model"); training is deterministic from the seed, and the
result is cached under <cache root>/demo/<hash of config and corpus>/polyprune-demo-llama/,
and the model alias `demo` names it wherever a model is named.
"""

from __future__ import annotations

import contextlib
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

BUILD = 1  # bump when training changes in a way the config does not show, so caches are rebuilt


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
    target_share: float = 0.5  # of each batch, drawn uniformly over builtin.TARGETS
    max_position_embeddings: int = 256  # so evaluation at seqlen up to 256 works
    # bf16 autocast is ~1.65x faster only on CPUs with AMX/AVX512-BF16; it changes the result, so it is config.
    autocast_bf16: bool = True


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
    gen = torch.Generator().manual_seed(cfg.seed)

    def window(stream):
        start = torch.randint(0, len(stream) - cfg.seqlen, (1,), generator=gen).item()
        return stream[start : start + cfg.seqlen]

    while True:
        langs = torch.randint(0, len(targets), (n_target,), generator=gen).tolist()
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
    """Train the demo model. Returns (model in eval mode, tokenizer, {"losses": [...], "time_s": ...})."""
    from tqdm.auto import tqdm

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
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.autocast_bf16 else contextlib.nullcontext()
    losses = []
    start = time.perf_counter()
    model.train()
    with tqdm(range(cfg.steps), desc="training demo model", disable=not progress) as bar:
        for _ in bar:
            ids = next(batches)
            with autocast:
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


def demo_model_path(cfg: DemoConfig = DemoConfig(), progress: bool = True) -> Path:
    """The trained demo model's folder <cache>/demo/<hash>/polyprune-demo-llama (loadable by plain
    transformers); trains it on first use."""
    spec = json.dumps({"config": dataclasses.asdict(cfg), "corpus": builtin.corpus_version(), "build": BUILD},
                      sort_keys=True)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    home = builtin.cache_root() / "demo" / digest
    path = home / NAME
    if (home / "config.json").is_file() and not path.exists():
        _move_into_named_folder(home)  # cached before the folder had a name: keep the trained model
    if path.is_dir():
        return path
    model, tokenizer, log = train(cfg, progress)
    tmp_home = home.with_name(f"{digest}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_home, ignore_errors=True)
    tmp = tmp_home / NAME
    model.save_pretrained(tmp)  # safetensors and config.json
    tokenizer.save_pretrained(tmp)
    versions = {p: version(p) for p in ("torch", "transformers", *builtin.PACKAGES)}
    record = {**json.loads(spec), "hash": digest, "versions": versions, "torch_threads": torch.get_num_threads(), **log}
    (tmp / "training.json").write_text(json.dumps(record, indent=1))
    try:
        tmp_home.rename(home)  # atomic: the folder appears complete or not at all
    except OSError:  # another process finished first; its model is the same
        shutil.rmtree(tmp_home)
    return path


def _move_into_named_folder(home: Path) -> None:
    """<hash>/{config.json, ...} (the first cache layout) -> <hash>/polyprune-demo-llama/."""
    moving = home.with_name(f"{home.name}.tmp-{os.getpid()}")
    try:
        home.rename(moving)
        moving.mkdir(exist_ok=True)
    except OSError:  # another process is moving it
        return
    inner = moving / f"{NAME}.tmp"
    inner.mkdir()
    for f in list(moving.iterdir()):
        if f != inner:
            f.rename(inner / f.name)
    inner.rename(moving / NAME)
    moving.rename(home)


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


@torch.no_grad()
def bits_per_byte(model, tokenizer, texts: list[str], seqlen: int = 128, batch: int = 32) -> float:
    """Mean bits per predicted byte over non-overlapping windows of `seqlen` tokens of each text."""
    windows = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        windows += [ids[i : i + seqlen] for i in range(0, len(ids) - 1, seqlen) if len(ids[i : i + seqlen]) > 1]
    nll, count = 0.0, 0
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        width = max(map(len, chunk))
        ids = torch.zeros(len(chunk), width, dtype=torch.long)  # pad 0 is masked out below
        mask = torch.zeros(len(chunk), width, dtype=torch.bool)
        for r, w in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            mask[r, : len(w)] = True
        logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()
        targets, keep = ids[:, 1:], mask[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        nll += losses[keep].sum().item()
        count += keep.sum().item()
    return nll / count / math.log(2)


def unigram_bits_per_byte(train_texts: list[str], eval_texts: list[str], alpha: float = 1.0) -> float:
    """Bits per byte of eval text under add-`alpha` byte frequencies of the training text: the floor to beat."""
    def as_bytes(texts):
        return torch.tensor(list("".join(texts).encode()), dtype=torch.long)

    counts = torch.bincount(as_bytes(train_texts), minlength=256).double()
    logp = torch.log2((counts + alpha) / (counts.sum() + 256 * alpha))
    return -logp[as_bytes(eval_texts)].mean().item()
