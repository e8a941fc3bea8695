"""How noisy is one language's M-Wanda statistic against its calibration window count, and which
allocation of a mix's windows (proportional or equal, `tasks.data.langs.allocate`) gives the less
noisy weighted statistic on the demo's mixes?

    python benchmarks/allocation_noise.py [--seeds 8] [--nsamples 64] [--threads 1]
                                          [--out benchmarks/results/allocation_noise.json]

On the shipped demo model, for en, sw and zh: each calibration seed's windows (128 tokens, drawn
exactly as `sample_calibration` draws them: the first n windows of a seed are its n-window draw) go
through the dense model once; every linear's input gives per window sum x_j^2 (and, for the FFN
down projections, counts of x_j > 0). From these, with no further forward pass:

1. noise curve: a_lj = sqrt(mean over the first n windows' tokens of x_j^2) for n = 1 ... 32; its
   relative sd over the seeds, median over every input feature j of every linear (q/k/v and
   gate/up share an input: counted once); c = rel sd * sqrt(n) is constant if the noise is ~1/sqrt(n);
2. per mix (uniform en,sw,zh and MBS-like en=0.85,sw=0.02,zh=0.13) and allocation, at `--nsamples`
   windows: the weighted mu_j = sum_l w_l a_lj, sigma_j (w-weighted std), p_j = max_l fire rate and
   M-Wanda's activation factor at its defaults on the down projections, mu (1 + 0.25 p): relative sd over seeds
   and relative RMS error against a reference from all seeds' windows pooled (seeds x 64 windows per
   language), medians over features; plus Var(mu_j) predicted from the noise curve,
   sum_l w_l^2 s_lj^2 / n_l (s_lj^2 = the per-window variance, var(a_lj at n) * n averaged over n),
   which n_l proportional to w_l s_l minimises.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

LANGS = ("en", "sw", "zh")
MIXES = {"uniform": {"en": 1 / 3, "sw": 1 / 3, "zh": 1 / 3}, "mbs": {"en": 0.85, "sw": 0.02, "zh": 0.13}}
COUNTS = (1, 2, 4, 8, 16, 32)
POOL, SEQLEN = 64, 128  # windows drawn per language and seed (the largest count any allocation asks at 64)


@torch.no_grad()
def window_stats(model, ids: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per window, over every distinct linear input of every block: "sq" = sum over its tokens of x_j^2
    [n, F]; for the down-projection inputs alone "down_sq" [n, D] and "down_pos" = counts of x_j > 0."""
    from tasks.models import DOWN_PROJ, block_linears, find_blocks

    _, blocks = find_blocks(model)
    got: dict[tuple, list] = {}
    hooks = []
    for b, block in enumerate(blocks):
        for name, lin in block_linears(block).items():
            def hook(module, inputs, b=b, name=name, down=name.rsplit(".", 1)[-1] in DOWN_PROJ):
                x = inputs[0].double()
                got.setdefault(("sq", b, name), []).append((x * x).sum(1))
                if down:
                    got.setdefault(("down_sq", b, name), []).append((x * x).sum(1))
                    got.setdefault(("down_pos", b, name), []).append((x > 0).sum(1).double())
            hooks.append(lin.register_forward_pre_hook(hook))
    try:
        for batch in ids.split(batch_size):
            model(input_ids=batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    got = {k: torch.cat(v) for k, v in got.items()}
    for k in [k for k in got if k[0] == "sq"]:  # q/k/v and gate/up read one input: count it once
        if any(o[1] == k[1] and o < k and torch.equal(got[o], got[k]) for o in got if o[0] == "sq" and o in got):
            del got[k]
    return {kind: torch.cat([v for k, v in got.items() if k[0] == kind], 1) for kind in ("sq", "down_sq", "down_pos")}


def median(x: torch.Tensor) -> float:
    return x[torch.isfinite(x)].median().item()


def measure(args) -> dict:
    from tasks.api import load_model
    from tasks.data.calibration import sample_calibration
    from tasks.data.langs import allocate
    from tasks.data.sources import get_source
    from tasks.demo_model import DemoConfig, demo_model_path

    t0 = time.perf_counter()
    model, tok = load_model(str(demo_model_path(DemoConfig(), progress=True)))
    model.eval()
    source, seeds = get_source("builtin"), range(args.seeds)
    stats = {}  # lang -> kind -> [seeds, POOL, features]
    for lang in LANGS:
        per_seed = [window_stats(model, sample_calibration(source, tok, {lang: 1.0}, POOL, SEQLEN, s).input_ids) for s in seeds]
        stats[lang] = {kind: torch.stack([x[kind] for x in per_seed]) for kind in per_seed[0]}
    t_forward = time.perf_counter() - t0
    sumsq = {lang: stats[lang]["sq"] for lang in LANGS}

    def rms(lang, n, kind="sq"):  # [seeds, features] from each seed's first n windows
        return (stats[lang][kind][:, :n].sum(1) / (n * SEQLEN)).sqrt()

    def rate(lang, n):  # [seeds, D]
        return stats[lang]["down_pos"][:, :n].sum(1) / (n * SEQLEN)

    def pooled(lang, kind):  # the reference: every seed's windows together
        return stats[lang][kind].sum((0, 1)) / (args.seeds * POOL * SEQLEN)

    curve, per_window_var = {}, {}
    for lang in LANGS:
        rows, pvar = [], []
        for n in COUNTS:
            a = rms(lang, n)
            rel = a.std(0) / a.mean(0)
            rows.append({"windows": n, "rel_sd_median": median(rel), "c_median": median(rel) * math.sqrt(n)})
            pvar.append(a.var(0) * n)
        curve[lang] = rows
        per_window_var[lang] = torch.stack(pvar).mean(0)  # s_lj^2 [F]
    s_l = {lang: median(per_window_var[lang].sqrt() / rms(lang, POOL).mean(0)) for lang in LANGS}  # relative, per window

    ref_a = {lang: pooled(lang, "sq").sqrt() for lang in LANGS}
    ref_down = {lang: pooled(lang, "down_sq").sqrt() for lang in LANGS}
    ref_p = {lang: pooled(lang, "down_pos") for lang in LANGS}
    mixes = {}
    for mix_name, mix in MIXES.items():
        w = torch.tensor([mix[l] for l in LANGS], dtype=torch.float64)[:, None, None]
        ref_mu = sum(mix[l] * ref_a[l] for l in LANGS)
        ref_sigma = sum(mix[l] * (ref_a[l] - ref_mu) ** 2 for l in LANGS).sqrt()
        ref_p_max = torch.stack([ref_p[l] for l in LANGS]).max(0).values
        ref_act = sum(mix[l] * ref_down[l] for l in LANGS) * (1 + 0.25 * ref_p_max)
        optimal = {l: mix[l] * s_l[l] for l in LANGS}
        out = {}
        for allocation in ("proportional", "equal", "optimal"):
            if allocation == "optimal":  # n_l proportional to w_l s_l (the theory's minimiser of Var(mu))
                counts = allocate({l: v / sum(optimal.values()) for l, v in optimal.items()}, args.nsamples)
            else:
                counts = allocate(mix, args.nsamples, allocation)
            a = torch.stack([rms(l, counts[l]) for l in LANGS])  # [L, seeds, F]
            mu = (w * a).sum(0)
            sigma = (w * (a - mu) ** 2).sum(0).sqrt()
            p = torch.stack([rate(l, counts[l]) for l in LANGS]).max(0).values
            # M-Wanda's factor at its defaults (lambda_var 0, lambda_prob 0.25) on the down-projection inputs
            act = (w * torch.stack([rms(l, counts[l], "down_sq") for l in LANGS])).sum(0) * (1 + 0.25 * p)
            predicted = sum(mix[l] ** 2 * per_window_var[l] / counts[l] for l in LANGS)
            out[allocation] = {
                "counts": counts,
                "mu_rel_sd": median(mu.std(0) / mu.mean(0)),
                "mu_rel_sd_predicted": median(predicted.sqrt() / mu.mean(0)),
                "mu_rel_rmse": median(((mu - ref_mu) ** 2).mean(0).sqrt() / ref_mu),
                "sigma_rel_rmse": median(((sigma - ref_sigma) ** 2).mean(0).sqrt() / ref_sigma),
                "p_rel_sd": median(p.std(0) / p.mean(0)),
                "p_rel_rmse": median(((p - ref_p_max) ** 2).mean(0).sqrt() / ref_p_max),
                "p_mean_bias": median((p.mean(0) - ref_p_max) / ref_p_max),
                "act_default_rel_rmse": median(((act - ref_act) ** 2).mean(0).sqrt() / ref_act),
            }
        mixes[mix_name] = out
    return {"model": "demo (tasks.demo_model)", "seqlen": SEQLEN, "seeds": args.seeds, "nsamples": args.nsamples,
            "features": int(sumsq[LANGS[0]].shape[2]), "down_proj_features": int(stats[LANGS[0]]["down_pos"].shape[2]),
            "noise_curve": curve, "per_window_rel_sd": s_l, "mixes": mixes,
            "time_s": {"forward": round(t_forward, 1), "total": round(time.perf_counter() - t0, 1)},
            "torch_threads": torch.get_num_threads()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--nsamples", type=int, default=64, help="windows per mix (the demo's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "allocation_noise.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
