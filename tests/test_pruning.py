"""The pruning engine against straightforward independent implementations.

The reference here prunes block by block like the papers' code but gets every
statistic from a plain full-model forward, one sample at a time, with the
earlier blocks already pruned: no capture, no batching, no hooks in the engine.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from archs import arch_configs  # noqa: E402

from tasks.models import block_linears, find_blocks
from tasks.pruning import METHODS
from tasks.pruning.pipeline import capture, propagate, prune_blocks, schedule_targets
from tasks.pruning.schedules import SCHEDULES, owl_allocate
from tasks.pruning.sparsity import parse_sparsity

N, L = 6, 32


def tiny(arch="llama", dtype=torch.float64, seed=0):
    cfg = copy.deepcopy(arch_configs()[arch])
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def calib(n=N, seed=1, n_lang=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 384, (n, L), generator=g)
    return ids, torch.arange(n) % n_lang


def make(method, **hp):
    cls = METHODS.get(method)
    return cls(cls.Params(**hp))


@torch.no_grad()
def linear_inputs(model, block, ids):
    """Inputs of each linear of `block` over all samples, from full-model forwards one sample at a time."""
    got = {n: [] for n in block_linears(block)}
    hooks = [lin.register_forward_hook(lambda m, i, o, n=n: got[n].append(i[0].reshape(-1, i[0].shape[-1]).clone()))
             for n, lin in block_linears(block).items()]
    for row in ids:
        model(input_ids=row[None], use_cache=False)
    for h in hooks:
        h.remove()
    return {n: torch.cat(x) for n, x in got.items()}


def ref_wanda(W, X, s, nm):
    metric = W.abs() * (X**2).sum(0).sqrt()
    prune = torch.zeros_like(W, dtype=torch.bool)
    if nm:
        n, m = nm
        for c in range(0, W.shape[1], m):
            tmp = metric[:, c:c + m]
            prune.scatter_(1, c + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    else:
        idx = torch.sort(metric, dim=-1, stable=True)[1][:, :int(W.shape[1] * s)]
        prune.scatter_(1, idx, True)
    W[prune] = 0
    return ~prune


def ref_sparsegpt(W, X, s, nm, blocksize=128, percdamp=0.01):
    """SparseGPT's fasterprune written out column by column (Q1 / Err1 as in the paper's code)."""
    H = 2 * X.t() @ X / N
    cols = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    prune = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), torch.zeros_like(W[:, i1:i2])
        Hinv1 = Hinv[i1:i2, i1:i2]
        if nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * s)]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if nm and i % nm[1] == 0:
                tmp = W1[:, i:i + nm[1]] ** 2 / torch.diag(Hinv1)[i:i + nm[1]].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, nm[0], dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        prune[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return ~prune


@torch.no_grad()
def reference_prune(model, method, ids, sparsity):
    sp = parse_sparsity(sparsity)
    _, blocks = find_blocks(model)
    masks = {}
    for i, block in enumerate(blocks):
        X = linear_inputs(model, block, ids)  # blocks < i are already pruned
        for name, lin in block_linears(block).items():
            W = lin.weight.data.clone()
            keep = (ref_wanda if method == "wanda" else ref_sparsegpt)(W, X[name], sp.fraction, sp.nm)
            lin.weight.copy_(W)
            masks[(i, name)] = keep
    return masks


@pytest.mark.parametrize("arch", ["llama", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", ["0.5", "2:4", "4:8"])
def test_masks_and_weights_match_reference(arch, method, sparsity):
    ids, lang = calib()
    ours, ref = tiny(arch), tiny(arch)
    sp = parse_sparsity(sparsity)
    n_blocks = len(find_blocks(ours)[1])
    prefix = find_blocks(ours)[0]
    masks, report = prune_blocks(ours, make(method), [sp.fraction] * n_blocks, sp.nm, ids, lang, 1, batch_size=4, device="cpu")
    ref_masks = reference_prune(ref, method, ids, sparsity)
    for (i, name), keep in ref_masks.items():
        assert torch.equal(masks[f"{prefix}.{i}.{name}.weight"], keep), (i, name)
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        # float64 throughout: differences are rounding in the Hessian inverse (~1e-9), float32 noise would be ~1e-4
        torch.testing.assert_close(p1, p2, rtol=1e-6, atol=1e-8, msg=n1)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "mwanda"])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_every_nm_group_has_exactly_n_zeros(method, nm):
    ids, lang = calib(n_lang=2)
    model = tiny(dtype=torch.float32)
    masks, _ = prune_blocks(model, make(method), [0.5] * 3, nm, ids, lang, 2, 4, "cpu")
    for name, keep in masks.items():
        groups = (~keep).reshape(keep.shape[0], -1, nm[1]).sum(-1)
        assert (groups == nm[0]).all(), name
    for name, lin in {n: l for n, l in model.named_modules() if isinstance(l, torch.nn.Linear) and n + ".weight" in masks}.items():
        assert (lin.weight[~masks[name + ".weight"]] == 0).all()


@pytest.mark.parametrize("s", [0.3, 0.5, 0.73])
def test_wanda_row_sparsity_is_exact(s):
    ids, lang = calib()
    masks, report = prune_blocks(tiny(dtype=torch.float32), make("wanda"), [s] * 3, None, ids, lang, 1, 4, "cpu")
    for name, keep in masks.items():
        assert ((~keep).sum(1) == int(keep.shape[1] * s)).all(), name


def test_mwanda_one_language_without_prob_is_wanda():
    ids, lang = calib()
    a, b = tiny(), tiny()
    ma, _ = prune_blocks(a, make("wanda"), [0.5] * 3, None, ids, lang, 1, 4, "cpu")
    mb, _ = prune_blocks(b, make("mwanda", lambda_var=1.0, lambda_prob=0.0), [0.5] * 3, None, ids, lang, 1, 4, "cpu")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_mwanda_uses_languages():
    """Several languages (and the probability term) must change the masks, or the method is Wanda by another name."""
    ids, lang = calib(n_lang=3)
    a, b = tiny(), tiny()
    ma, _ = prune_blocks(a, make("wanda"), [0.5] * 3, None, ids, lang, 3, 4, "cpu")
    mb, _ = prune_blocks(b, make("mwanda"), [0.5] * 3, None, ids, lang, 3, 4, "cpu")
    assert any(not torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.parametrize("schedule,hp", [("owl", {}), ("owl", {"owl_lambda": 0.2, "owl_m": 3.0}), ("cwl", {}), ("cwl", {"cwl_lambda": -0.1})])
def test_layerwise_targets_average_to_the_request(schedule, hp):
    ids, lang = calib(n_lang=3)
    model = tiny(dtype=torch.float32)
    cls = SCHEDULES.get(schedule)
    targets = schedule_targets(model, cls(cls.Params(**hp)), 0.6, ids, lang, 3, 4, "cpu")
    assert len(targets) == 3
    assert sum(targets) / 3 == pytest.approx(0.6, abs=1e-12)
    assert len(set(round(t, 9) for t in targets)) > 1, "a schedule that never differs from uniform"
    masks, report = prune_blocks(model, make("wanda"), targets, None, ids, lang, 3, 4, "cpu")
    for r in report:
        assert r["actual"] == pytest.approx(r["target"], abs=0.02)


def test_owl_allocation_formula():
    got = owl_allocate([1.0, 2.0, 3.0], 0.5, 0.1)  # D' = [0, .1, .2], mean .1 -> density [.4, .5, .6]
    assert got == pytest.approx([0.6, 0.5, 0.4])
    assert owl_allocate([2.0, 2.0], 0.5, 0.1) == [0.5, 0.5]
    assert owl_allocate([1.0, 2.0, 3.0], 0.5, -0.1) == pytest.approx([0.4, 0.5, 0.6])


@torch.no_grad()
def test_sparsegpt_reconstructs_better_than_magnitude():
    ids, lang = calib(n=8)
    dense = tiny(dtype=torch.float32)
    block0 = find_blocks(dense)[1][0]
    X = linear_inputs(dense, block0, ids)
    err = {}
    for method in ("magnitude", "sparsegpt"):
        model = tiny(dtype=torch.float32)
        prune_blocks(model, make(method), [0.6] * 3, None, ids, lang, 1, 4, "cpu")
        pruned0 = find_blocks(model)[1][0]
        err[method] = sum(
            ((X[n] @ lin.weight.t()) - (X[n] @ block_linears(pruned0)[n].weight.t())).pow(2).sum().item()
            for n, lin in block_linears(block0).items()
        )
    assert err["sparsegpt"] < err["magnitude"], err


def test_true_sequential_runs_groups_in_order():
    ids, lang = calib()
    a, b = tiny(), tiny()
    ma, _ = prune_blocks(a, make("sparsegpt", true_sequential=True), [0.5] * 3, None, ids, lang, 1, 4, "cpu")
    mb, _ = prune_blocks(b, make("sparsegpt"), [0.5] * 3, None, ids, lang, 1, 4, "cpu")
    # q/k/v read the same input either way; the o/down projections see pruned inputs only when sequential
    assert all(torch.equal(ma[k], mb[k]) for k in ma if ".0.self_attn.q_proj" in k)
    assert any(not torch.equal(ma[k], mb[k]) for k in ma if "o_proj" in k)


@pytest.mark.parametrize("arch", sorted(arch_configs()))
def test_every_architecture_captures_exactly_and_prunes(arch):
    """Block-by-block propagation equals the full forward (sliding-window masks and
    rotary per layer included), and every architecture prunes to the target."""
    model = tiny(arch)
    ids = torch.randint(3, 384, (4, 40))  # longer than the sliding windows (16)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        inps, calls = capture(model, ids, 2, "cpu")
        blocks = find_blocks(model)[1]
        for i in range(len(blocks) - 1):  # the last hidden state has the final norm applied
            propagate(blocks[i], inps, calls[i])
            torch.testing.assert_close(torch.cat(inps), hidden[i + 1], rtol=0, atol=1e-10)
    masks, report = prune_blocks(model, make("wanda"), [0.5] * len(blocks), None, ids, torch.zeros(4, dtype=torch.long), 1, 2, "cpu")
    assert len(masks) >= 4 * len(blocks)
    assert all(r["actual"] == pytest.approx(0.5, abs=0.01) for r in report)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("levels", [None, 4, 64])  # continuous scores, and scores with many ties
@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.7, 0.99])
def test_row_mask_equals_the_stable_sort_selection(levels, fraction):
    """row_mask avoids the sort; ties must still go to the leftmost columns, as the reference's stable sort."""
    from tasks.pruning.sparsity import row_mask

    g = torch.Generator().manual_seed(int(fraction * 100) + (levels or 0))
    score = torch.rand(37, 96, generator=g)
    if levels:
        score = (score * levels).floor()
    k = int(96 * fraction)
    ref = torch.ones_like(score, dtype=torch.bool)
    ref.scatter_(1, torch.sort(score, dim=-1, stable=True)[1][:, :k], False)
    got = row_mask(score, fraction)
    assert torch.equal(got, ref)
    assert (~got).sum(1).eq(k).all()


