//! The engine against diffusers 0.42.1's decisions (`tools/reference/seacache_filter_values.py`) and hand-derived
//! outputs.

use super::*;
use burn::tensor::{Tensor, TensorData};
use burn_ndarray::NdArray;
use cache_core::{Branch, StepContext};

type B = NdArray<f32>;

const N: usize = 12;
const DIMS: [usize; 5] = [2, 2, 3, 4, 4];

/// The script's `SIGMAS`.
fn sigma(step: usize) -> f64 {
    1.0 - (step as f64 + 0.5) / N as f64
}

/// The script's `DRIFT`.
fn drift(context: &str) -> [f64; N] {
    match context {
        "cond" => [0.0, 0.02, 0.03, 0.02, 0.4, 0.01, 0.01, 0.02, 0.5, 0.03, 0.02, 0.01],
        _ => [0.0, 0.3, 0.01, 0.01, 0.01, 0.01, 0.6, 0.02, 0.02, 0.02, 0.02, 0.02],
    }
}

/// The script's `latents(context, step)`: `[B, C, F, H, W] = [2, 2, 3, 4, 4]`.
fn latent_values(context: &str, step: usize) -> Vec<f32> {
    let shift = if context == "uncond" { 0.5 } else { 0.0 };
    let acc: f64 = drift(context)[..=step].iter().sum();
    (0..DIMS.iter().product::<usize>())
        .map(|i| {
            let base = ((i * 53) % 97) as f64 / 48.0 - 1.0 + shift;
            let wave = ((i * 29 + 7) % 31) as f64 / 15.0 - 1.0;
            (base + acc * wave) as f32
        })
        .collect()
}

fn latents(context: &str, step: usize) -> Tensor<B, 5> {
    Tensor::from_data(TensorData::new(latent_values(context, step), DIMS), &Default::default())
}

fn ctx(context: &str, step: usize, sigma: Option<f64>) -> CallContext {
    let branch = if context == "cond" { Branch::Cond } else { Branch::Uncond };
    CallContext::new(StepContext { step, num_steps: N, timestep: 1000.0 * (1.0 - step as f64 / N as f64), sigma }, branch, 2)
}

/// diffusers' SEA distances of steps 1..11 to the step before (`resolve_gate`'s arithmetic), per context.
const COND_DISTANCES: [f64; N - 1] = [
    8.114962876e-01, 4.948726296e-01, 2.774392515e-01, 5.800526142e-01, 7.976545393e-02, 4.390976392e-02, 2.642925270e-02,
    4.694727957e-01, 1.804555021e-02, 1.223372528e-02, 6.264701253e-03,
];
const UNCOND_DISTANCES: [f64; N - 1] = [
    8.125839829e-01, 5.703161955e-01, 3.282770216e-01, 1.819864064e-01, 9.967488050e-02, 4.816858619e-01, 2.662458643e-02,
    1.581020933e-02, 1.198632130e-02, 1.138101006e-02, 1.203307882e-02,
];

/// A configuration of the script's `CONFIGS` and diffusers' decisions for it (cond, uncond).
fn cases() -> Vec<(SeaCacheConfig, &'static str, &'static str)> {
    let d = SeaCacheConfig::default;
    vec![
        (d(), "CCCCCSSCCSSC", "CCCCSCCSSCSC"),
        (SeaCacheConfig { threshold: 0.0, ..d() }, "CCCCCCCCCCCC", "CCCCCCCCCCCC"),
        (
            SeaCacheConfig { threshold: 10.0, retention_steps: 3, cache_end_steps: 3, max_consecutive_cached: 0, ..d() },
            "CCCSSSSSSCCC",
            "CCCSSSSSSCCC",
        ),
        (SeaCacheConfig { threshold: 0.5, max_consecutive_cached: 1, residual_order: 0, ..d() }, "CCSCCSCSCSCC", "CCCSCSCSCSCC"),
        (SeaCacheConfig { threshold: 0.1, ..d() }, "CCCCCSCSCSSC", "CCCCCSCSSCSC"),
    ]
}

