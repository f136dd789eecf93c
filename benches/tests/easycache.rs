//! EasyCache on the parity cases' models beyond the replay itself: state across generations, the threshold
//! that never reuses, and what it holds.

use benches::backend::{device, Backend as B};
use benches::parity::{committed_cases_dir, load_denoise_case, DenoiseCase};
use cache_core::{CacheStrategy, Identity};
use cache_engines::{build, CacheConfig, EasyCache, EasyCacheConfig};
use models::{DenoiseOptions, HostTensor};

fn case(name: &str) -> DenoiseCase<B> {
    load_denoise_case::<B>(&committed_cases_dir().join(name), &device()).unwrap()
}

fn run(c: &mut DenoiseCase<B>, strategy: &mut dyn CacheStrategy<B>) -> Vec<f32> {
    let out = c.model.denoise(c.input.clone(), strategy, DenoiseOptions::default()).unwrap();
    HostTensor::from_tensor(out).data
}

fn easycache(c: &DenoiseCase<B>) -> EasyCacheConfig {
    match &c.cache {
        CacheConfig::EasyCache(e) => e.clone(),
        other => panic!("not an EasyCache case: {other:?}"),
    }
}

#[test]
fn a_second_generation_equals_a_fresh_engines_bit_for_bit() {
    for name in ["easycache_cogvideox", "latte_easycache"] {
        let mut c = case(name);
        let mut engine = build::<B>(&c.cache, &c.model.host_info()).unwrap();
        let first = run(&mut c, engine.as_mut());
        let reused = engine.stats().blocks().reused;
        let second = run(&mut c, engine.as_mut());
        assert_eq!(first, second, "{name}");
        assert!(reused > 0 && engine.stats().blocks().reused == reused, "{name}");
    }
}

#[test]
fn a_zero_threshold_equals_no_cache_and_the_cases_threshold_does_not() {
    for name in ["easycache_cogvideox", "latte_easycache"] {
        let mut c = case(name);
        let plain = run(&mut c, &mut Identity);
        let cfg = easycache(&c);
        let mut never = EasyCache::<B>::new(EasyCacheConfig { thresh: 0.0, ..cfg.clone() });
        assert_eq!(run(&mut c, &mut never), plain, "{name}");
        assert_eq!(never.stats().blocks().reused, 0, "{name}");
        // It holds the leading branch's previous input, anchor and output, and each branch's residual: at least
        // four latents-sized tensors.
        let latents = c.input.latents.dims().iter().product::<usize>() * 4;
        let mut e = EasyCache::<B>::new(cfg);
        assert_ne!(run(&mut c, &mut e), plain, "{name}");
        assert!(e.peak_bytes() >= 4 * latents, "{name}: {} < 4 × {latents}", e.peak_bytes());
    }
}
