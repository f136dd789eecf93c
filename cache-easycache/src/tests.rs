//! Hand-derived runs of the rule (module header) on constant tensors, where `L(t)` is the constant's magnitude.

use super::*;
use burn::tensor::Tensor;
use burn_ndarray::NdArray;
use cache_core::StepContext;

type B = NdArray<f32>;

fn ctx(step: usize, branch: Branch) -> CallContext {
    CallContext::new(StepContext::new(step, 6, 0.0), branch, 1)
}

fn full(v: f32, channels: usize) -> Tensor<B, 5> {
    Tensor::full([1, channels, 1, 1, 2], v, &Default::default())
}

fn value(t: &Tensor<B, 5>) -> Vec<f32> {
    t.clone().into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

/// One call: the engine's reuse, or the model `output(x)` and `after_call`. Returns ('C' | 'S', output).
fn call(e: &mut EasyCache<B>, c: &CallContext, x: Tensor<B, 5>, output: impl Fn(&Tensor<B, 5>) -> Tensor<B, 5>) -> (char, Tensor<B, 5>) {
    match e.reuse_call(c, &x) {
        Some(out) => ('S', out),
        None => {
            let o = output(&x);
            e.after_call(c, &x, &o);
            ('C', o)
        }
    }
}

const XS: [f32; 6] = [1.0, 2.0, 2.5, 3.0, 3.2, 4.0];

fn config() -> EasyCacheConfig {
    EasyCacheConfig { thresh: 0.45, ret_steps: 1, num_steps: 6 }
}

#[test]
fn one_call_per_step_follows_the_rule_by_hand() {
    // o = 3x, so every residual is 2x. Step 0 warms up; step 1 has no k yet (computes; k = |6 − 3| / |2 − 1| = 3);
    // step 2: acc = 3 · 0.5 / 6 = 0.25 < 0.45, reuse 2.5 + 4; step 3: acc = 0.5, compute (acc = 0, k = 3 / 1);
    // step 4: acc = 3 · 0.2 / 9 ≈ 0.067, reuse 3.2 + 6; step 5 is the last step: compute.
    let mut e = EasyCache::<B>::new(config());
    let mut decisions = String::new();
    for (i, &x) in XS.iter().enumerate() {
        let (d, out) = call(&mut e, &ctx(i, Branch::Unguided), full(x, 1), |x| x.clone() * 3.0);
        decisions.push(d);
        let want = match i {
            2 => 6.5,
            4 => 9.2,
            _ => 3.0 * x,
        };
        for v in value(&out) {
            assert!((v - want).abs() < 1e-6, "step {i}: {v} vs {want}");
        }
        if i == 4 {
            let (acc, k) = e.accumulator();
            assert!((acc - 0.6 / 9.0).abs() < 1e-6 && (k.unwrap() - 3.0).abs() < 1e-6, "{acc} {k:?}");
        }
    }
    assert_eq!(decisions, "CCSCSC");
    let trace: String = e.stats().steps.iter().map(|s| if s.blocks == Some(Decision::Skip) { 'S' } else { 'C' }).collect();
    assert_eq!(trace, decisions);
}

#[test]
fn the_unconditional_call_repeats_its_steps_decision_with_its_own_residual() {
    // Cond as above; uncond o = x + 1 (residual 1) and never measured: it skips exactly when cond did.
    let mut e = EasyCache::<B>::new(config());
    let (mut cond, mut uncond) = (String::new(), String::new());
    for (i, &x) in XS.iter().enumerate() {
        cond.push(call(&mut e, &ctx(i, Branch::Cond), full(x, 1), |x| x.clone() * 3.0).0);
        let (d, out) = call(&mut e, &ctx(i, Branch::Uncond), full(x, 1), |x| x.clone() + 1.0);
        uncond.push(d);
        assert!(value(&out).iter().all(|v| (v - (x + 1.0)).abs() < 1e-6), "step {i}");
    }
    assert_eq!((cond.as_str(), uncond.as_str()), ("CCSCSC", "CCSCSC"));
    let steps = e.stats().steps;
    assert_eq!(steps[2].contexts["uncond"].blocks, Some(Decision::Skip));
    assert_eq!(steps[3].contexts["cond"].blocks, Some(Decision::Compute));
}

#[test]
fn extra_output_channels_are_repeated_and_not_measured() {
    // Latte's learned variance: 1 latent channel in, 2 out; the second is 100 + step, far larger than the first,
    // so measuring it would change k and the norms. Decisions equal the one-channel run.
    let mut e = EasyCache::<B>::new(config());
    let mut decisions = String::new();
    for (i, &x) in XS.iter().enumerate() {
        let model = |x: &Tensor<B, 5>| Tensor::cat(vec![x.clone() * 3.0, full(100.0 + i as f32, 1)], 1);
        let (d, out) = call(&mut e, &ctx(i, Branch::Cfg(cache_core::CfgOrder::UncondFirst)), full(x, 1), model);
        decisions.push(d);
        let extra = value(&out.narrow(1, 1, 1));
        let want = if i == 2 || i == 4 { 100.0 + i as f32 - 1.0 } else { 100.0 + i as f32 };
        assert!(extra.iter().all(|v| *v == want), "step {i}: {extra:?}");
    }
    assert_eq!(decisions, "CCSCSC");
}

#[test]
fn a_zero_threshold_never_reuses_and_a_reset_starts_over() {
    let mut e = EasyCache::<B>::new(EasyCacheConfig { thresh: 0.0, ..config() });
    for (i, &x) in XS.iter().enumerate() {
        assert_eq!(call(&mut e, &ctx(i, Branch::Unguided), full(x, 1), |x| x.clone() * 3.0).0, 'C');
    }
    let mut e = EasyCache::<B>::new(config());
    for round in 0..2 {
        let d: String = XS.iter().enumerate().map(|(i, &x)| call(&mut e, &ctx(i, Branch::Unguided), full(x, 1), |x| x.clone() * 3.0).0).collect();
        assert_eq!(d, "CCSCSC", "round {round}");
        e.reset();
    }
}

#[test]
fn values_and_step_counts_are_checked() {
    assert!(matches!(EasyCacheConfig { thresh: -0.1, ..config() }.validate(), Err(ConfigError::Negative { field: "thresh", .. })));
    assert!(matches!(EasyCacheConfig { thresh: f64::NAN, ..config() }.validate(), Err(ConfigError::Negative { .. })));
    assert!(matches!(EasyCacheConfig { num_steps: 0, ..config() }.validate(), Err(ConfigError::ZeroSkipRange { .. })));
    assert!(matches!(config().check_steps(8), Err(ConfigError::StepMismatch { configured: 6, generation: 8, .. })));
    config().check_steps(6).unwrap();
}

#[test]
fn the_change_is_measured_from_the_previous_step_not_the_last_computed_one() {
    // thresh 0.6 on 1, 2, 2.5, 3, 3.1, 4 (o = 3x, k = 3 from step 1): step 2 acc 0.25; step 3 adds
    // 3 · |3 − 2.5| / 6 = 0.25 (0.5 < 0.6: reuse; measured from step 1's computed input it would add 0.5 and
    // compute); step 4 adds 3 · 0.1 / 6 = 0.05 (0.55: reuse); step 5 is the last.
    let mut e = EasyCache::<B>::new(EasyCacheConfig { thresh: 0.6, ..config() });
    let xs = [1.0, 2.0, 2.5, 3.0, 3.1, 4.0];
    let mut decisions = String::new();
    for (i, &x) in xs.iter().enumerate() {
        let (d, out) = call(&mut e, &ctx(i, Branch::Unguided), full(x, 1), |x| x.clone() * 3.0);
        decisions.push(d);
        let want = if d == 'S' { x + 4.0 } else { 3.0 * x };
        assert!(value(&out).iter().all(|v| (v - want).abs() < 1e-6), "step {i}");
    }
    assert_eq!(decisions, "CCSSSC");
}
