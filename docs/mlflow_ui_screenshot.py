"""Screenshots of the MLflow UI on a small demo sweep, as README shows them: its runs
(docs/mlflow-ui.png) and its Models tab, one row per pruned model (docs/mlflow-models.png).

    python docs/mlflow_ui_screenshot.py [--out docs/mlflow-ui.png] [--models-out docs/mlflow-models.png] [--keep DIR]

Runs a 5-cell copy of sweeps/tiny_local.yaml (the `demo` model; wanda and mwanda at 60%,
calibrated in en and en=0.5,sw=0.5) into a fresh folder, starts `polyprune ui` on it, and
photographs the URL it prints, and the same server's Models tab (`polyprune ui --view models`
prints that one), with headless Chromium (Debian: apt-get install chromium). The
first run trains and caches the demo model (minutes); set POLYPRUNE_DEMO_STEPS for a shortened
one. Nothing is left running: the UI is stopped with SIGTERM, which stops its server too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from orchestrator.cli.ui import models_url  # noqa: E402  (the script runs from docs/)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--run-all-compositor-stages-before-draw"]


def small_sweep(folder: Path) -> Path:
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_local.yaml").read_text())
    raw.update(methods=["wanda", "mwanda"], sparsities=[0.6], seeds=[0])
    raw["calibration"]["languages"] = ["en", "en=0.5,sw=0.5"]
    raw["evaluation"]["ppl"]["languages"] = ["en", "sw", "zh"]
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def polyprune(*args: str, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "mlflow-ui.png"))
    ap.add_argument("--models-out", default=str(ROOT / "docs" / "mlflow-models.png"))
    ap.add_argument("--models-window", default="3400,560", help="Chromium window size W,H of the Models tab (its grid "
                    "draws only the columns in view: wide enough for every ppl column)")
    ap.add_argument("--keep", default=None, help="run the sweep in DIR and keep it (default: a temporary folder)")
    ap.add_argument("--port", type=int, default=5055)
    ap.add_argument("--window", default="2000,760", help="Chromium window size W,H")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs headless Chromium (Debian: apt-get install chromium)")
    folder = Path(args.keep or tempfile.mkdtemp(prefix="polyprune-shot-"))
    folder.mkdir(parents=True, exist_ok=True)
    sweep = small_sweep(folder)
    if polyprune("sweep", str(sweep)).wait() != 0:
        sys.exit("the sweep failed")
    ui = polyprune("ui", str(sweep), "--port", str(args.port), stdout=subprocess.PIPE, text=True)
    try:
        url = next((line.strip() for line in ui.stdout if line.startswith("http://")), None)
        if url is None:
            sys.exit("polyprune ui printed no URL")
        base, exp = re.match(r"(http://[^/]+)/#/experiments/(\d+)/", url).groups()
        shots = [(args.out, url, args.window), (args.models_out, models_url(base, exp), args.models_window)]
        for out, page, window in shots:
            with tempfile.TemporaryDirectory(prefix="polyprune-chromium-") as profile:
                # The UI is a JS app: give it virtual time to fetch the runs and draw the table.
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window}",
                                "--virtual-time-budget=30000", f"--screenshot={os.path.abspath(out)}", page],
                               check=True, capture_output=True, timeout=600)
            print(f"{out}  ({page})")
    finally:
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=120)
        if not args.keep:
            time.sleep(0.5)
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
