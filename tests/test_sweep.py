"""`polyprune sweep / status / ui` on a real local Ray (one per session, `ray_local`)
and a real sqlite MLflow store in a tmp folder, with tiny random models.

The simulated multi-node cluster needs its own Ray, so it lives in
test_sweep_cluster.py and runs in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import save_tiny_model, tiny_llama_config
from helpers import ROOT, child_runs, kill_9_when, sqlite_rows, write_yaml
from orchestrator.cli import main
from tasks.versions import versions

SWEEP = {
        "name": "t",
        "models": ["./tiny"],
        "methods": ["wanda", "magnitude"],
        "sparsities": [0.5, "2:4"],
        "calibration": {"languages": ["en", "en=0.5,sw=0.5"], "data": "./text", "nsamples": 4, "seqlen": 32},
        "seeds": [0],
        "evaluation": {"ppl": {"languages": ["en", "sw"], "nsamples": 4}},
        "resources": {"cpu_workers": 2},
}


def write_sweep(folder: Path, **over) -> Path:
    return write_yaml(folder / "sweep.yaml", SWEEP, **over)


def runs(db: Path, sweep: str = "t") -> list[dict]:
    """Child runs of a sweep from the sqlite store: cell id, status, metrics, tags."""
    return [{"id": r.info.run_id, "cell": r.data.tags["polyprune.cell_id"], "status": r.info.status,
             "metrics": r.data.metrics, "params": r.data.params, "tags": r.data.tags} for r in child_runs(db, sweep)]


def cells_of(path: Path) -> list:
    from orchestrator.sweep.file import expand, load_sweep

    return expand(load_sweep(path))


# ---------------------------------------------------------------- validation (no Ray)

BAD = {
    "unknown key": ({"colour": "red"}, "colour: unknown key"),
    "unknown nested key": ({"calibration": {"languages": ["en"], "data": "./text", "sampels": 4}}, "calibration.sampels: unknown key"),
    "empty grid": ({"models": []}, "models: must not be empty"),
    "bad sparsity": ({"sparsities": [0.5, 1.5]}, "sparsities[1]: must be a fraction"),
    "dense sparsity": ({"sparsities": [0]}, "sparsities[0]: 0 is the dense baseline"),
    "unknown method": ({"methods": ["wanda", {"name": "obc"}]}, "methods[1].name: unknown method 'obc'"),
    "unknown hp": ({"methods": [{"name": "mwanda", "hp": {"lambda_x": 1}}]}, "methods[0].hp: unknown hyperparameter 'lambda_x'"),
    "missing data folder": ({"calibration": {"languages": ["en"], "data": "./nowhere"}}, "calibration.data:"),
    "missing model folder": ({"models": ["./tiny", "./no-model"]}, "models[1]: folder"),
    "bad language": ({"calibration": {"languages": ["en", "xx"], "data": "./text"}}, "calibration.languages[1]: language 'xx'"),
    "bad ppl language": ({"evaluation": {"ppl": {"languages": ["zz"]}}}, "evaluation.ppl.languages[0]: language 'zz'"),
    "bad ppl split": ({"evaluation": {"ppl": {"languages": ["en"], "split": "calib"}}}, "evaluation.ppl.split:"),
    "duplicate cell": ({"sparsities": [0.5, "0.50"]}, "sparsities[1]: gives the same cell"),
    "seed type": ({"seeds": ["one"]}, "seeds[0]:"),
    "unknown lm-eval task": ({"evaluation": {"lm_eval": {"tasks": ["xnli_xx"]}}}, "evaluation.lm_eval.tasks: unknown task 'xnli_xx'"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_invalid_sweep_file_is_one_line_exit_2_nothing_created(case, run_dir, capsys):
    over, expected = BAD[case]
    path = write_sweep(run_dir, **over)
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polyprune sweep: "), err
    assert expected in err, err
    assert not (run_dir / "mlflow.db").exists() and not (run_dir / "mlartifacts").exists()


def test_the_evaluated_split_is_part_of_the_cell(run_dir):
    """Sweeps quote test by default; valid is another measurement, so other cells."""
    test = cells_of(write_sweep(run_dir))
    valid = cells_of(write_sweep(run_dir, evaluation={"ppl": {"languages": ["en", "sw"], "nsamples": 4, "split": "valid"}}))
    assert {c.key["eval"]["ppl"]["split"] for c in test} == {"test"} and {c.key["eval"]["ppl"]["split"] for c in valid} == {"valid"}
    assert not {c.cell_id for c in test} & {c.cell_id for c in valid}


def test_unreadable_file_and_bad_yaml(tmp_path, capsys):
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "cannot read" in err[0] and "not valid YAML" in err[1]


def test_cell_ids_are_stable_and_canonical(run_dir):
    a = cells_of(write_sweep(run_dir))
    b = cells_of(write_sweep(run_dir, sparsities=["0.50", "2:4"], calibration={
        "languages": ["en=1", "sw=2,en=2"], "data": "./text", "nsamples": 4, "seqlen": 32}))
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    assert len(a) == 9 and a[0].kind == "baseline" and len({c.cell_id for c in a}) == 9


def test_example_sweep_files_validate(capsys):
    # The Kurz et al. grid is hub models on mC4: dry-run needs no network and creates nothing.
    assert main(["sweep", str(ROOT / "sweeps" / "kurz_grid.yaml"), "--dry-run", "--tracking-uri", "sqlite:////nonexistent/x.db"]) == 0
    out = capsys.readouterr().out
    assert "2 dense baselines" in out and "estimate:" in out


def test_tiny_local_example_validates(tmp_path, monkeypatch, tiny_llama, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "polyprune").mkdir(parents=True)
    (tmp_path / ".cache" / "polyprune" / "tiny-llama").symlink_to(tiny_llama)
    db = tmp_path / "x.db"
    assert main(["sweep", str(ROOT / "sweeps" / "tiny_local.yaml"), "--dry-run", "--tracking-uri", f"sqlite:///{db}"]) == 0
    assert "65 cells (1 dense baselines + 64 pruned)" in capsys.readouterr().out and not db.exists()


# ---------------------------------------------------------------- real runs on the session's Ray


def test_sweep_one_finished_run_per_cell_then_resume_skips(ray_local, run_dir, tiny_llama, capsys):
    save_tiny_model(run_dir / "tiny2", tiny_llama_config(), seed=1)
    path = write_sweep(run_dir, models=["./tiny", "./tiny2"])
    cells = cells_of(path)
    assert len(cells) == 18  # 2 models x (dense + 2 methods x 2 sparsities x 2 languages)
    assert main(["sweep", str(path)]) == 0
    got = runs(run_dir / "mlflow.db")
    assert sorted(r["cell"] for r in got) == sorted(c.cell_id for c in cells)
    assert {r["status"] for r in got} == {"FINISHED"}
    for r in got:
        assert {"ppl.en", "ppl.sw", "ppl.mean", "sparsity.actual", "time.eval_s"} <= set(r["metrics"])
        assert r["metrics"]["system.memory_usage_megabytes"] > 50  # a worker holding torch and a model
        assert r["tags"]["polyprune.sweep"] == "t"
        assert json.loads(r["tags"]["polyprune.versions"]) == versions()  # the one list, optuna's version included
        if r["params"]["method"] == "dense":
            assert r["params"]["sparsity"] == "0" and r["metrics"]["sparsity.actual"] == 0
        else:
            assert {"model", "method", "sparsity", "calib", "nsamples", "seqlen", "seed", "schedule"} <= set(r["params"])
            assert abs(r["metrics"]["sparsity.actual"] - 0.5) < 1e-6 and "time.prune_s" in r["metrics"]
    # artifacts of a pruned cell
    from mlflow import MlflowClient

    cl = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    pruned = next(r for r in got if r["params"]["method"] == "wanda")
    assert {"result.json", "masks.safetensors"} <= {a.path for a in cl.list_logged_model_artifacts(pruned["tags"]["polyprune.model_id"])}
    # workers keep their model: each of the 2 workers loads each of the 2 models at most once
    assert sum(r["metrics"]["time.load_s"] > 0 for r in got) <= 4
    # the dense baseline ran once per model
    assert sum(r["params"]["method"] == "dense" for r in got) == 2

    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0  # resume: nothing left
    assert len(runs(run_dir / "mlflow.db")) == 18
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "18 already FINISHED" in out and "todo" not in out.split("\n", 2)[2].split("estimate")[0]
    assert main(["status", str(path)]) == 0
    assert "FINISHED 18" in capsys.readouterr().out


def test_failing_cells_are_recorded_and_the_sweep_goes_on(ray_local, run_dir, tiny_llama, capsys):
    # Intact files (validation reads their headers) whose weights do not fit the config: fails only at load.
    broken = save_tiny_model(run_dir / "broken", tiny_llama_config(hidden=32, ffn=64))
    shutil.copy(Path(tiny_llama) / "config.json", broken / "config.json")
    path = write_sweep(run_dir, models=["./tiny", "./broken"], methods=["wanda"], sparsities=[0.5],
                       calibration={"languages": ["en"], "data": "./text", "nsamples": 4, "seqlen": 32}, seeds=[0, 1])
    assert main(["sweep", str(path)]) == 1
    out = capsys.readouterr().out
    got = runs(run_dir / "mlflow.db")
    by_model = {}
    for r in got:
        by_model.setdefault(Path(r["params"]["model"]).name, []).append(r)
    assert [r["status"] for r in by_model["tiny"]] == ["FINISHED"] * 3
    assert [r["status"] for r in by_model["broken"]] == ["FAILED"] * 3
    assert all(r["tags"]["polyprune.error"] for r in by_model["broken"])
    assert "3 FAILED" in out and out.count("  FAILED ") == 3


def test_lm_eval_metrics_are_recorded(ray_local, run_dir):
    path = write_sweep(run_dir, methods=["wanda"], sparsities=[0.5], calibration={
        "languages": ["en"], "data": "./text", "nsamples": 4, "seqlen": 32},
        evaluation={"ppl": {"languages": ["en"], "nsamples": 2}, "lm_eval": {"tasks": ["polyprune_cont_en"], "limit": 4}})
    assert main(["sweep", str(path)]) == 0
    got = runs(run_dir / "mlflow.db")
    assert len(got) == 2
    for r in got:
        assert any(k.startswith("lmeval.polyprune_cont_en.") for k in r["metrics"]), r["metrics"]
        assert r["params"]["eval.lm_eval_tasks"] == "polyprune_cont_en"


def count_finished(db: Path) -> int:
    rows = sqlite_rows(db, "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                           "where t.key = 'polyprune.cell_id' and r.status = 'FINISHED'")
    return rows[0][0] if rows else 0


def test_kill_9_driver_then_resume_finishes_every_cell_once(ray_local, run_dir):
    path = write_sweep(run_dir, seeds=[0, 1])  # 17 cells
    n = len(cells_of(path))
    env = {**os.environ, "POLYPRUNE_CELL_DELAY_S": "2.0"}  # slow cells down, so some are in flight when killed
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--ray-address", ray_local],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = run_dir / "mlflow.db"
    kill_9_when(proc, lambda: count_finished(db) >= 3, poll_s=0.3)
    before = runs(db)
    assert 3 <= sum(r["status"] == "FINISHED" for r in before) < n
    assert any(r["status"] == "RUNNING" for r in before)  # what the dead driver left behind

    assert main(["sweep", str(path)]) == 0  # the same Ray (this process is connected), no delay
    after = runs(db)
    finished = [r["cell"] for r in after if r["status"] == "FINISHED"]
    assert sorted(finished) == sorted(c.cell_id for c in cells_of(path))  # each cell FINISHED exactly once
    assert not any(r["status"] == "RUNNING" for r in after)
    assert {r["status"] for r in after} <= {"FINISHED", "KILLED"}


def test_ctrl_c_ends_in_flight_runs_killed(ray_local, run_dir):
    path = write_sweep(run_dir)
    env = {**os.environ, "POLYPRUNE_CELL_DELAY_S": "3.0"}  # 9 slow cells: the interrupt lands mid-sweep
    # A CI runner may start us with SIGINT ignored (background jobs of a non-interactive shell), and
    # children inherit that; give the driver a terminal's default Ctrl-C, as a user's shell does.
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(path), "--ray-address", ray_local],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The driver's own progress lines say when a cell has finished; polling sqlite from here
    # could be starved by the driver's writes and miss the window.
    seen = []
    for line in proc.stdout:
        seen.append(line.decode())
        if re.match(r"\s*\[\d+/\d+\] FINISHED", seen[-1]):
            break
    assert proc.poll() is None, "".join(seen)[-3000:]
    proc.send_signal(signal.SIGINT)
    out = "".join(seen) + proc.communicate(timeout=120)[0].decode()
    db = run_dir / "mlflow.db"
    assert proc.returncode == 130, out[-3000:]
    got = runs(db)
    assert {r["status"] for r in got} == {"FINISHED", "KILLED"}, out[-3000:]
    assert all("interrupted" in r["tags"]["polyprune.error"] for r in got if r["status"] == "KILLED")


def test_ui_command_points_mlflow_at_the_store(tmp_path, capsys):
    from orchestrator.cli.ui import command

    cmd = command("sqlite:////x/mlflow.db", "127.0.0.1", 5001)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and "sqlite:////x/mlflow.db" in cmd and "127.0.0.1" in cmd
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