/// Runs the engine like `WanPipeline` calls the transformer: per step a `cond` then an `uncond` call, each
/// handing its latents, then the block stack (`out = 2·in + 1`). Returns the decisions per context.
fn run(engine: &mut SeaCache<B>, sigma_of: impl Fn(usize) -> Option<f64>) -> (String, String) {
    let mut out = (String::new(), String::new());
    for step in 0..N {
        for context in ["cond", "uncond"] {
            let c = ctx(context, step, sigma_of(step));
            engine.observe_latents(&c, &latents(context, step));
            let input = JointStates::single(Tensor::<B, 3>::ones([2, 3, 4], &Default::default()) * (step as f32 + 1.0));
            let d = match engine.before_blocks(&c, &input) {
                TailPlan::Skip(_) => 'S',
                TailPlan::Compute => {
                    let output = input.clone().map(|x| x * 2.0 + 1.0);
                    engine.after_blocks(&c, &input, &output);
                    'C'
                }
            };
            if context == "cond" { &mut out.0 } else { &mut out.1 }.push(d);
        }
    }
    out
}

#[test]
fn sea_distances_equal_diffusers() {
    for (context, expected) in [("cond", &COND_DISTANCES), ("uncond", &UNCOND_DISTANCES)] {
        let mut engine = SeaCache::<B>::new(SeaCacheConfig::default());
        let ind: Vec<_> = (0..N).map(|i| engine.indicator(&latents(context, i), sigma(i))).collect();
        for i in 1..N {
            let d = distance(&ind[i], &ind[i - 1]);
            let e = expected[i - 1];
            // float32 indicators: the distances agree to ~1e-6 relative (the decisions exactly, below).
            assert!((d - e).abs() <= 1e-5 * e, "{context} step {i}: {d} vs diffusers {e}");
        }
    }
}

#[test]
fn gate_decisions_equal_diffusers() {
    for (config, cond, uncond) in cases() {
        let mut engine = SeaCache::<B>::new(config.clone());
        let (c, u) = run(&mut engine, |i| Some(sigma(i)));
        assert_eq!((c.as_str(), u.as_str()), (cond, uncond), "{config:?}");
        assert!(engine.fail_open().is_empty(), "{:?}", engine.fail_open());
        // The trace: one `blocks` decision per context and step.
        let stats = engine.stats();
        let trace: String = stats.steps.iter().map(|s| if s.contexts["cond"].blocks == Some(Decision::Skip) { 'S' } else { 'C' }).collect();
        assert_eq!(trace, cond);
        assert_eq!(stats.blocks().reused, cond.matches('S').count() + uncond.matches('S').count());
        // The same decisions from the distances alone.
        let from = |ds: &[f64]| schedule(&config, N, ds).iter().map(|&s| if s { 'S' } else { 'C' }).collect::<String>();
        assert_eq!((from(&COND_DISTANCES).as_str(), from(&UNCOND_DISTANCES).as_str()), (cond, uncond), "{config:?}");
        // A reset forgets everything: the same run decides the same.
        engine.reset();
        assert_eq!(run(&mut engine, |i| Some(sigma(i))), (cond.to_string(), uncond.to_string()));
    }
}

#[test]
fn without_a_sigma_every_call_computes_and_says_why() {
    let mut engine = SeaCache::<B>::new(SeaCacheConfig { threshold: 10.0, ..Default::default() });
    let (c, u) = run(&mut engine, |_| None);
    assert_eq!((c.as_str(), u.as_str()), ("CCCCCCCCCCCC", "CCCCCCCCCCCC"));
    assert_eq!(engine.fail_open(), &[FailOpen::NoSigma]);
    // A sigma outside [0, 1] is refused the same way.
    engine.reset();
    run(&mut engine, |_| Some(1.5));
    assert_eq!(engine.fail_open(), &[FailOpen::InvalidSchedule]);
    // A host that never hands its latents.
    engine.reset();
    let c = ctx("cond", 0, Some(0.5));
    let x = JointStates::single(Tensor::<B, 3>::ones([2, 3, 4], &Default::default()));
    assert!(matches!(engine.before_blocks(&c, &x), TailPlan::Compute));
    assert_eq!(engine.fail_open(), &[FailOpen::NoLatents]);
}

