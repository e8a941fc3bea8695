"""RIA and M-Wanda-on-RIA (`mria`) against a straightforward independent implementation.

As tests/test_pruning.py does for Wanda, the reference prunes block by block but takes every
statistic from plain full-model forwards, one sample at a time, with the earlier blocks already
pruned: no capture, batching or hooks of the engine. Its score is the RIA paper's code line
(activations as sqrt(mean of x^2), which only rescales ||X_j||); its selections are written out
with sorts and loops.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_pruning import calib as calibration, linear_inputs, make, tiny  # noqa: E402  (the same tiny models and forwards)

from tasks.models import block_linears, find_blocks
from tasks.pruning.pipeline import prune_blocks
from tasks.pruning.sparsity import parse_sparsity


def run(model, method, sparsity, ids, lang, n_lang, weights=None):
    sp = parse_sparsity(sparsity)
    n_blocks = len(find_blocks(model)[1])
    masks, _ = prune_blocks(model, method, [sp.fraction] * n_blocks, sp.nm, ids, lang, n_lang, batch_size=4, device="cpu",
                            weights=weights)
    return masks


def ref_ria(W, X, s, nm, a, scope):
    scaler_row = (X**2).sum(0) / X.shape[0]
    A = torch.abs(W)
    metric = (A / torch.sum(A, dim=0) + A / torch.sum(A, dim=1).reshape(-1, 1)) * torch.sqrt(scaler_row.reshape(1, -1)) ** a
    prune = torch.zeros_like(W, dtype=torch.bool)
    if nm:
        n, m = nm
        for r in range(W.shape[0]):
            for c in range(0, W.shape[1], m):
                order = sorted(range(m), key=lambda j: metric[r, c + j].item())
                for j in order[:n]:
                    prune[r, c + j] = True
    elif scope == "row":
        k = int(W.shape[1] * s)
        for r in range(W.shape[0]):
            prune[r, torch.sort(metric[r], stable=True)[1][:k]] = True
    else:
        k = int(W.numel() * s)  # the floor(numel * s) lowest; RIA's own `<= S_(k)` drops one more
        prune.view(-1)[torch.sort(metric.flatten(), stable=True)[1][:k]] = True
    W[prune] = 0
    return ~prune


@torch.no_grad()
def reference_prune(model, ids, sparsity, a=0.5, scope="matrix"):
    sp = parse_sparsity(sparsity)
    masks = {}
    for i, block in enumerate(find_blocks(model)[1]):
        X = linear_inputs(model, block, ids)  # blocks < i are already pruned
        for name, lin in block_linears(block).items():
            W = lin.weight.data.clone()
            masks[(i, name)] = ref_ria(W, X[name], sp.fraction, sp.nm, a, scope)
            lin.weight.copy_(W)
    return masks


@pytest.mark.parametrize(("arch", "sparsity", "hp"), [
    ("llama", "0.5", {}),
    ("llama", "0.7", {"a": 1.0}),
    ("llama", "0.5", {"scope": "row"}),
    ("llama", "2:4", {}),
    ("opt", "0.5", {}),
    ("opt", "2:4", {"a": 0.25}),
])
def test_ria_masks_and_weights_match_reference(arch, sparsity, hp):
    ids, lang = calibration()
    ours, ref = tiny(arch), tiny(arch)
    masks = run(ours, make("ria", **hp), sparsity, ids, lang, 1)
    prefix = find_blocks(ours)[0]
    for (i, name), keep in reference_prune(ref, ids, sparsity, **hp).items():
        assert torch.equal(masks[f"{prefix}.{i}.{name}.weight"], keep), (i, name)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(p1, p2), n1


def test_ria_is_not_wanda():
    """The relative-importance term must change the masks, or the method is Wanda by another name."""
    ids, lang = calibration()
    ria = run(tiny(), make("ria", scope="row"), "0.5", ids, lang, 1)
    wanda = run(tiny(), make("wanda"), "0.5", ids, lang, 1)
    assert any(not torch.equal(ria[k], wanda[k]) for k in ria)


@pytest.mark.parametrize(("sparsity", "hp"), [("0.5", {}), ("0.6", {"a": 1.0, "scope": "row"}), ("2:4", {})])
def test_mria_with_one_language_and_extra_terms_off_is_ria(sparsity, hp):
    ids, lang = calibration()
    ria = run(tiny(), make("ria", **hp), sparsity, ids, lang, 1)
    # lambda_var has nothing to act on with one language (sigma = 0); lambda_prob is the extra term
    mria = run(tiny(), make("mria", lambda_var=1.0, lambda_prob=0.0, **hp), sparsity, ids, lang, 1)
    assert all(torch.equal(ria[k], mria[k]) for k in ria)


def test_mria_uses_languages():
    ids, lang = calibration(n_lang=3)
    ria = run(tiny(), make("ria"), "0.5", ids, lang, 3)
    mria = run(tiny(), make("mria"), "0.5", ids, lang, 3)
    assert any(not torch.equal(ria[k], mria[k]) for k in ria)


def test_mria_weights_languages_by_the_mix():
    """Equal weights are the unweighted statistics; unequal ones change mria's masks, never ria's (pooled)."""
    ids, lang = calibration(n=9, n_lang=3)
    hp = {"lambda_var": 1.0}
    equal = run(tiny(), make("mria", **hp), "0.5", ids, lang, 3)
    explicit = run(tiny(), make("mria", **hp), "0.5", ids, lang, 3, [4.0] * 3)
    assert all(torch.equal(equal[k], explicit[k]) for k in equal)
    skewed = run(tiny(), make("mria", **hp), "0.5", ids, lang, 3, [0.8, 0.1, 0.1])
    assert any(not torch.equal(equal[k], skewed[k]) for k in equal)
    ria, ria_skewed = run(tiny(), make("ria"), "0.5", ids, lang, 3), run(tiny(), make("ria"), "0.5", ids, lang, 3, [0.8, 0.1, 0.1])
    assert all(torch.equal(ria[k], ria_skewed[k]) for k in ria)


@pytest.mark.parametrize("method", ["ria", "mria"])
def test_exact_sparsity_and_nm_groups(method):
    ids, lang = calibration(n_lang=2)
    for sparsity in ("0.6", "2:4"):
        masks = run(tiny(dtype=torch.float32), make(method), sparsity, ids, lang, 2)
        for name, keep in masks.items():
            if sparsity == "2:4":
                assert ((~keep).reshape(keep.shape[0], -1, 4).sum(-1) == 2).all(), name
            else:
                assert int((~keep).sum()) == int(keep.numel() * 0.6), name
