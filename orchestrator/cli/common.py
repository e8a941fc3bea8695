"""What several commands share: NAME given as an experiment name or as a sweep file."""

from __future__ import annotations

from pathlib import Path

from ..config import default_tracking_uri


def resolve_name(name: str, tracking_uri: str | None) -> tuple[str, str, list | None]:
    """(experiment name, tracking uri, the file's cells or None) of NAME, a name or a sweep file."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        from ..sweep.file import expand, load_sweep

        cfg = load_sweep(name)
        return cfg.name, default_tracking_uri(tracking_uri) if tracking_uri else cfg.tracking_uri, expand(cfg)
    return name, default_tracking_uri(tracking_uri), None
