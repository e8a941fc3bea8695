"""Pruning: one pipeline (capture -> hooks -> prune -> propagate) shared by every method.

A method is one small file registering itself in METHODS; a layerwise schedule
is one entry in SCHEDULES. Importing this package imports all of them.
"""

from .base import METHODS, Method  # noqa: F401
from . import magnitude, wanda, sparsegpt, mwanda, ria, mria  # noqa: F401  (registration)
from .schedules import SCHEDULES  # noqa: F401
