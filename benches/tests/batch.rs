//! Batched generation: several prompts and several videos per prompt in one loop. Rows never mix: without a
//! cache, and with every engine whose decisions do not look at the data (or look at each sample's own data),
//! each video equals its own batch-1 run; diffusers' pooled First Block Cache is the one rule that couples
//! videos, and the per-sample option decides each sample on its own change.

use benches::backend::{device, Backend as B, TOLERANCE_FLOOR};
use benches::parity::{committed_cases_dir, load_denoise_case, rel_l2, DenoiseCase};
use benches::video_model::VideoModel;
use cache_core::CacheStrategy;
use cache_engines::{build, CacheConfig, FirstBlockCache, FirstBlockCacheConfig, Identity};
use models::{DenoiseInput, DenoiseOptions, HostTensor};

/// On wgpu and CUDA the tests of this file run one at a time: they share the device, and
/// [`repeated_generations_leave_no_device_memory_behind`] reads its memory. Nothing on ndarray.
fn exclusive() -> Option<std::sync::MutexGuard<'static, ()>> {
    static DEVICE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    cfg!(not(feature = "ndarray")).then(|| DEVICE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn case(name: &str) -> DenoiseCase<B> {
    load_denoise_case::<B>(&committed_cases_dir().join(name), &device()).unwrap()
}

fn run(model: &mut VideoModel<B>, input: DenoiseInput<B>, strategy: &mut dyn CacheStrategy<B>) -> HostTensor {
    HostTensor::from_tensor(model.denoise(input, strategy, DenoiseOptions::default()).unwrap())
}

/// Video `j` of a batched input alone: its latents row and its prompt's embeddings.
fn alone(input: &DenoiseInput<B>, j: usize) -> DenoiseInput<B> {
    let b = j / input.num_videos_per_prompt;
    DenoiseInput {
        latents: input.latents.clone().narrow(0, j, 1),
        prompt_embeds: input.prompt_embeds.clone().narrow(0, b, 1),
        pooled_prompt_embeds: None,
        negative_pooled_prompt_embeds: None,
        negative_prompt_embeds: input.negative_prompt_embeds.clone().map(|n| n.narrow(0, b, 1)),
        num_videos_per_prompt: 1,
        ..input.clone()
    }
}

fn row(t: &HostTensor, j: usize) -> &[f32] {
    let n = t.data.len() / t.shape[0];
    &t.data[j * n..(j + 1) * n]
}

/// The batch with a fresh engine of `cfg`, and each video alone with a fresh one; rel_l2 per video.
fn batch_vs_alone(c: &mut DenoiseCase<B>, cfg: &CacheConfig) -> Vec<f64> {
    let host = c.model.host_info();
    let batch = run(&mut c.model, c.input.clone(), build::<B>(cfg, &host).unwrap().as_mut());
    (0..c.input.videos())
        .map(|j| {
            let one = run(&mut c.model, alone(&c.input, j), build::<B>(cfg, &host).unwrap().as_mut());
            rel_l2(row(&batch, j), &one.data)
        })
        .collect()
}

fn tolerance() -> f64 {
    1e-5f64.max(TOLERANCE_FLOOR)
}

#[test]
fn a_batch_of_different_prompts_equals_each_video_alone_without_a_cache() {
    let _device = exclusive();
    // Two prompts under guidance and unguided; two prompts × two videos on CogVideoX and Latte.
    for name in ["batch_denoise_sincos", "batch_denoise_noguidance", "batch_denoise_rotary_videos2", "latte_batch_videos2"] {
        let mut c = case(name);
        assert!(c.input.prompt_embeds.dims()[0] == 2, "{name}: two prompts");
        let videos = c.input.videos();
        let batch = run(&mut c.model, c.input.clone(), &mut Identity);
        for j in 0..videos {
            let one = run(&mut c.model, alone(&c.input, j), &mut Identity);
            let err = rel_l2(row(&batch, j), &one.data);
            assert!(err < tolerance(), "{name}: video {j} of {videos} differs from its batch-1 run: rel_l2 {err:.2e}");
        }
        // The videos really differ (different prompts, different noise): equal rows would hide a mix-up.
        assert!(rel_l2(row(&batch, 0), row(&batch, videos - 1)) > 0.05, "{name}: first and last video");
    }
}

#[test]
fn engines_that_decide_without_the_data_never_mix_videos() {
    let _device = exclusive();
    // PAB, FasterCache (its frequency CFG cache per row), MagCache (ratios only), TaylorSeer: in a batch each
    // video equals its own run with the same engine, so no row ever takes another row's cached tensors.
    for name in ["batch_pab", "batch_fastercache", "batch_magcache", "batch_taylorseer", "latte_batch_fastercache"] {
        let mut c = case(name);
        let cfg = c.cache.clone();
        for (j, err) in batch_vs_alone(&mut c, &cfg).into_iter().enumerate() {
            assert!(err < tolerance(), "{name}: video {j} with {} differs from its own run: rel_l2 {err:.2e}", cfg.label());
        }
    }
}

/// The case's FBC threshold.
fn threshold(c: &DenoiseCase<B>) -> f64 {
    match &c.cache {
        CacheConfig::FirstBlockCache(f) => f.threshold,
        other => panic!("not an FBC case: {}", other.label()),
    }
}

#[test]
fn pooled_fbc_couples_videos_and_per_sample_fbc_does_not() {
    let _device = exclusive();
    for name in ["batch_fbc", "latte_batch_fbc"] {
        let mut c = case(name);
        let t = threshold(&c);
        let per_sample = FirstBlockCacheConfig { threshold: t, per_sample: true, ..Default::default() };

        // Per sample: every sample (a CFG half of a video) skips exactly when its own change is not above the
        // threshold, and at some step the samples decide differently.
        let mut engine = FirstBlockCache::<B>::new(per_sample.clone());
        let out = run(&mut c.model, c.input.clone(), &mut engine);
        let samples = 2 * c.input.videos();
        let mut split = 0;
        for d in engine.decisions().iter().filter(|d| !d.changes.is_empty()) {
            assert_eq!((d.changes.len(), d.skips.len()), (samples, samples), "{name}: step {}", d.step);
            for (change, skip) in d.changes.iter().zip(&d.skips) {
                assert_eq!(*skip, *change as f64 <= t, "{name}: step {} change {change} threshold {t}", d.step);
            }
            split += usize::from(d.skips.iter().any(|&s| s) && d.skips.iter().any(|&s| !s));
        }
        assert!(split > 0, "{name}: the samples' changes never fell on both sides of {t}: {:?}", engine.decisions());

        // ... so each video's result does not depend on its batch-mates.
        let cfg = CacheConfig::FirstBlockCache(per_sample);
        for (j, err) in batch_vs_alone(&mut c, &cfg).into_iter().enumerate() {
            assert!(err < tolerance(), "{name}: per-sample video {j} differs from its own run: rel_l2 {err:.2e}");
        }

        // Pooled (diffusers): one decision per step for the whole batch, from one batch-wide ratio; some video
        // alone decides differently (the case is built so).
        let pooled_cfg = FirstBlockCacheConfig { threshold: t, ..Default::default() };
        let mut pooled = FirstBlockCache::<B>::new(pooled_cfg.clone());
        let pooled_out = run(&mut c.model, c.input.clone(), &mut pooled);
        assert!(pooled.decisions().iter().all(|d| d.skips.len() == 1), "{name}: pooled decides once per call");
        let skips = |e: &FirstBlockCache<B>| e.decisions().iter().map(|d| d.skips[0]).collect::<Vec<_>>();
        let coupled = (0..c.input.videos()).any(|j| {
            let mut own = FirstBlockCache::<B>::new(pooled_cfg.clone());
            run(&mut c.model, alone(&c.input, j), &mut own);
            skips(&own) != skips(&pooled)
        });
        assert!(coupled, "{name}: every video alone decides as the pooled batch: {:?}", skips(&pooled));
        assert!(rel_l2(&out.data, &pooled_out.data) > 1e-4, "{name}: per-sample and pooled runs should differ");
    }
}

#[test]
fn a_batch_that_the_prompts_do_not_describe_is_a_typed_error() {
    let _device = exclusive();
    let mut c = case("batch_denoise_rotary_videos2");
    let mut input = c.input.clone();
    // 4 latents rows, 2 prompts: 3 videos per prompt would need 6.
    input.num_videos_per_prompt = 3;
    let err = c.model.denoise(input, &mut Identity, DenoiseOptions::default()).unwrap_err();
    assert!(matches!(err, models::ModelError::Shape(_)), "{err}");
    assert!(err.to_string().contains("4 rows"), "{err}");
    let mut input = c.input.clone();
    input.num_videos_per_prompt = 0;
    assert!(c.model.denoise(input, &mut Identity, DenoiseOptions::default()).is_err());
}

#[test]
fn bench_inputs_refuse_an_empty_or_uneven_batch() {
    let _device = exclusive();
    use benches::bench::BenchOptions;
    use benches::video_model::BenchModel;
    let c = case("batch_denoise_sincos");
    let opts = |batch, prompt| BenchOptions { steps: 2, guidance: 6.0, repeats: 1, seed: 0, progress: false, prompt, batch };
    assert!(c.model.bench_inputs(&opts(0, None), &device()).unwrap_err().contains("at least one video"));
    // Two prompts, three videos.
    let two = Some((HostTensor::from_tensor(c.input.prompt_embeds.clone()), HostTensor::from_tensor(c.input.negative_prompt_embeds.clone().unwrap())));
    let err = c.model.bench_inputs(&opts(3, two.clone()), &device()).unwrap_err();
    assert!(err.contains("3 videos") && err.contains("2 prompts"), "{err}");
    // Four videos over two prompts: two each, from each video's own seed.
    let input = c.model.bench_inputs(&opts(4, two), &device()).unwrap();
    assert_eq!((input.videos(), input.num_videos_per_prompt), (4, 2));
    let one = c.model.bench_inputs(&opts(1, None), &device()).unwrap();
    let first = HostTensor::from_tensor(input.latents.narrow(0, 0, 1));
    assert_eq!(first, HostTensor::from_tensor(one.latents), "video 0 keeps the batch-1 run's noise");
}

/// wgpu and CUDA: a generation leaves nothing on the device. After the first generation (which compiles,
/// tunes and fills the pool), each further one with a fresh cache engine ends with the same live bytes and a
/// pool no larger (it may hand back pages that earlier tests left; a memory-pool leak was reported against
/// burn 0.21's pre-releases, tracel-ai/burn#4792). Not built on ndarray, whose tensors are host allocations.
#[cfg(not(feature = "ndarray"))]
#[test]
fn repeated_generations_leave_no_device_memory_behind() {
    let _device = exclusive();
    use benches::backend::device_memory;
    let mut c = case("batch_denoise_sincos");
    let host = c.model.host_info();
    let cfg = CacheConfig::FirstBlockCache(FirstBlockCacheConfig { threshold: 0.2, ..Default::default() });
    let mut after = Vec::new();
    for _ in 0..4 {
        let out = run(&mut c.model, c.input.clone(), build::<B>(&cfg, &host).unwrap().as_mut());
        drop(out);
        after.push(device_memory::<B>(&device()).expect("wgpu and CUDA report their device memory"));
    }
    let first = after[1];
    assert!(first.in_use > 0 && first.reserved >= first.in_use, "{first:?}");
    for (i, m) in after.iter().enumerate().skip(2) {
        assert_eq!(m.in_use, first.in_use, "live device bytes after generation {} differ from after generation 2: {after:?}", i + 1);
        assert!(m.reserved <= first.reserved, "the pool grew after generation {}: {after:?}", i + 1);
    }
}
