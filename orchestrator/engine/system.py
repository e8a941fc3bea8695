"""A cell's system metrics, measured on the worker that ran it (`worker.CellRunner`)."""

from __future__ import annotations


class SystemSampler:
    """MLflow-named system metrics of one cell, sampled on the worker that ran it (the driver's
    own system metrics would describe the wrong machine): mean CPU utilisation of the node,
    the worker's peak resident memory, and on a GPU the peak allocated device memory."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.interval_s, self.stop = interval_s, threading.Event()
        self.cpu: list[float] = []
        self.rss_peak = 0.0
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        psutil.cpu_percent(None)  # the first reading is meaningless; start the interval here
        while not self.stop.wait(self.interval_s):
            self.cpu.append(psutil.cpu_percent(None))
            self.rss_peak = max(self.rss_peak, proc.memory_info().rss / 2**20)

    def __enter__(self) -> "SystemSampler":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def metrics(self) -> dict[str, float]:
        import psutil
        import torch

        out = {"system.memory_usage_megabytes": max(self.rss_peak, psutil.Process().memory_info().rss / 2**20)}
        if self.cpu:
            out["system.cpu_utilization_percentage"] = sum(self.cpu) / len(self.cpu)
        if torch.cuda.is_available():
            out["system.gpu_0_memory_usage_megabytes"] = torch.cuda.max_memory_allocated() / 2**20
        return out
