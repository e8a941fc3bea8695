"""M-Wanda's language-aware terms on top of RIA (the M-Wanda paper reports they help RIA too):

    S_ij = RI_ij * (mu_j + lambda_var * sigma_j) ** a * (1 + lambda_prob * p_j)

with RI from ria.py and mu, sigma, p as in mwanda.py (weighted by the calibration mix): the
per-language statistics take the place of ||X_j||, the activation-probability factor multiplies
as in M-Wanda. With one
language and lambda_prob = 0 the masks are RIA's (sigma = 0, mu_j is ||X_j|| over a constant).
"""

from dataclasses import dataclass, field

from ..models import DOWN_PROJ
from .base import METHODS, Method
from .mwanda import MWanda, language_activation, probability_factor
from .ria import relative_importance, ria_select
from .stats import ActStats


@METHODS.register("mria")
class MRIA(Method):
    @dataclass
    class Params:
        a: float = 0.5
        scope: str = field(default="matrix", metadata={"choices": ("matrix", "row")})
        lambda_var: float = MWanda.Params.lambda_var
        lambda_prob: float = MWanda.Params.lambda_prob

    weights_languages = True

    def new_stats(self, name, linear, languages):
        return ActStats(linear.weight, languages, positive=name.rsplit(".", 1)[-1] in DOWN_PROJ)

    def prune(self, linear, stats, fraction, nm):
        p = self.params
        ri = relative_importance(linear.weight)
        act = language_activation(stats, p.lambda_var) ** p.a * probability_factor(stats, p.lambda_prob)
        return ria_select(ri * act.to(ri.device, ri.dtype), fraction, nm, p.scope)
