"""Magnitude pruning: drop the smallest |W|, per whole matrix (reference) or per output row."""

from dataclasses import dataclass, field

from .base import METHODS, Method
from .sparsity import matrix_mask, nm_mask, row_mask


@METHODS.register("magnitude")
class Magnitude(Method):
    @dataclass
    class Params:
        scope: str = field(default="matrix", metadata={"choices": ("matrix", "row")})

    needs_calibration = False

    def prune(self, linear, stats, fraction, nm):
        score = linear.weight.detach().abs()
        if nm:
            return nm_mask(score, *nm)
        return (matrix_mask if self.params.scope == "matrix" else row_mask)(score, fraction)
