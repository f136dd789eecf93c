#!/usr/bin/env python3
"""One markdown table from `ditcache bench --json` and `tools/reference/peer_timing.py`'s JSON of the same export:
per strategy, our time and diffusers', their ratio, each side's speedup over its own baseline, and what our
engine skipped. Used by tools/gpu/check.sh.

    python3 tools/gpu/table.py ours.json diffusers.json "GPU name"
"""
import json
import sys


def main():
    ours = json.load(open(sys.argv[1]))
    peer = json.load(open(sys.argv[2]))
    device = sys.argv[3] if len(sys.argv) > 3 else peer.get("machine", "?")
    theirs = {r["strategy"]: r.get("time_s") for r in peer["rows"]}
    base_ours = ours["rows"][0]["time_s"]
    base_theirs = theirs.get("baseline")
    print(f"\n{ours['model']} on {device} ({ours['backend']} vs diffusers on torch {peer.get('torch', '?')} {peer.get('device', '?')}), "
          f"{ours['steps']} steps, guidance {ours['guidance_scale']}, median of {ours['repeats']}\n")
    print("| strategy | ours (s) | diffusers (s) | ours ÷ diffusers | speedup ours | speedup diffusers "
          "| attn computed/reused | tail skipped | uncond approx. | PSNR vs uncached (dB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ours["rows"]:
        t = theirs.get(r["strategy"])
        their_time, ratio = (f"{t:.3f}", f"{r['time_s'] / t:.2f}") if t else ("fails", "–")
        sp_theirs = f"{base_theirs / t:.2f}×" if t and base_theirs else "–"
        psnr = "∞" if r["psnr"] is None else f"{r['psnr']:.1f}"  # JSON writes an infinite PSNR as null
        print(f"| {r['strategy']} | {r['time_s']:.3f} | {their_time} | {ratio} | {base_ours / r['time_s']:.2f}× "
              f"| {sp_theirs} | {r['attention_computed']}/{r['attention_reused']} | {r['blocks_skipped']} "
              f"| {r['uncond_approximated']} | {psnr} |")

if __name__ == "__main__":
    main()