#[test]
fn non_adjacent_steps_reset_the_trajectory() {
    let config = SeaCacheConfig { threshold: 10.0, max_consecutive_cached: 0, ..Default::default() };
    let mut engine = SeaCache::<B>::new(config);
    let x = JointStates::single(Tensor::<B, 3>::ones([2, 3, 4], &Default::default()));
    let decide = |engine: &mut SeaCache<B>, step: usize| {
        let c = ctx("cond", step, Some(sigma(step)));
        engine.observe_latents(&c, &latents("cond", step));
        match engine.before_blocks(&c, &x) {
            TailPlan::Skip(_) => 'S',
            TailPlan::Compute => {
                engine.after_blocks(&c, &x, &x.clone().map(|t| t * 2.0));
                'C'
            }
        }
    };
    let seq: String = [0, 1, 2, 4, 5, 6].into_iter().map(|s| decide(&mut engine, s)).collect();
    // 0 retained; 1, 2 reuse; 4 is not 2 + 1: reset (history, indicator, counters) and compute, storing a new
    // residual and indicator; 5 and 6 reuse again.
    assert_eq!(seq, "CSSCSS");
    assert_eq!(engine.fail_open(), &[FailOpen::NonAdjacentSteps]);
}

/// `[1, 2, 3]` hidden states `scale · (j + 1)` and the stack `out = 3·in + (step + 1)·(j mod 2)`.
fn hidden(scale: f32) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new((0..6).map(|j| scale * (j as f32 + 1.0)).collect::<Vec<_>>(), [1, 2, 3]), &Default::default())
}

fn stack(step: usize, input: &Tensor<B, 3>) -> Tensor<B, 3> {
    let bias: Vec<f32> = (0..6).map(|j| (step as f32 + 1.0) * (j % 2) as f32).collect();
    input.clone() * 3.0 + Tensor::<B, 3>::from_data(TensorData::new(bias, [1, 2, 3]), &Default::default())
}

/// Runs `steps` calls of one context (the latents of the gate test, one sample) and returns the stack outputs.
fn outputs(config: SeaCacheConfig, steps: usize) -> Vec<(char, Vec<f32>)> {
    let mut engine = SeaCache::<B>::new(config);
    (0..steps)
        .map(|step| {
            let c = CallContext::new(StepContext { step, num_steps: steps, timestep: 0.0, sigma: Some(sigma(step)) }, Branch::Unguided, 1);
            let lat = latents("cond", step).slice([0..1]);
            engine.observe_latents(&c, &lat);
            let x = hidden(step as f32 + 1.0);
            let input = JointStates::single(x.clone());
            let (d, out) = match engine.before_blocks(&c, &input) {
                TailPlan::Skip(out) => ('S', out.hidden),
                TailPlan::Compute => {
                    let out = JointStates::single(stack(step, &x));
                    engine.after_blocks(&c, &input, &out);
                    ('C', out.hidden)
                }
            };
            (d, out.into_data().into_vec::<f32>().unwrap())
        })
        .collect()
}

/// The residual of a computed step `k` at element `j`: `out − in = 2·in + (k + 1)·(j mod 2)`, `in = (k + 1)(j + 1)`.
fn residual(k: usize, j: usize) -> f32 {
    let s = k as f32 + 1.0;
    2.0 * s * (j as f32 + 1.0) + s * (j % 2) as f32
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
}

