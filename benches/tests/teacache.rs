//! TeaCache on the parity cases' models beyond the replay itself (state across generations, budgets, the
//! threshold that never skips), and the calibration's measurements against independent references: MagCache's
//! own calibration (itself checked against diffusers') and the cases' decisions from the Python port.

use benches::backend::{device, Backend as B};
use benches::parity::{committed_cases_dir, load_denoise_case, DenoiseCase};
use cache_core::{CacheStrategy, Decision, Identity};
use cache_engines::{build, CacheConfig, Calibrator, MagCache, MagCacheConfig, TeaCache, TeaCacheConfig};
use models::{DenoiseOptions, HostTensor};

fn case(name: &str) -> DenoiseCase<B> {
    load_denoise_case::<B>(&committed_cases_dir().join(name), &device()).unwrap()
}

fn run(c: &mut DenoiseCase<B>, strategy: &mut dyn CacheStrategy<B>) -> Vec<f32> {
    let out = c.model.denoise(c.input.clone(), strategy, DenoiseOptions::default()).unwrap();
    HostTensor::from_tensor(out).data
}

fn teacache(c: &DenoiseCase<B>) -> TeaCacheConfig {
    match &c.cache {
        CacheConfig::TeaCache(t) => t.clone(),
        other => panic!("not a TeaCache case: {other:?}"),
    }
}

#[test]
fn a_second_generation_equals_a_fresh_engines_bit_for_bit() {
    for name in ["teacache_sincos", "latte_teacache", "teacache_noguidance"] {
        let mut c = case(name);
        let mut engine = build::<B>(&c.cache, &c.model.host_info()).unwrap();
        let first = run(&mut c, engine.as_mut());
        let skips = engine.stats().blocks().reused;
        let second = run(&mut c, engine.as_mut());
        assert_eq!(first, second, "{name}");
        assert!(skips > 0 && engine.stats().blocks().reused == skips, "{name}");
    }
}

#[test]
fn a_threshold_that_never_skips_and_a_tiny_budget_equal_no_cache() {
    for name in ["teacache_sincos", "latte_teacache_noguidance"] {
        let mut c = case(name);
        let plain = run(&mut c, &mut Identity);
        let cfg = teacache(&c);
        // Threshold 0 with a polynomial ≥ 0 on the measured range: acc < 0 never holds.
        let never = TeaCacheConfig { rel_l1_thresh: 0.0, coefficients: vec![1.0, 0.0], ..cfg.clone() };
        let mut e = TeaCache::<B>::new(never);
        assert_eq!(run(&mut c, &mut e), plain, "{name}");
        assert_eq!(e.stats().blocks().reused, 0);
        // Unlimited it holds the residuals (> 1000 B) and changes the result; at 1000 B it holds nothing and
        // computes every step.
        let mut e = TeaCache::<B>::new(cfg.clone());
        assert_ne!(run(&mut c, &mut e), plain, "{name}");
        assert!(e.peak_bytes() > 1000, "{name}: {}", e.peak_bytes());
        let mut e = TeaCache::<B>::new(TeaCacheConfig { memory_budget_bytes: Some(1000), ..cfg });
        assert_eq!(run(&mut c, &mut e), plain, "{name}");
        assert!(e.peak_bytes() <= 1000);
    }
}

#[test]
fn the_schedule_of_the_calibrated_signal_is_the_python_ports_decisions() {
    // CogVideoX's measured tensor is the timestep embedding: the decisions follow from the calibration's
    // signal changes alone. Measured by the Calibrator on an uncached run, fed to `cache_teacache::schedule`,
    // they must be the diffusers-based port's (trace.json).
    for name in ["teacache_sincos", "teacache_cogvideox_2b", "teacache_noguidance"] {
        let mut c = case(name);
        let cfg = teacache(&c);
        let mut meter = Calibrator::<B>::new();
        run(&mut c, &mut meter);
        assert_eq!(meter.signal_changes.len(), c.input.num_inference_steps - 1, "{name}");
        let ours = cache_engines::teacache_schedule(&cfg, &meter.signal_changes);
        let theirs: Vec<bool> = c.trace.as_ref().unwrap().iter().map(|s| s.blocks == Some(Decision::Skip)).collect();
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn the_calibrators_magnitude_ratios_are_magcaches_calibration() {
    // MagCache's calibration reproduces diffusers' printed ratios (engines.rs); the calibrator measures the same
    // thing in the same run.
    for name in ["magcache_sincos", "latte_magcache"] {
        let mut c = case(name);
        let n = c.input.num_inference_steps;
        let mut mag = MagCache::<B>::new(MagCacheConfig::calibration(n));
        run(&mut c, &mut mag);
        let mut meter = Calibrator::<B>::new();
        run(&mut c, &mut meter);
        let theirs = mag.calibrated_ratios().unwrap();
        assert_eq!(meter.mag_ratios.len(), n);
        for (i, (o, t)) in meter.mag_ratios.iter().zip(theirs).enumerate() {
            assert!((o - *t as f64).abs() < 1e-6, "{name} step {i}: {o} vs {t}");
        }
        assert_eq!((meter.first_block_changes.len(), meter.output_changes.len()), (n - 1, n - 1));
    }
}
