#!/usr/bin/env python3
"""Prints the reference values of `models/tests/unipc.rs`: diffusers 0.42.1's `UniPCMultistepScheduler`
schedules and full stepping loops, as the Rust module `reference` ready to paste.

Developer tool, never needed by the tests:
    .venv/bin/python tools/reference/unipc_values.py > /tmp/unipc_values.rs

What it prints (the test defines the same inputs, configurations and checksums):
- `set_timesteps(n)` of Wan's configuration (flow_shift 3.0 and 5.0; n = 1, 2, 5, 10, 50), of the flow
  variants (dynamic shifting, shift_terminal, final sigma_min) and of the classic beta-schedule path
  (linspace / leading / trailing spacing, scaled_linear, linear, squaredcos_cap_v2, rescale_betas_zero_snr):
  the int64 timesteps and the float32 sigmas. Long schedules are printed as a few entries plus `checksum`s.
- The training sigmas of `__init__` (before `set_timesteps`): first, last and float64 sum, which checks the
  betas and cumprod.
- Full loops of `N_STEPS` steps: `sample_0 = initial_sample()`, then for each step i
  `sample_{i+1} = step(model_output(i), timesteps[i], sample_i).prev_sample`, every output printed.

Checksums (`checksum_f32`, `checksum_i64`): `sum((i + 1) * x_i)` over the float32 bit patterns (as u32) or the
int64 values, wrapping modulo 2^64, so that they are bit-exact; `fsum`: the float64 sum of float32 values, for
the classic path, whose sigmas go through torch's float32 `sqrt` (not correctly rounded on this build: 1 ulp
off on ~20 % of inputs), so that the test compares them within one ulp.

Floats are printed with `np.format_float_positional(..., unique=True)`: the shortest decimal that reads back
as the same float32, so Rust's `f32` literals are diffusers' values exactly.
"""
import math

import numpy as np
import torch
from diffusers import UniPCMultistepScheduler

torch.set_grad_enabled(False)

SHAPE = (1, 2, 3, 1, 2)  # a rank-5 latent like Wan's [B, C, F, H, W], 12 values
N_STEPS = 6

WAN = dict(
    beta_end=0.02,
    beta_schedule="linear",
    beta_start=0.0001,
    disable_corrector=[],
    dynamic_thresholding_ratio=0.995,
    final_sigmas_type="zero",
    flow_shift=3.0,
    lower_order_final=True,
    num_train_timesteps=1000,
    predict_x0=True,
    prediction_type="flow_prediction",
    rescale_betas_zero_snr=False,
    sample_max_value=1.0,
    solver_order=2,
    solver_p=None,
    solver_type="bh2",
    steps_offset=0,
    thresholding=False,
    timestep_spacing="linspace",
    trained_betas=None,
    use_beta_sigmas=False,
    use_exponential_sigmas=False,
    use_flow_sigmas=True,
    use_karras_sigmas=False,
)
# Stable Diffusion's betas, epsilon prediction: the classic (non-flow) path.
CLASSIC = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")


def model_output(i):
    """The model output of step i: sin(0.7 * (i + 1) + 0.37 * j) over the flat index j, in float64 (libm's
    `sin`, as Rust's `f64::sin`, not numpy's SIMD one) rounded to float32."""
    values = [math.sin(0.7 * (i + 1) + 0.37 * j) for j in range(math.prod(SHAPE))]
    return torch.tensor(values, dtype=torch.float64).to(torch.float32).reshape(SHAPE)


def initial_sample():
    """cos(0.23 * j + 0.1) over the flat index j, float64 (libm) rounded to float32."""
    values = [math.cos(0.23 * j + 0.1) for j in range(math.prod(SHAPE))]
    return torch.tensor(values, dtype=torch.float64).to(torch.float32).reshape(SHAPE)


def f32(x):
    return np.format_float_positional(np.float32(x), unique=True, trim="0")


def f32s(a):
    return "[" + ", ".join(f32(x) for x in np.asarray(a, dtype=np.float32).ravel()) + "]"


def i64s(a):
    return "[" + ", ".join(str(int(x)) for x in a) + "]"


def checksum_f32(a):
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return int(sum((i + 1) * int(b) for i, b in enumerate(bits)) % 2**64)


def checksum_i64(a):
    return int(sum((i + 1) * int(t) for i, t in enumerate(a)) % 2**64)


def fsum(a):
    """The float64 sum of float32 values (a checksum that tolerates one-ulp differences)."""
    return float(np.sum(np.asarray(a, dtype=np.float32).astype(np.float64)))


def schedule(name, config, n, mu=None, full=True):
    s = UniPCMultistepScheduler(**config)
    s.set_timesteps(n, mu=mu)
    t, sg = s.timesteps.numpy(), s.sigmas.numpy()
    if full:
        print(f"    pub const {name}_T: [i64; {len(t)}] = {i64s(t)};")
        print(f"    pub const {name}_S: [f32; {len(sg)}] = {f32s(sg)};")
    else:
        print(f"    // {name}: {len(t)} timesteps; first and last three, and checksums")
        print(f"    pub const {name}_T_HEAD: [i64; 3] = {i64s(t[:3])};")
        print(f"    pub const {name}_T_TAIL: [i64; 3] = {i64s(t[-3:])};")
        print(f"    pub const {name}_S_HEAD: [f32; 3] = {f32s(sg[:3])};")
        print(f"    pub const {name}_S_TAIL: [f32; 3] = {f32s(sg[-3:])};")
        print(f"    pub const {name}_T_LEN: usize = {len(t)};")
        print(f"    pub const {name}_T_SUM: u64 = {checksum_i64(t)};")
        print(f"    pub const {name}_S_SUM: u64 = {checksum_f32(sg)};")
        print(f"    pub const {name}_S_FSUM: f64 = {fsum(sg)!r};")