#[test]
fn a_reuse_adds_the_latest_residual_or_extrapolates_it() {
    // Steps 0 and 1 retained, then reuses as long as allowed (the threshold never binds).
    let base = SeaCacheConfig { threshold: 1e9, retention_steps: 2, cache_end_steps: 0, max_consecutive_cached: 0, ..Default::default() };
    let input = |k: usize, j: usize| (k as f32 + 1.0) * (j as f32 + 1.0);
    // Order 0: in_k + r_1.
    let out = outputs(SeaCacheConfig { residual_order: 0, ..base.clone() }, 4);
    assert_eq!(out.iter().map(|o| o.0).collect::<String>(), "CCSS");
    for k in [2, 3] {
        let expected: Vec<f32> = (0..6).map(|j| input(k, j) + residual(1, j)).collect();
        assert!(close(&out[k].1, &expected), "order 0, step {k}: {:?} vs {expected:?}", out[k].1);
    }
    // Order 1: in_k + r_1 + (r_1 − r_0)·(k − 1)/(1 − 0).
    let out = outputs(SeaCacheConfig { residual_order: 1, ..base.clone() }, 4);
    assert_eq!(out.iter().map(|o| o.0).collect::<String>(), "CCSS");
    for k in [2, 3] {
        let expected: Vec<f32> =
            (0..6).map(|j| input(k, j) + residual(1, j) + (residual(1, j) - residual(0, j)) * (k as f32 - 1.0)).collect();
        assert!(close(&out[k].1, &expected), "order 1, step {k}: {:?} vs {expected:?}", out[k].1);
    }
    // Full runs at steps 0 and 2 (one reuse at most): step 3 extrapolates with scale (3 − 2)/(2 − 0) = 0.5.
    let out = outputs(SeaCacheConfig { retention_steps: 1, max_consecutive_cached: 1, ..base.clone() }, 4);
    assert_eq!(out.iter().map(|o| o.0).collect::<String>(), "CSCS");
    let expected: Vec<f32> = (0..6).map(|j| input(1, j) + residual(0, j)).collect();
    assert!(close(&out[1].1, &expected), "one full run: the latest residual");
    let expected: Vec<f32> = (0..6).map(|j| input(3, j) + residual(2, j) + (residual(2, j) - residual(0, j)) * 0.5).collect();
    assert!(close(&out[3].1, &expected), "{:?} vs {expected:?}", out[3].1);
}

#[test]
fn a_memory_budget_below_one_residual_computes_every_step() {
    let config = SeaCacheConfig { threshold: 1e9, max_consecutive_cached: 0, cache_end_steps: 0, memory_budget_bytes: Some(16), ..Default::default() };
    let out = outputs(config.clone(), 4);
    assert_eq!(out.iter().map(|o| o.0).collect::<String>(), "CCCC");
    // With room for the history (two residuals of 6 floats) it reuses, and says how much it held.
    let mut engine = SeaCache::<B>::new(SeaCacheConfig { memory_budget_bytes: Some(48), ..config });
    let c = CallContext::new(StepContext { step: 0, num_steps: 4, timestep: 0.0, sigma: Some(0.9) }, Branch::Unguided, 1);
    engine.observe_latents(&c, &latents("cond", 0));
    let x = JointStates::single(hidden(1.0));
    assert!(matches!(engine.before_blocks(&c, &x), TailPlan::Compute));
    engine.after_blocks(&c, &x, &JointStates::single(stack(0, &hidden(1.0))));
    assert_eq!(engine.peak_bytes(), 24);
}

#[test]
fn bfchw_latents_give_the_bcfhw_indicator() {
    let bcfhw = latents("cond", 3);
    let bfchw = bcfhw.clone().permute([0, 2, 1, 3, 4]);
    let mut a = SeaCache::<B>::new(SeaCacheConfig::default());
    let mut b = SeaCache::<B>::with_layout(SeaCacheConfig::default(), LatentLayout::Bfchw);
    assert_eq!(a.indicator(&bcfhw, 0.4), b.indicator(&bfchw, 0.4));
    // The memo hands the same indicator back for the same latents and sigma only.
    let first = a.indicator(&bcfhw, 0.4);
    assert!(Arc::ptr_eq(&first, &a.indicator(&bcfhw, 0.4)));
    assert!(!Arc::ptr_eq(&first, &a.indicator(&bcfhw, 0.5)));
}
