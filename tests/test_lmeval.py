"""lm-eval on the in-memory model, and polyprune's generated offline tasks.

Offline and CPU-only: a tiny random Llama (conftest), the built-in corpus for
the real task folder, generated text for the generator's own checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_text

from tasks.errors import UserError
from tasks.evaluation import offline_tasks
from tasks.evaluation.lmeval import flatten_metrics, run_lmeval
from tasks.evaluation.offline_tasks import KINDS, OFFLINE_GROUP, offline_task_dir, write_offline_tasks

LANGS = ["en", "de", "sw", "ru", "zh"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """Generated task folders go to a temporary cache, not the user's. One torch
    thread here and in the CLI subprocess: on a shared 2-core machine two spinning
    threads made the tiny model's matmuls ~20x slower, and equal thread counts keep
    float reductions in the same order."""
    import torch

    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("polyprune-cache")
    mp.setenv("POLYPRUNE_CACHE", str(path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield path
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)


def read_items(folder: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for p in sorted(folder.glob("*.jsonl"))}


# --- the generator ------------------------------------------------------------

def test_generated_items_are_well_formed_and_deterministic(tmp_path):
    corpus = {lang: make_text(lang, 6, 80, seed=1) for lang in LANGS}
    a = read_items(write_offline_tasks(tmp_path / "a", corpus, seed=0))
    b = read_items(write_offline_tasks(tmp_path / "b", corpus, seed=0))
    c = read_items(write_offline_tasks(tmp_path / "c", corpus, seed=1))
    assert a == b, "same corpus and seed must give the same items"
    assert a != c, "another seed gives other items"
    assert set(a) == {f"polyprune_{k}_{lang}" for k in KINDS for lang in LANGS}
    for task, items in a.items():
        kind, lang = task.split("_")[1:]
        stream = " ".join(" ".join(d.split()) for d in corpus[lang])
        assert 50 <= len(items) <= 100, task
        for item in items:
            choices, label = item["choices"], item["label"]
            assert len(choices) == 4 and len(set(choices)) == 4, item
            assert 0 <= label < 4
            assert 80 <= len(item["context"].encode()) <= 230, item
            true = choices[label]
            assert 15 <= len(true.encode()) <= 80, item
            if kind == "cont":  # the right answer is the text's real continuation
                assert item["context"] + true in stream
                assert all(ch in stream for ch in choices)
            else:  # langid: the right answer continues the text, the others come from other languages
                assert (item["context"] + " " + true) in stream or (item["context"] + true) in stream
                assert sum(ch in stream for ch in choices) == 1


def test_offline_task_dir_loads_and_group_covers_all(cache):
    from lm_eval.tasks import TaskManager

    langs = ["en", "sw", "zh"]
    path = offline_task_dir(seed=0, langs=langs)
    assert offline_task_dir(seed=0, langs=langs) == path, "reused, not regenerated"
    assert str(path).startswith(str(cache))
    tm = TaskManager(include_path=str(path), include_defaults=False)  # only ours: fast
    loaded = tm.load([OFFLINE_GROUP])
    assert set(loaded["tasks"]) == {f"polyprune_{k}_{lang}" for k in KINDS for lang in langs}
    assert {OFFLINE_GROUP, "polyprune_cont", "polyprune_langid"} <= set(loaded["groups"])
    # Tasks exist for every corpus language, beyond the group's.
    assert {"polyprune_cont_ko", "polyprune_langid_ja"} <= set(tm.all_tasks)
    for name, task in loaded["tasks"].items():
        docs = list(task.test_docs())
        assert len(docs) >= 50, name
        assert all(len(set(d["choices"])) == len(d["choices"]) == 4 for d in docs), name


# --- run_lmeval ---------------------------------------------------------------

def test_in_memory_equals_lm_eval_cli(tiny_llama, model_and_tokenizer, tmp_path):
    """Same saved model, task, limit, batch size, seeds: the same numbers; the
    group runs all its subtasks."""
    include = offline_task_dir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_llama}",
         "--tasks", OFFLINE_GROUP, "--include_path", str(include), "--batch_size", "8", "--num_fewshot", "0",
         "--limit", "2", "--seed", "0", "--device", "cpu", "--output_path", str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:  # the in-memory run overlaps the CLI's start-up
        model, tok = model_and_tokenizer
        res = run_lmeval(model, tok, [OFFLINE_GROUP], limit=2, batch_size=8)
        log, _ = cli.communicate(timeout=240)
    finally:
        cli.kill()
    assert cli.returncode == 0, log[-3000:]
    (out,) = (tmp_path / "out").rglob("results_*.json")
    expected = flatten_metrics(json.loads(out.read_text())["results"])
    assert res["metrics"] == pytest.approx(expected, abs=1e-9)
    subtasks = {f"polyprune_{k}_{lang}" for k in KINDS for lang in offline_tasks._corpus_languages()[1]}
    assert set(res["n_samples"]) == subtasks
    for name in subtasks | {OFFLINE_GROUP, "polyprune_cont", "polyprune_langid"}:
        assert f"lmeval.{name}.acc" in res["metrics"], name
        assert f"lmeval.{name}.acc_norm_stderr" in res["metrics"], name
    assert not model.training


def loglikelihoods(samples: dict) -> list[float]:
    return [float(r[0]) for task in sorted(samples) for s in samples[task] for r in s["filtered_resps"]]


def test_batched_equals_batch_size_one(model_and_tokenizer):
    model, tok = model_and_tokenizer
    tasks = ["polyprune_cont_en", "polyprune_langid_zh"]
    batched = run_lmeval(model, tok, tasks, limit=4, batch_size=8, log_samples=True)
    single = run_lmeval(model, tok, tasks, limit=4, batch_size=1, log_samples=True)
    assert batched["metrics"] == pytest.approx(single["metrics"], abs=1e-9)
    a, b = loglikelihoods(batched["samples"]), loglikelihoods(single["samples"])
    assert len(a) == len(b) == 2 * 4 * 4
    assert a == pytest.approx(b, abs=1e-4)  # padding changes only float noise


@pytest.mark.parametrize("kwargs, field", [
    (dict(tasks=["no_such_task_xyz"]), "tasks"),
    (dict(tasks=["polyprune_cont_xx"]), "tasks"),
    (dict(tasks=[]), "tasks"),
    (dict(tasks=[OFFLINE_GROUP], include_paths=["/nonexistent/task/folder"]), "tasks"),
    (dict(tasks=[OFFLINE_GROUP], limit=0), "limit"),
    (dict(tasks=[OFFLINE_GROUP], limit=-3), "limit"),
    (dict(tasks=[OFFLINE_GROUP], limit=1.5), "limit"),
    (dict(tasks=[OFFLINE_GROUP], num_fewshot=-1), "num_fewshot"),
    (dict(tasks=[OFFLINE_GROUP], batch_size=0), "batch_size"),
])
def test_bad_input_names_the_field(model_and_tokenizer, kwargs, field):
    model, tok = model_and_tokenizer
    with pytest.raises(UserError) as err:
        run_lmeval(model, tok, **kwargs)
    assert err.value.field == field


def test_unknown_offline_language():
    with pytest.raises(UserError) as err:
        offline_task_dir(langs=["en", "xx"])
    assert err.value.field == "tasks" and "xx" in str(err.value)


def test_patterns_expand_like_the_cli(model_and_tokenizer):
    from tasks.evaluation.lmeval import resolve_tasks, task_manager

    names = resolve_tasks(["polyprune_cont_s*", "polyprune_cont_sw"], task_manager())
    assert "polyprune_cont_sw" in names and "polyprune_cont_sv" in names
    assert len(names) == len(set(names))


def test_offline_tasks_alone_leave_lm_evals_own_tasks_out_of_the_index():
    """A run of polyprune's offline tasks only indexes their folder (0.15 s, not lm-eval's ~14K YAMLs);
    any other name, or an added folder, indexes everything. test_in_memory_equals_lm_eval_cli checks that
    the narrow index gives the CLI's numbers."""
    from tasks.evaluation.lmeval import resolve_tasks, task_manager

    ours = task_manager(names=["polyprune_cont_s*", OFFLINE_GROUP])
    assert "polyprune_cont_sw" in ours.all_tasks and "xnli_sw" not in ours.all_tasks
    assert resolve_tasks(["polyprune_cont_s*"], ours) == resolve_tasks(["polyprune_cont_s*"], task_manager())
    full = task_manager(names=["polyprune_cont_sw", "xnli_sw"])
    assert full is task_manager() and "xnli_sw" in full.all_tasks
    with pytest.raises(UserError) as err:
        resolve_tasks(["xnli_sw"], ours)
    assert err.value.field == "tasks"

