"""How long a process waits before its first lm-eval task loads: the task index, for polyprune's
offline tasks alone vs with lm-eval's own (~14K YAMLs).

    python benchmarks/lmeval_index.py [--repeats 5]

Each measurement is a fresh Python process (the index is cached per process) that builds
`tasks.evaluation.lmeval.task_manager` for the demo's ten offline tasks, either as named (only the
offline folder is indexed) or with one lm-eval task added to the names (everything is indexed: what
every sweep worker and the sweep's validation paid before). The two alternate after one untimed
warm-up each (the page cache); the medians and the load average are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

NAMES = [f"polyprune_{kind}_{lang}" for kind in ("cont", "langid") for lang in ("en", "sw", "zh", "de", "ru")]
CHILD = """
import sys, time
from tasks.evaluation.lmeval import task_manager
t = time.perf_counter()
task_manager(names=sys.argv[1].split(","))
print(time.perf_counter() - t)
"""


def once(names: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, ",".join(names)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    settings = {"offline tasks only": NAMES, "with lm-eval's own": NAMES + ["xnli_sw"]}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for names in settings.values():
        once(names)  # warm-up
    for _ in range(args.repeats):
        for k, names in settings.items():
            times[k].append(once(names))
    for k, v in times.items():
        print(f"{k:20s} median {statistics.median(v):6.2f} s  ({', '.join(f'{x:.2f}' for x in v)})")
    print(f"load average {os.getloadavg()[0]:.2f}; python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
