"""The promotion rule and the `fidelity:` key (orchestrator/search/fidelity.py): plain functions."""

import math

import pytest

from orchestrator.search.fidelity import DEFAULTS, promoted, screen_key
from tasks.errors import UserError


def test_promoted_takes_the_best_fraction_so_far():
    seen = [5.0, 3.0, 4.0, 9.0, 8.0, 7.0, 6.0, 10.0]  # 8 screened: the best ceil(0.25 * 8) = 2 are 3.0 and 4.0
    assert [v for v in seen if promoted(v, seen, 0.25)] == [3.0, 4.0]
    assert promoted(5.0, [5.0], 0.25)  # the first screen is the best so far
    assert not promoted(6.0, [5.0, 6.0], 0.25)
    assert promoted(6.0, [5.0, 6.0], 1.0)


def test_promoted_maximize_ties_and_nan():
    seen = [0.1, 0.5, 0.3, 0.5]
    assert [v for v in seen if promoted(v, seen, 0.25, minimize=False)] == [0.5, 0.5]  # a tie at the cut promotes
    assert not promoted(math.nan, [1.0, math.nan], 1.0)
    assert promoted(1.0, [1.0, math.nan, math.inf], 0.5)  # non-finite screens are not ranked


def test_screen_key_keeps_the_prune_and_narrows_the_evaluation():
    key = {"method": "mwanda", "calib": "en=0.5,sw=0.5", "eval": {"ppl": {"languages": ["en"], "nsamples": None, "split": "valid"},
                                                                "lm_eval": None, "test": {"ppl": {"split": "test"}}}}
    s = screen_key(key, 8)
    assert s["eval"] == {"ppl": {"languages": ["en"], "nsamples": 8, "split": "valid"}, "lm_eval": None, "test": None}
    assert s["fidelity"] == {"statistics": "dense-cache", "windows": 8} and s["calib"] == key["calib"]
    assert screen_key({**key, "eval": {**key["eval"], "ppl": {"languages": ["en"], "nsamples": 4}}}, 8)["eval"]["ppl"]["nsamples"] == 4


def _cfg(**over):
    from orchestrator.search.file import SearchConfig
    from orchestrator.search import fidelity

    raw = {"name": "s", "model": "m", "sparsity": "0.5", "calibration": {"languages": ["en", "sw"]}, "space": "mwanda_mix",
           "objectives": [{"metric": "ppl.mean"}], **over}
    cfg = SearchConfig.model_validate(raw)
    fidelity.resolve(cfg)
    fidelity.check(cfg)
    return cfg


def test_fidelity_key_forms():
    assert _cfg().fidelity is None
    assert _cfg(fidelity=True).fidelity.model_dump() == DEFAULTS
    assert _cfg(fidelity={"windows": 4, "promote": 0.5}).fidelity.promote == 0.5
    for bad, field in (({"promote": 0}, "fidelity.promote"), ({"windows": 0}, "fidelity.windows"), ({"rungs": 3}, "fidelity.rungs"),
                       ("yes", "fidelity")):
        with pytest.raises(UserError) as e:
            _cfg(fidelity=bad)
        assert e.value.field == field
    for over in ({"objectives": [{"metric": "ppl.en"}, {"metric": "ppl.sw"}]}, {"constraints": [{"metric": "ppl.en", "max": 9}]},
                 {"pruner": {"name": "median"}}, {"objectives": [{"metric": "sparsity.actual"}]}):
        with pytest.raises(UserError) as e:
            _cfg(fidelity=True, **over)
        assert e.value.field == "fidelity"
