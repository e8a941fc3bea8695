"""Pruning: one pipeline (capture -> hooks -> prune -> propagate) shared by every method.

A method is one small file of this package registering itself in METHODS; a layerwise
schedule is one entry in SCHEDULES. Importing this package imports every module in it,
so a new method is a new file and nothing else.
"""

import importlib
import pkgutil

from .base import METHODS, Method, updates_weights  # noqa: F401
from .schedules import SCHEDULES  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # registration; an import error is raised, never skipped