def hand_stats(a: torch.Tensor, fire: torch.Tensor | None, weights) -> "ActStats":
    """ActStats holding the given per-language RMS a [n_lang, C] (and fire rates) over 10 tokens each."""
    from tasks.pruning.stats import ActStats, language_weights

    stats = ActStats(torch.zeros(2, a.shape[1], dtype=torch.float64), language_weights(a.shape[0], weights),
                     positive=fire is not None)
    stats.tokens[:] = 10
    stats.sumsq[:] = a.double() ** 2 * 10
    if fire is not None:
        stats.pos[:] = fire.double() * 10
    return stats


@pytest.mark.parametrize("lambda_var", [0.0, 0.7, 2.0])
def test_mwanda_equal_weights_give_the_unweighted_mean_and_std(lambda_var):
    from tasks.pruning.mwanda import language_activation

    g = torch.Generator().manual_seed(0)
    for n_lang in (1, 2, 3, 7):
        a = torch.rand(n_lang, 50, generator=g, dtype=torch.float64) * 3
        got = language_activation(hand_stats(a, None, None), lambda_var)
        before = a.mean(0) + lambda_var * a.std(0, unbiased=False)  # the formula before mixes weighted it
        torch.testing.assert_close(got, before, rtol=1e-14, atol=0)
        torch.testing.assert_close(language_activation(hand_stats(a, None, [5.0] * n_lang), lambda_var), got, rtol=1e-15, atol=0)