def training_sigmas(name, config):
    s = UniPCMultistepScheduler(**config)
    sg = s.sigmas.numpy()
    print(f"    // {name}: the {len(sg)} training sigmas of __init__; first, last, float64 sum")
    print(f"    pub const {name}_TRAIN: (f32, f32, f64) = ({f32(sg[0])}, {f32(sg[-1])}, {fsum(sg)!r});")


def loop(name, config, n=N_STEPS):
    s = UniPCMultistepScheduler(**config)
    s.set_timesteps(n)
    x = initial_sample()
    outs = []
    for i, t in enumerate(s.timesteps):
        x = s.step(model_output(i), t, x).prev_sample
        outs.append(x.numpy().ravel().copy())
    print(f"    pub const {name}_T: [i64; {len(s.timesteps)}] = {i64s(s.timesteps.numpy())};")
    print(f"    pub const {name}: [[f32; {outs[0].size}]; {len(outs)}] = [")
    for o in outs:
        print(f"        {f32s(o)},")
    print("    ];")


def main():
    print("/// Generated by `tools/reference/unipc_values.py` (diffusers "
          f"{__import__('diffusers').__version__}, torch {torch.__version__}, numpy {np.__version__}).")
    print("#[rustfmt::skip]")
    print("mod reference {")
    print("    // ---- Wan's configuration: set_timesteps(n)")
    for shift in (3.0, 5.0):
        tag = f"WAN{int(shift)}"
        for n in (1, 2, 5, 10):
            schedule(f"{tag}_N{n}", {**WAN, "flow_shift": shift}, n)
        schedule(f"{tag}_N50", {**WAN, "flow_shift": shift}, 50, full=False)
    print()
    print("    // ---- flow variants")
    schedule("FLOW_SIGMA_MIN_N5", {**WAN, "final_sigmas_type": "sigma_min"}, 5)
    schedule("FLOW_DYN_EXP_N5", {**WAN, "use_dynamic_shifting": True}, 5, mu=0.8)
    schedule("FLOW_DYN_LIN_N5", {**WAN, "use_dynamic_shifting": True, "time_shift_type": "linear"}, 5, mu=0.5)
    schedule("FLOW_TERMINAL_N5", {**WAN, "shift_terminal": 0.1}, 5)
    # n = 1000 repeats timesteps (trunc(sigma * 1000)); diffusers then starts stepping at index 1.
    schedule("FLOW_N1000", WAN, 1000, full=False)
    print()
    print("    // ---- classic path (scaled_linear betas, epsilon)")
    training_sigmas("CLASSIC", CLASSIC)
    training_sigmas("LINEAR", {})
    training_sigmas("COSINE", {"beta_schedule": "squaredcos_cap_v2"})
    training_sigmas("ZSNR", {**CLASSIC, "rescale_betas_zero_snr": True})
    schedule("CLASSIC_LINSPACE_N6", CLASSIC, 6)
    schedule("CLASSIC_LEADING_N6", {**CLASSIC, "timestep_spacing": "leading", "steps_offset": 1}, 6)
    schedule("CLASSIC_TRAILING_N6", {**CLASSIC, "timestep_spacing": "trailing"}, 6)
    schedule("CLASSIC_SIGMA_MIN_N5", {**CLASSIC, "final_sigmas_type": "sigma_min"}, 5)
    schedule("ZSNR_TRAILING_N5", {**CLASSIC, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 5)
    # numpy's arange(1000, 0, -1000/61) has 62 values: diffusers then has 62 steps, the last timestep -1.
    schedule("CLASSIC_TRAILING_N61", {**CLASSIC, "timestep_spacing": "trailing"}, 61, full=False)
    schedule("CLASSIC_N50", CLASSIC, 50, full=False)
    print()
    print(f"    // ---- full loops, {N_STEPS} steps, model_output(i) and initial_sample() as in the docstring")
    loop("LOOP_WAN", WAN)
    loop("LOOP_WAN5", {**WAN, "flow_shift": 5.0})
    loop("LOOP_ORDER3", {**WAN, "solver_order": 3})
    loop("LOOP_VARIANT",
         {**WAN, "disable_corrector": [0], "lower_order_final": False, "final_sigmas_type": "sigma_min"})
    loop("LOOP_CLASSIC", CLASSIC)
    loop("LOOP_CLASSIC_V",
         {**CLASSIC, "prediction_type": "v_prediction", "predict_x0": False, "solver_type": "bh1",
          "solver_order": 3, "timestep_spacing": "trailing", "final_sigmas_type": "sigma_min"})
    loop("LOOP_CLASSIC_SAMPLE", {**CLASSIC, "prediction_type": "sample", "solver_order": 3,
                                 "timestep_spacing": "leading", "steps_offset": 1})
    print("}")


if __name__ == "__main__":
    main()
