#!/usr/bin/env python3
"""Writes EasyCache parity cases (format: shared/design/parity-cases-easycache.md) on diffusers 0.42.1's Wan,
FLUX, CogVideoX and Latte pipelines, with our own port of the authors' rule (EasyCache is not part of diffusers).

Developer tool, not a test dependency (same environment as generate_cases.py):
    .venv/bin/python tools/reference/generate_easycache_cases.py --out tests/cases [--only NAME ...]

The rule (H-EmbodVis/EasyCache: `EasyCache4Wan2.1/easycache_generate.py` at 5127804 l. 476-644, the same rule as
`easycache_forward_` of `EasyCache4Wan2.2/easycache_generate.py`; notes in tools/reference/easycache_rule.md) wraps
the whole transformer call, where the authors replace the model's `forward`: `x` = the call's `hidden_states`, `o` =
its output, `L(t)` = mean |t| over every element (float32). `cnt` counts the calls of the generation; with
`per_step` calls per step (2: Wan with guidance and FLUX with true CFG, cond then uncond; 1: a batched-CFG call (CogVideoX, Latte) or an
unguided one) the first call of a step decides and the others repeat its decision:
- deciding call at step i: i < ret_steps or i >= N - 1: compute, acc = 0; else, with a previous deciding input and
  output: acc += k * L(x - prev_in) / L(prev_out) if k exists, reuse iff acc < thresh (else compute, acc = 0);
  without k compute; then prev_in = x (skipped or not);
- a reused call returns x + its branch's residual; a computed deciding call sets k = L(o - prev_out) /
  L(x - anchor) when both exist, anchor = x, prev_out = o; every computed call stores residual = o - x.
Latte's output has 2C channels (learned variance, which LattePipeline drops with a DDIM scheduler): the rule measures
and adds the residual on the first C channels and a reused call repeats the last computed call's other C.

Cases (trace.json: "blocks" per step, per context "cond" / "uncond" on Wan): `wan_easycache` (guidance 5, two calls
a step, 10 steps UniPC), `wan_easycache_noguidance` (guidance 1, batch 2, Euler), `wan_two_experts_easycache` (Wan 2.2: boundary_ratio
0.7, guidance 4 / 3; the two experts share the one state, across the switch), `flux_easycache_true_cfg` (FLUX.1-dev-like,
true CFG: two calls a step, 10 steps), `easycache_cogvideox` (the CogVideoX sincos model, batched CFG, 12 steps), `latte_easycache` (batched CFG, 12 steps). Thresholds are picked so
that decisions mix computing and reusing and cannot flip under float32 differences: every accumulated value the
rule compares is at least MARGIN (relative) away from the threshold. The generator checks that the port with
threshold 0 (never reusing) equals the stock pipeline bit for bit.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import generate_cases as cog  # noqa: E402
import generate_flux_cases as flux  # noqa: E402
import generate_latte_cases as latte  # noqa: E402
import generate_wan_cases as wan  # noqa: E402

torch.set_grad_enabled(False)

MARGIN = 0.03


class Rule:
    """The authors' state (their `*_even` / `*_odd` variables) for one generation, plus what the generator
    records: the accumulated values compared and the per-call decisions."""

    def __init__(self, cache, per_step, channel_dim, record):
        self.thresh, self.ret, self.n = cache["thresh"], cache["ret_steps"], cache["num_steps"]
        self.per_step, self.cdim, self.record = per_step, channel_dim, record
        self.cnt, self.acc, self.k, self.calc = 0, 0.0, None, True
        self.prev_in = self.anchor = self.prev_out = None
        self.cache = [None] * per_step
        self.compared = []

    def __call__(self, x, compute):
        step, branch = divmod(self.cnt, self.per_step)
        x = x.float()
        if branch == 0:
            if step < self.ret or step >= self.n - 1:
                self.calc, self.acc = True, 0.0
            elif self.prev_in is not None and self.prev_out is not None:
                change = (x - self.prev_in).abs().mean()
                if self.k is not None:
                    self.acc = self.acc + self.k * (change / self.prev_out.abs().mean())
                    self.compared.append(float(self.acc))
                    if self.acc < self.thresh:
                        self.calc = False
                    else:
                        self.calc, self.acc = True, 0.0
                else:
                    self.calc = True
            else:
                self.calc = True
            self.prev_in = x.clone()
        cached = self.cache[branch]
        self.cnt += 1
        if self.cnt >= self.n * self.per_step:
            self.cnt = 0
        if not self.calc and cached is not None:
            self.record(branch, "skip")
            residual, extra = cached
            out = x + residual
            return out if extra is None else torch.cat([out, extra], dim=self.cdim)
        self.record(branch, "compute")
        o = compute().float()
        c = x.shape[self.cdim]
        oc = o.narrow(self.cdim, 0, c)
        extra = o.narrow(self.cdim, c, o.shape[self.cdim] - c).clone() if o.shape[self.cdim] > c else None
        if branch == 0:
            if self.prev_out is not None and self.anchor is not None:
                self.k = (oc - self.prev_out).abs().mean() / (x - self.anchor).abs().mean()
            self.anchor, self.prev_out = x.clone(), oc.clone()
        self.cache[branch] = (oc - x, extra)
        return o


def install(model, rule):
    """Wraps the model's forward with the rule; returns the undo function."""
    forward = model.forward

    def wrapped(*args, **kwargs):
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        out = rule(x, lambda: forward(*args, **kwargs)[0])
        assert kwargs.get("return_dict") is False
        return (out,)

    model.forward = wrapped

    def undo():
        del model.forward

    return undo