def test_mwanda_unequal_weights_change_the_score_as_defined():
    from tasks.pruning.mwanda import mwanda_score

    # three languages; the third has weight 0: it counts nowhere, not even in p's max
    a = torch.tensor([[1.0, 2.0], [3.0, 6.0], [50.0, 50.0]], dtype=torch.float64)
    fire = torch.tensor([[0.2, 0.9], [0.6, 0.1], [1.0, 1.0]], dtype=torch.float64)
    stats = hand_stats(a, fire, [0.25, 0.75, 0.0])
    W = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    # by hand: mu = (0.25*1 + 0.75*3, 0.25*2 + 0.75*6) = (2.5, 5); sigma^2 = (0.25*1.5^2 + 0.75*0.5^2, 0.25*3^2 + 0.75*1^2)
    # = (0.75, 3); p = (max(0.2, 0.6), max(0.9, 0.1)) = (0.6, 0.9); lambda_var 2, lambda_prob 0.5
    act = torch.tensor([(2.5 + 2 * 0.75**0.5) * (1 + 0.5 * 0.6), (5 + 2 * 3**0.5) * (1 + 0.5 * 0.9)], dtype=torch.float64)
    torch.testing.assert_close(mwanda_score(W, stats, 2.0, 0.5), W.abs() * act, rtol=1e-14, atol=0)
    equal = mwanda_score(W, hand_stats(a[:2], fire[:2], None), 2.0, 0.5)
    assert not torch.allclose(equal, W.abs() * act)  # (2, 4) +- std (1, 2): another score


