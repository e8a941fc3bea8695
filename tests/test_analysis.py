"""Analyses inside pruned models (tasks/analysis): language-specific neurons, drift, subspaces.

The synthetic model is a real tiny Llama whose first block has two hand-set FFN neurons:
RU fires on every non-ASCII byte (only the Cyrillic text has any), LATIN on every ASCII
letter (the en and sw texts, not ru). Block 0's attention output is zeroed, so its MLP
sees each token's own embedding, where dimension 0 marks "non-ASCII", 2 "ASCII letter" and
1 is a constant that keeps the up projection positive.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_llama_config, write_text_folder
from tasks.analysis.drift import DriftStats, linear_cka
from tasks.analysis.inside import AnalysisSpec, analyze, dense_statistics, text_windows
from tasks.analysis.neurons import lape, specific_neurons
from tasks.analysis.subspace import language_subspace
from tasks.data.sources import get_source
from tasks.errors import UserError
from tasks.models import load_model, prunable_weights
from tasks.pruning.masks import save_masks

RU, LATIN = 5, 9
LANGS = ["en", "ru", "sw"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from transformers import ByT5Tokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("synthetic")
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(layers=2, hidden=64, ffn=128))
    byte = torch.arange(384) - 3  # ByT5 ids are bytes + 3
    letter = ((byte >= ord("a")) & (byte <= ord("z"))) | ((byte >= ord("A")) & (byte <= ord("Z")))
    with torch.no_grad():
        emb = model.model.embed_tokens.weight  # random entries have std 0.02; markers are of that scale too
        emb[:, 0] = torch.where(byte >= 0x80, 0.05, -0.05)
        emb[:, 1] = 0.05
        emb[:, 2] = torch.where(letter, 0.05, -0.05)
        block = model.model.layers[0]
        block.self_attn.o_proj.weight.zero_()
        for neuron, dim in ((RU, 0), (LATIN, 2)):
            block.mlp.gate_proj.weight[neuron] = 0.0
            block.mlp.gate_proj.weight[neuron, dim] = 4000.0  # silu of minus thousands underflows: exactly 0 off-language
            block.mlp.up_proj.weight[neuron] = 0.0
            block.mlp.up_proj.weight[neuron, 1] = 0.01
            block.mlp.down_proj.weight[:, neuron] *= 1e-3  # large activations: keep their output at the usual scale
    model.save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    text = write_text_folder(tmp_path_factory.mktemp("text3"), langs=LANGS, n_docs=20, words_per_doc=120)
    return path, text


def spec_for(text, **kw):
    return AnalysisSpec(**{"languages": LANGS, "data": str(text), "seqlen": 64, "nsamples": 8, "batch_size": 4,
                           "cache": False, **kw})


def all_kept_masks(model, path):
    save_masks(path, {k: torch.ones_like(lin.weight, dtype=torch.bool) for k, lin in prunable_weights(model).items()})
    return path


def test_lape_is_maximal_for_a_neuron_equally_active_everywhere():
    probs = torch.tensor([[0.3, 0.9, 0.5, 0.0], [0.3, 0.0, 0.4, 0.0], [0.3, 0.0, 0.1, 0.0]])
    ent = lape(probs)
    assert ent[0].item() == pytest.approx(math.log(3))
    assert ent[1].item() == 0.0
    assert 0 < ent[2].item() < math.log(3)
    assert math.isnan(ent[3].item())  # never active: no LAPE


def test_specific_neurons_follow_the_thresholds():
    torch.manual_seed(0)
    probs = (0.3 + 0.05 * torch.rand(400)).expand(3, 400).clone()  # 400 neurons, each equally active everywhere
    probs[:, 7] = torch.tensor([0.95, 0.0, 0.0])  # only language 0
    probs[:, 11] = torch.tensor([0.9, 0.0, 0.92])  # languages 0 and 2
    probs[:, 13] = torch.tensor([0.02, 0.0, 0.0])  # as specific as 7 but rare: filtered out
    sets = specific_neurons(probs, top_rate=0.005)  # the 2 lowest LAPE among candidates
    assert [s.tolist() for s in sets] == [[7, 11], [], [11]]
    assert [s.tolist() for s in specific_neurons(probs, top_rate=0.0025)] == [[7], [], []]
    everything = specific_neurons(probs, top_rate=1.0)  # every candidate; shared ones belong to all languages
    assert all(13 not in s for s in everything) and 7 not in everything[1] and 7 not in everything[2]
    assert len(everything[1]) > 10


def test_neuron_active_on_one_language_is_specific_to_it_alone(synthetic):
    path, text = synthetic
    model, tok = load_model(str(path))
    dense = dense_statistics(model, tok, spec_for(text), progress=False)
    assert dense["ru"].probs[0][RU] > 0.8 and dense["en"].probs[0][RU] == 0 and dense["sw"].probs[0][RU] == 0
    out = analyze(model, tok, {}, spec_for(text), dense=dense, progress=False)
    sets = out["neurons"]["sets"]
    assert RU in sets["ru"][0]
    assert all(RU not in sets[l].get(0, []) for l in ("en", "sw"))
    assert LATIN in sets["en"][0] and LATIN in sets["sw"][0] and LATIN not in sets["ru"].get(0, [])


def test_cka_of_a_model_with_itself_is_one_and_matches_the_gram_form():
    torch.manual_seed(0)
    x = torch.randn(200, 16, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-10)  # rotation and scale invariant
    y = torch.randn(200, 16, dtype=torch.float64) + 0.5 * x
    h = torch.eye(200, dtype=torch.float64) - 1 / 200  # centring matrix; CKA as HSIC of Gram matrices
    k, l = h @ x @ x.T @ h, h @ y @ y.T @ h
    gram = (k * l).sum() / (k.norm() * l.norm())
    assert linear_cka(x, y) == pytest.approx(gram.item(), rel=1e-10)
    assert linear_cka(x, y) < 0.9


def test_drift_shares_add_up_along_orthogonal_directions():
    torch.manual_seed(0)
    means = torch.randn(3, 8, dtype=torch.float64) + 2.0
    sub = language_subspace(means)
    assert sub["specific"].shape == (2, 8) and sub["shared"].shape == (1, 8)
    both = torch.cat([sub["shared"], sub["specific"]])
    assert torch.allclose(both @ both.T, torch.eye(3, dtype=torch.float64), atol=1e-10)
    x = torch.randn(50, 8, dtype=torch.float64)
    acc = DriftStats(sub, dense=None)
    acc.add(x, x + 0.7 * sub["shared"][0])  # a pure shift along the shared direction
    s = acc.summary()
    assert s["share_shared"] == pytest.approx(1.0) and s["share_specific"] == pytest.approx(0.0, abs=1e-12)


def test_keep_everything_mask_shows_no_drift_and_keeps_every_set(synthetic, tmp_path):
    path, text = synthetic
    model, tok = load_model(str(path))
    masks = all_kept_masks(model, tmp_path / "masks.safetensors")
    out = analyze(model, tok, {"all": str(masks)}, spec_for(text), progress=False)
    assert len(out["layers"]) == len(LANGS) * 2
    for r in out["layers"]:
        assert r["cka"] == pytest.approx(1.0, abs=1e-9) and r["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert r["drift"] == 0.0
    kept = {r["lang"]: r for r in out["kept"]}
    assert kept["ru"]["neurons"] >= 1 and kept["en"]["neurons"] >= 1
    for r in kept.values():
        assert r["down_kept"] in (1.0, None) and r["in_kept"] in (1.0, None)
    metrics = out["runs"]["all"]["metrics"]
    assert metrics["analysis.lape_kept.ru"] == 1.0 and metrics["analysis.cka.sw"] == pytest.approx(1.0, abs=1e-9)


def test_pruning_one_neuron_set_lowers_exactly_that_set(synthetic, tmp_path):
    path, text = synthetic
    model, tok = load_model(str(path))
    spec = spec_for(text)
    dense = dense_statistics(model, tok, spec, progress=False)
    sets = analyze(model, tok, {}, spec, dense=dense, progress=False)["neurons"]["sets"]
    ru_only = [j for j in sets["ru"][0] if j not in sets["en"].get(0, []) + sets["sw"].get(0, [])]
    assert ru_only == sets["ru"][0] and set(sets["ru"]) == {0}
    keep = {k: torch.ones_like(lin.weight, dtype=torch.bool) for k, lin in prunable_weights(model).items()}
    keep["model.layers.0.mlp.down_proj.weight"][:, ru_only] = False
    for name in ("gate_proj", "up_proj"):
        keep[f"model.layers.0.mlp.{name}.weight"][ru_only] = False
    save_masks(tmp_path / "masks.safetensors", keep)
    out = analyze(model, tok, {"ru-cut": str(tmp_path / "masks.safetensors")}, spec, dense=dense, progress=False)
    kept = {r["lang"]: r for r in out["kept"]}
    assert kept["ru"]["down_kept"] == 0.0 and kept["ru"]["in_kept"] == 0.0
    assert kept["en"]["down_kept"] == 1.0 and kept["sw"]["in_kept"] == 1.0
    assert kept["all"]["down_kept"] == pytest.approx(1 - len(ru_only) / 128 / 2)  # 2 blocks of 128 neurons
    drift = {(r["lang"], r["layer"]): r for r in out["layers"]}
    assert drift[("ru", 0)]["drift"] > 0 and drift[("ru", 0)]["cka"] < 1
    assert drift[("en", 0)]["drift"] == 0.0  # the cut neuron never fires on en: its output was 0


def test_dense_statistics_are_cached_by_model_and_text(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("POLYPRUNE_CACHE", str(tmp_path / "cache"))
    path, text = synthetic
    model, tok = load_model(str(path))
    spec = spec_for(text, cache=True)
    first = dense_statistics(model, tok, spec, progress=False)
    files = sorted((tmp_path / "cache" / "analysis").glob("dense-*.safetensors"))
    assert len(files) == len(LANGS)
    again = dense_statistics(model, tok, spec, progress=False)
    assert torch.equal(again["ru"].means, first["ru"].means) and torch.equal(again["ru"].probs[0], first["ru"].probs[0])
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(2)  # another checkpoint: its own entries
    dense_statistics(model, tok, spec, progress=False)
    assert len(list((tmp_path / "cache" / "analysis").glob("dense-*.safetensors"))) == 2 * len(LANGS)


def test_windows_come_from_the_requested_split(synthetic):
    _, text = synthetic
    from transformers import ByT5Tokenizer

    source, tok = get_source(str(text)), ByT5Tokenizer()
    held = text_windows(source, tok, "en", "test", 64, 100)
    held_text = "\n\n".join(source.documents("en", "test")).encode()
    assert all(bytes((w - 3).tolist()) in held_text for w in held)
    for other in ("calib", "valid"):
        assert not any(bytes((w - 3).tolist()) in "\n\n".join(source.documents("en", other)).encode() for w in held)


@pytest.mark.parametrize("change, field", [
    ({"languages": "en"}, "languages"), ({"languages": ["en", "xx"]}, "languages"), ({"split": "train"}, "split"), ({"split": "calib"}, "split"),
    ({"nsamples": 0}, "nsamples"), ({"top_rate": 1.5}, "top_rate"), ({"rank": 0}, "rank"),
    ({"seqlen": 100000}, "seqlen"), ({"device": "nonsense"}, "device"),
])
def test_bad_settings_name_their_field(synthetic, change, field):
    path, text = synthetic
    model, tok = load_model(str(path))
    with pytest.raises(UserError) as e:
        analyze(model, tok, {}, spec_for(text, **change), progress=False)
    assert e.value.field == field


def test_bad_runs_and_unknown_keys_are_user_errors(synthetic, tmp_path):
    path, text = synthetic
    model, tok = load_model(str(path))
    with pytest.raises(UserError, match="neither a masks file nor a run folder"):
        analyze(model, tok, {"x": str(tmp_path / "missing")}, spec_for(text), progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_text('{"config": {"method": "sparsegpt"}}')
    with pytest.raises(UserError, match="sparsegpt updates the kept weights"):
        analyze(model, tok, {"x": str(tmp_path / "run")}, spec_for(text), progress=False)
    with pytest.raises(UserError) as e:
        AnalysisSpec.from_dict({"languages": ["en"], "langs": ["sw"]})
    assert e.value.field == "langs"


def test_analysis_imports_no_ray_mlflow_optuna_or_matplotlib():
    import subprocess
    import sys

    code = ("import sys, tasks.analysis.inside; "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_prune_folders_are_analysed_as_the_pruned_models_compute(synthetic, tmp_path):
    """Wanda runs are rebuilt from masks, SparseGPT runs from their saved weights; layer 0's
    CKA and cosine equal those of the pruned model's own forward on the same windows."""
    from tasks.api import PruneSpec, prune, save_outputs

    path, text = synthetic
    folders, pruned = {}, {}
    for method in ("wanda", "sparsegpt"):
        model, tok = load_model(str(path))
        res = prune(model, tok, PruneSpec(model=str(path), method=method, sparsity="0.5", calib="en,ru", data=str(text),
                                          nsamples=8, seqlen=64), progress=False)
        folders[method], pruned[method] = save_outputs(tmp_path / method, model, tok, res), model
    base, tok = load_model(str(path))
    spec = spec_for(text)
    out = analyze(base, tok, {m: str(p) for m, p in folders.items()}, spec, progress=False)
    kept = {(r["run"], r["lang"]): r for r in out["kept"]}
    rows = {(r["run"], r["lang"], r["layer"]): r for r in out["layers"]}
    windows = text_windows(get_source(str(text)), tok, "sw", "test", 64, 8)
    with torch.no_grad():
        dense_h = base(input_ids=windows, output_hidden_states=True).hidden_states[1]
    for m, model in pruned.items():
        downs = [b.mlp.down_proj.weight != 0 for b in model.model.layers]
        assert kept[(m, "all")]["down_kept"] == pytest.approx(sum(d.sum().item() for d in downs) / sum(d.numel() for d in downs))
        with torch.no_grad():
            h = model(input_ids=windows, output_hidden_states=True).hidden_states[1]
        assert rows[(m, "sw", 0)]["cka"] == pytest.approx(linear_cka(dense_h.reshape(-1, 64), h.reshape(-1, 64)), abs=1e-6)
        cos = torch.nn.functional.cosine_similarity(dense_h.reshape(-1, 64).double(), h.reshape(-1, 64).double(), dim=1).mean()
        assert rows[(m, "sw", 0)]["cosine"] == pytest.approx(cos.item(), abs=1e-6)
        assert rows[(m, "sw", 0)]["cka"] < 1