# ---------------------------------------------------------------------------------------------------- Wan, FLUX


def per_branch_run(mod, s, models, per_step, channel_dim, cache):
    """One pipeline call of a family that calls the model once per guidance branch in cache contexts "cond" /
    "uncond" (`mod`: generate_wan_cases or generate_flux_cases), with the rule on `models` (Wan 2.2's two experts
    share the one state, the authors' module globals), or stock (cache None)."""
    if cache is None:
        return mod.run_pipeline(s)[:4], None

    def record(branch, decision):
        rec = mod.Probes.rec
        assert rec.context == ("cond" if branch == 0 else "uncond"), (branch, rec.context)
        rec.entry(rec.context)["blocks"] = decision

    rule = Rule(cache, per_step, channel_dim, record)
    undo = [install(m, rule) for m in models]
    try:
        final, preds, rec, scheduler, _ = mod.run_pipeline(s)
    finally:
        for u in undo:
            u()
    return (final, preds, rec, scheduler), rule


def wan_run(s, cache):
    # Latents [B, C, F, H, W].
    return per_branch_run(wan, s, s.models().values(), 2 if s.guidance > 1 else 1, 1, cache)


def flux_run(s, cache):
    # Packed latents [B, L, C]: channels last.
    return per_branch_run(flux, s, [s.model], 2 if s.true_cfg > 1 else 1, 2, cache)


def per_branch_case(mod, run, out, name, s, base):
    print(name)
    stock = run(s, None)[0][0]
    never = run(s, {**base, "thresh": 0.0})
    assert torch.equal(never[0][0], stock), f"{name}: the port changes the uncached result"

    def skips(r):
        return sum(v.get("blocks") == "skip" for e in r[0][2].steps for v in e.values() if isinstance(v, dict))

    thresh = pick(lambda c: run(s, c), base, never[1].compared, skips)
    cache = {**base, "thresh": thresh}
    (final, preds, rec, scheduler), rule = run(s, cache)
    assert min(abs(a - thresh) for a in rule.compared) > MARGIN * thresh
    if mod is wan:
        wan.check_direct_calls(s, preds, rec, scheduler, [0])
    else:
        flux.check_direct_call(s, preds, scheduler)
    mod.write_denoise(out, name, s, final, preds, rec, scheduler, cache)
    wan.print_decisions(rec)
    moved = mod.rel_l2(final, stock)
    print(f"   final latents rel_l2 vs uncached: {moved:.4g}")
    assert moved > 3e-3


# ---------------------------------------------------------------------------------------------------- CogVideoX, Latte


def batched_run(family, model, inputs, steps, guidance, cache):
    """One CogVideoX or Latte pipeline call with the rule on the transformer (or stock, cache None)."""
    mod = cog if family == "cog" else latte
    holder = {}
    Recorder = mod.Recorder

    class Rec(Recorder):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            holder["rec"] = self

    def record(branch, decision):
        holder["rec"].entry()["blocks"] = decision

    rule = None
    undo = None
    if cache is not None:
        # CogVideoX's latents are [B, F, C, H, W], Latte's [B, C, F, H, W].
        rule = Rule(cache, 1, 2 if family == "cog" else 1, record)
        undo = install(model, rule)
    mod.Recorder = Rec
    try:
        final, preds, rec, scheduler = mod.run_pipeline(model, inputs, steps, guidance, None)
    finally:
        mod.Recorder = Recorder
        if undo is not None:
            undo()
    return (final, preds, rec, scheduler), rule