def test_mwanda_equal_weights_give_the_masks_of_the_unweighted_formula():
    from tasks.pruning.mwanda import MWanda, probability_factor

    class Unweighted(MWanda):  # M-Wanda as it was before mixes weighted it
        def prune(self, linear, stats, fraction, nm):
            from tasks.pruning.sparsity import select

            a = stats.rms()
            act = (a.mean(0) + self.params.lambda_var * a.std(0, unbiased=False)) * probability_factor(stats, self.params.lambda_prob)
            return select(linear.weight.detach().abs() * act.to(linear.weight.dtype), fraction, nm)

    ids, lang = calib(n=9, n_lang=3)
    params = MWanda.Params(lambda_var=1.0, lambda_prob=0.25)
    before, _ = prune_blocks(tiny(), Unweighted(params), [0.5] * 3, None, ids, lang, 3, 4, "cpu")
    for weights in (None, [1 / 3] * 3, [2.0, 2.0, 2.0]):
        now, _ = prune_blocks(tiny(), MWanda(params), [0.5] * 3, None, ids, lang, 3, 4, "cpu", weights=weights)
        assert all(torch.equal(before[k], now[k]) for k in before)
    skewed, _ = prune_blocks(tiny(), MWanda(params), [0.5] * 3, None, ids, lang, 3, 4, "cpu", weights=[0.8, 0.1, 0.1])
    assert any(not torch.equal(before[k], skewed[k]) for k in before)
    wanda_a, _ = prune_blocks(tiny(), make("wanda"), [0.5] * 3, None, ids, lang, 3, 4, "cpu")
    wanda_b, _ = prune_blocks(tiny(), make("wanda"), [0.5] * 3, None, ids, lang, 3, 4, "cpu", weights=[0.8, 0.1, 0.1])
    assert all(torch.equal(wanda_a[k], wanda_b[k]) for k in wanda_a)  # pooled: the weights are not its business


def test_the_mix_weights_travel_from_the_spec_to_the_score(tiny_llama, text_dir):
    """Under allocation `equal` two mixes draw the very same windows: only the weights differ, and
    M-Wanda's masks follow them (Wanda's could not)."""
    from tasks.api import PruneSpec, load_model, prune

    out = {}
    for calib_spec in ("en=0.5,sw=0.5", "en=0.9,sw=0.1"):
        model, tok = load_model(str(tiny_llama), "float64")
        spec = PruneSpec(model=str(tiny_llama), method="mwanda", sparsity="0.5", calib=calib_spec, data=str(text_dir),
                         nsamples=4, seqlen=32, allocation="equal", hp={"lambda_var": 1.0})
        out[calib_spec] = prune(model, tok, spec, progress=False)
    a, b = out.values()
    assert a.result["calibration"]["fingerprint"] == b.result["calibration"]["fingerprint"]
    assert a.result["calibration"]["samples"] == {"en": 2, "sw": 2} and b.result["calibration"]["weights"] == pytest.approx({"en": 0.9, "sw": 0.1})
    assert any(not torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


@pytest.mark.parametrize(("method", "allocation", "says"), [
    ("mwanda", "by-token", "allocation: must be one of proportional, equal, got 'by-token'"),
    ("wanda", "equal", "allocation: equal needs a method that weights per-language statistics by the mix (mria, mwanda)"),
    ("sparsegpt", "equal", "allocation: equal needs"),
])
def test_allocation_is_checked_before_any_work(method, allocation, says):
    from tasks.api import PruneSpec, check_spec
    from tasks.errors import UserError

    with pytest.raises(UserError) as e:
        check_spec(PruneSpec(model="m", method=method, sparsity="0.5", calib="en,sw", allocation=allocation))
    assert str(e.value).startswith(says) and "\n" not in str(e.value)
    for ok in ("mwanda", "mria"):
        assert check_spec(PruneSpec(model="m", method=ok, sparsity="0.5", calib="en,sw", allocation="equal")).allocation == "equal"
    with pytest.raises(UserError) as e:
        check_spec(PruneSpec(model="m", method="mwanda", sparsity="0.5", calib="en,sw,de", nsamples=2))
    assert e.value.field == "nsamples"
