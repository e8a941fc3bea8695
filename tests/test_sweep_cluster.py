"""A sweep on a simulated 2-node cluster (`ray.cluster_utils.Cluster`, one fake GPU per
node): cells spread over both nodes; killing one node mid-cell retries its cell on
the other and the sweep still finishes every cell once.

The cluster needs its own Ray, and the test session already holds one (`ray_local`),
so the driver runs in a subprocess: this file run as a script (`__main__` below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_node_lost_mid_cell_is_retried_elsewhere(tmp_path, tiny_llama, text_dir):
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import link_inputs
    from test_sweep import runs, write_sweep

    link_inputs(tmp_path, tiny_llama, text_dir)
    # 9 cells; resources default to one worker per GPU
    path = write_sweep(tmp_path, resources={"gpus_per_cell": 1})
    out = tmp_path / "result.json"
    env = {**os.environ, "POLYPRUNE_CELL_DELAY_S": "2"}
    proc = subprocess.run([sys.executable, __file__, str(path), str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["code"] == 0 and res["removed"], res
    got = runs(tmp_path / "mlflow.db")
    finished = [r for r in got if r["status"] == "FINISHED"]
    assert len(finished) == 9 and len({r["cell"] for r in finished}) == 9
    assert not any(r["status"] == "RUNNING" for r in got)
    nodes = {r["tags"]["polyprune.node"] for r in finished}
    assert {res["victim"], res["survivor"]} <= nodes  # spread over both worker nodes
    retried = [r for r in finished if "polyprune.retries" in r["tags"]]
    assert retried and all(r["tags"]["polyprune.node"] == res["survivor"] for r in retried)


# ---------------------------------------------------------------- the subprocess


def finished_on(db: Path, node_id: str) -> int:
    from helpers import sqlite_rows

    rows = sqlite_rows(db, "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid where "
                           "t.key = 'polyprune.node' and t.value = ? and r.status = 'FINISHED'", (node_id,))
    return rows[0][0] if rows else 0


def cluster_main(sweep: str, result: str) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    # Quick node-death detection: a dead raylet is noticed after ~2 missed health checks.
    system = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False,
                                                            "_system_config": system})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    survivor, victim = nodes
    removed = {}

    def kill_victim_mid_cell():
        # once the victim has finished a cell it is running its queued next one: kill it now
        db = Path(sweep).parent / "mlflow.db"
        while finished_on(db, victim.node_id) < 1:
            time.sleep(0.2)
        time.sleep(0.5)
        cluster.remove_node(victim, allow_graceful=False)
        removed["at"] = time.time()

    threading.Thread(target=kill_victim_mid_cell, daemon=True).start()
    from orchestrator.cli import main

    code = main(["sweep", sweep])
    Path(result).write_text(json.dumps({"code": code, "removed": bool(removed), "victim": victim.node_id,
                                        "survivor": survivor.node_id}))
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(cluster_main(sys.argv[1], sys.argv[2]))