def batched_case(out, name, family, model, inputs, steps, guidance, base):
    print(name)
    stock = batched_run(family, model, inputs, steps, guidance, None)[0][0]
    never = batched_run(family, model, inputs, steps, guidance, {**base, "thresh": 0.0})
    assert torch.equal(never[0][0], stock), f"{name}: the port changes the uncached result"

    def skips(r):
        return sum(e.get("blocks") == "skip" for e in r[0][2].steps)

    thresh = pick(lambda c: batched_run(family, model, inputs, steps, guidance, c), base, never[1].compared, skips)
    cache = {**base, "thresh": thresh}
    (final, preds, rec, scheduler), rule = batched_run(family, model, inputs, steps, guidance, cache)
    assert min(abs(a - thresh) for a in rule.compared) > MARGIN * thresh
    cog.write_denoise_case(out, name, model, inputs, final, preds, rec, scheduler, steps, guidance, cache)
    print("   decisions:", "".join("S" if e.get("blocks") == "skip" else "C" for e in rec.steps))
    moved = cog.rel_l2(final, stock) if hasattr(cog, "rel_l2") else ((final - stock).norm() / stock.norm()).item()
    print(f"   final latents rel_l2 vs uncached: {moved:.4g}")
    assert moved > 3e-3


# ---------------------------------------------------------------------------------------------------- thresholds


def pick(run, base, increments, skips):
    """The threshold (on a geometric grid) with the most reused steps, at most two thirds of those that may
    reuse, then the widest margin, whose compared accumulated values all stay MARGIN (relative) away."""
    print("   increments (never reusing):", [round(a, 4) for a in increments])
    skippable = base["num_steps"] - 1 - base["ret_steps"]
    best = None
    for t in np.round(np.geomspace(min(increments) * 0.5, 4 * max(increments), 160), 5):
        result = run({**base, "thresh": float(t)})
        rule = result[1]
        n = skips(result)
        if not rule.compared:
            continue
        margin = min(abs(a - t) for a in rule.compared) / t
        per_step = rule.per_step
        if margin > MARGIN and 0 < n // per_step <= 2 * skippable // 3 and (best is None or (n, margin) > (best[0], best[2])):
            best = (n, float(t), margin)
    assert best is not None, "no threshold with reuse and margin"
    print(f"   threshold {best[1]} (reused calls {best[0]}, relative margin {best[2]:.4f})")
    return best[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/cases")
    ap.add_argument("--only", nargs="*", help="write only these cases (names as above)")
    args = ap.parse_args()
    out = args.out
    os.makedirs(out, exist_ok=True)
    wan.Probes.install()
    want = lambda name: not args.only or name in args.only

    dmodel = wan.make_model(400, wan.SMALL_MODEL)
    if want("wan_easycache"):
        per_branch_case(wan, wan_run, out, "wan_easycache",
                        wan.Setup(dmodel, wan.UNIPC, 10, 5.0, batch=1, seed=490),
                        {"type": "easycache", "thresh": None, "ret_steps": 2, "num_steps": 10})
    if want("wan_easycache_noguidance"):
        per_branch_case(wan, wan_run, out, "wan_easycache_noguidance",
                        wan.Setup(dmodel, wan.EULER, 10, 1.0, batch=2, seed=491),
                        {"type": "easycache", "thresh": None, "ret_steps": 1, "num_steps": 10})

    if want("wan_two_experts_easycache"):
        dmodel_2 = wan.make_model(401, wan.SMALL_MODEL)
        per_branch_case(wan, wan_run, out, "wan_two_experts_easycache",
                        wan.Setup(dmodel, wan.UNIPC, 10, 4.0, batch=1, seed=492, model_2=dmodel_2, boundary_ratio=0.7,
                                  guidance_2=3.0),
                        {"type": "easycache", "thresh": None, "ret_steps": 2, "num_steps": 10})

    if want("flux_easycache_true_cfg"):
        ddev = flux.make_model(200, True, flux.DENOISE_MODEL)
        per_branch_case(flux, flux_run, out, "flux_easycache_true_cfg",
                        flux.Setup(ddev, flux.DEV_SCHEDULER, 10, 64, 64, 3.5, 2.0, batch=1, seed=262),
                        {"type": "easycache", "thresh": None, "ret_steps": 2, "num_steps": 10})

    sincos = cog.make_model(0)
    if want("easycache_cogvideox"):
        batched_case(out, "easycache_cogvideox", "cog", sincos, cog.denoise_inputs(sincos, 3, 8, 8, 8, seed=95), 12,
                     6.0, {"type": "easycache", "thresh": None, "ret_steps": 2, "num_steps": 12})
    lmodel = latte.make_model(40)
    if want("latte_easycache"):
        inputs = latte.denoise_inputs(lmodel, latte.FRAMES, latte.HEIGHT, latte.WIDTH, latte.TEXT, seed=96)
        batched_case(out, "latte_easycache", "latte", lmodel, inputs, 12, 6.0,
                     {"type": "easycache", "thresh": None, "ret_steps": 2, "num_steps": 12})


if __name__ == "__main__":
    main()
