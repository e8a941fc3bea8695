"""`polyprune prune`: prune one model and write it with its masks, calibration ids and result.json."""

from __future__ import annotations

import argparse
import json
import sys

from tasks.errors import UserError


def parse_hp(pairs: list[str]) -> dict[str, str]:
    hp = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError("hp", f"expected KEY=VALUE, got {pair!r}")
        hp[key.strip()] = value.strip()
    return hp


class Registered(str):
    """A help text listing a registry's names, read when help is shown: building the parser of
    every command must not import torch (tasks.pruning) for a text nobody may ask for."""

    def __mod__(self, params) -> str:
        if self == "methods":
            from tasks.pruning import METHODS

            return " | ".join(METHODS.names())
        if self == "schedules":
            from tasks.pruning import SCHEDULES

            return " | ".join(SCHEDULES.names()) + " | a per-block YAML/JSON file"
        from tasks.data.sources import HUB

        return "a local folder | builtin | " + " | ".join(HUB.names())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id or local folder")
    p.add_argument("--method", required=True, help=Registered("methods"))
    p.add_argument("--sparsity", required=True, help="fraction in [0, 1) or N:M (2:4, 4:8)")
    p.add_argument("--calib", required=True, help="en | en,de | en=0.7,de=0.3")
    p.add_argument("--data", default="builtin", help=Registered("sources"))
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=None, help="default: min(2048, the model's positions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--schedule", default="uniform", help=Registered("schedules"))
    p.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="method / schedule hyperparameter (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="calibration forward batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 | float64")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--allocation", default="proportional", choices=["proportional", "equal"],
                   help="calibration windows per language of a mix (equal: mwanda / mria only; docs/mwanda.md#allocation)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")


def run(args) -> int:
    from tasks import api

    spec = api.PruneSpec(model=args.model, method=args.method, sparsity=args.sparsity, calib=args.calib, data=args.data,
                         nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, schedule=args.schedule,
                         hp=parse_hp(args.hp), batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                         trust_remote_code=args.trust_remote_code, allocation=args.allocation)
    spec = api.check_spec(spec)
    api.check_out_dir(args.out)
    model, tok = api.load_model(spec.model, spec.dtype, "cpu", spec.trust_remote_code)
    api.check_model(model, spec)
    res = api.prune(model, tok, spec, progress=sys.stderr.isatty())
    api.save_outputs(args.out, model, tok, res)
    r = res.result
    print(json.dumps({"out": args.out, "sparsity_actual": round(r["sparsity_actual"], 6),
                      "time_prune_s": round(r["time_prune_s"], 3), "calibration": r["calibration"]["samples"]}))
    return 0
