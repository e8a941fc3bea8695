"""`tasks/` is importable and runnable without the driver's libraries (workers get plain dicts: docs/design.md)."""

import subprocess
import sys


def test_tasks_import_no_ray_mlflow_optuna():
    code = ("import sys, tasks.api, tasks.evaluation.lmeval, tasks.evaluation.offline_tasks, tasks.demo_model, "
            "tasks.analysis.overlap; print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
