#!/usr/bin/env python3
"""Times one diffusers forward of a CogVideoX transformer directory, to compare with `ditcache forward`.

    ditcache export-model --preset s --out /tmp/s          # the S model, random weights from seed 0
    python3 tools/reference/time_forward.py /tmp/s --batch 2 --threads 2
Prints one JSON line with the median and minimum of the timed repeats (after one warm-up).
"""
import argparse
import json
import time

import torch
from diffusers import CogVideoXTransformer3DModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    model = CogVideoXTransformer3DModel.from_pretrained(args.model_dir).eval()
    c = model.config
    frames = (c.sample_frames - 1) // c.temporal_compression_ratio + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, frames, c.in_channels, c.sample_height, c.sample_width, generator=g)
    e = torch.randn(args.batch, c.max_text_seq_length, c.text_embed_dim, generator=g)
    t = torch.full((args.batch,), 500, dtype=torch.int64)
    times = []
    for i in range(args.repeats + 1):
        start = time.perf_counter()
        model(hidden_states=x, encoder_hidden_states=e, timestep=t, return_dict=False)
        if i > 0:
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"impl": "diffusers", "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
                      "frames": frames, "height": c.sample_height, "width": c.sample_width,
                      "median_s": times[len(times) // 2], "min_s": times[0]}))


if __name__ == "__main__":
    main()
