"""The contract every registered method, schedule and data source passes.

Parametrised over the registries themselves, so a new method (a file in tasks/pruning/),
schedule or source is checked the moment it registers, with no list to update here.
The exactness of each algorithm against an independent reference is in test_pruning.py
and test_ria.py; this is what *any* entry must do to work in the pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from archs import arch_configs  # noqa: E402

from tasks.data.sources import HUB, SPLITS, get_source
from tasks.errors import UserError
from tasks.models import find_blocks
from tasks.pruning import METHODS, SCHEDULES
from tasks.pruning.base import parse_hp
from tasks.pruning.pipeline import prune_blocks, schedule_targets

N, L, N_LANG = 8, 32, 2


def tiny(seed=0):
    cfg = copy.deepcopy(arch_configs()["llama"])
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 384, (N, L), generator=g), torch.arange(N) % N_LANG


def make(registry, name):
    cls = registry.get(name)
    return cls(cls.Params())


def pruned_linears(model, masks):
    named = dict(model.named_modules())
    return {w: named[w.removesuffix(".weight")] for w in masks}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_hyperparameters_round_trip_and_reject_unknown_keys(name):
    params = METHODS.get(name).Params
    defaults = {f.name: getattr(params(), f.name) for f in dataclasses.fields(params)}
    assert parse_hp(params, {k: str(v) for k, v in defaults.items()}, name) == params()  # --hp KEY=VALUE strings
    with pytest.raises(UserError, match="unknown hyperparameter"):
        parse_hp(params, {"no_such_knob": "1"}, name)


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.5, (2, 4))])
@pytest.mark.parametrize("name", METHODS.names())
def test_method_prunes_what_it_is_asked_and_reports_it(name, sparsity, nm):
    model, dense = tiny(), tiny()
    ids, lang = calib()
    n_blocks = len(find_blocks(model)[1])
    masks, report = prune_blocks(model, make(METHODS, name), [sparsity] * n_blocks, nm, ids, lang, N_LANG, 4, "cpu")
    assert len(report) == n_blocks and masks, "every block reported, some linear pruned"
    dense_params = dict(dense.named_parameters())
    for weight, lin in pruned_linears(model, masks).items():
        keep = masks[weight]
        assert keep.dtype == torch.bool and keep.shape == lin.weight.shape, weight
        assert (lin.weight[~keep] == 0).all(), f"{weight}: the pipeline zeroes what the mask drops"
        assert abs((~keep).float().mean().item() - sparsity) <= 0.02, weight
        if nm is not None:
            groups = (~keep).reshape(keep.shape[0], -1, nm[1]).sum(-1)
            assert (groups == nm[0]).all(), f"{weight}: every group of {nm[1]} has {nm[0]} zeros"
        if not METHODS.get(name).updates_weights:  # the masks alone rebuild the model (analyses rely on it)
            assert torch.equal(lin.weight, dense_params[weight] * keep), weight
    for n, p in model.named_parameters():  # embeddings, norms and lm_head are never pruned
        if n not in masks:
            assert torch.equal(p, dense_params[n]), n


@pytest.mark.parametrize("name", METHODS.names())
def test_method_is_deterministic(name):
    ids, lang = calib()
    runs = []
    for _ in range(2):
        model = tiny()
        masks, _ = prune_blocks(model, make(METHODS, name), [0.5] * 3, None, ids, lang, N_LANG, 4, "cpu")
        runs.append(masks)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_keeps_the_mean_sparsity(name):
    ids, lang = calib()
    model = tiny()
    targets = schedule_targets(model, make(SCHEDULES, name), 0.6, ids, lang, N_LANG, 4, "cpu")
    assert len(targets) == len(find_blocks(model)[1])
    assert sum(targets) / len(targets) == pytest.approx(0.6, abs=1e-9)
    assert all(0 <= t < 1 for t in targets)


@pytest.mark.parametrize("name", ["builtin", "folder"])
def test_source_splits_are_disjoint_and_stable(name, text_dir):
    source = get_source("builtin" if name == "builtin" else str(text_dir))
    lang = "en"
    docs = {split: source.documents(lang, split) for split in SPLITS}
    assert all(docs.values()), "every split has text"
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not set(docs[a]) & set(docs[b]), f"{a} and {b} share documents"
    assert get_source("builtin" if name == "builtin" else str(text_dir)).fingerprint == source.fingerprint


@pytest.mark.parametrize("name", HUB.names())
def test_hub_source_is_a_function_of_language_and_split(name):
    # Hub corpora stream from the network, which tests cannot reach: their contract here is
    # their signature and a resolvable source; test_data.py covers the loading code offline.
    fn = HUB.get(name)
    assert list(inspect.signature(fn).parameters) == ["lang", "split"]
    assert get_source(name).name == name
