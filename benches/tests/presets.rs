//! Presets mean a quality level: calibrated on the committed trained model (its calibration prompts) and on the
//! Latte bench model (drawn prompts and noise), each preset meets its PSNR target on prompts and noise the
//! calibration never saw, and each is at least as fast (by its skip counts) as the safer one before it.
//! Values, not timings: PSNR and skip counts are deterministic.

use benches::backend::{device, Backend as B};
use benches::bench::{generate, psnr, BenchOptions};
use benches::calibrate::{calibrate, CALIBRATION_PROMPTS, HELD_OUT_PROMPTS};
use benches::shapes::{shapes_dir, Prompts};
use benches::video_model::{rows, BenchModel, VideoModel};
use cache_engines::Preset;
use models::{HostTensor, LatteConfig, WeightSource};

const STEPS: usize = 20;

fn options(prompt: Option<(HostTensor, HostTensor)>, batch: usize) -> BenchOptions {
    BenchOptions { steps: STEPS, guidance: 6.0, repeats: 1, seed: 0, progress: false, prompt, batch }
}

/// Calibrates `model` on `cal`, then checks every preset on each of `held_out` (one video each).
fn check_presets(model: &mut VideoModel<B>, cal: &BenchOptions, held_out: &[BenchOptions]) -> Vec<(Preset, f64, usize)> {
    let dev = device();
    let run = calibrate(model, cal, &dev).unwrap();
    let host = model.host_info();
    let work = model.work_model();
    let mut seen = Vec::new();
    for opts in held_out {
        let input = model.bench_inputs(opts, &dev).unwrap();
        let (plain, ..) = generate(model, &input, None).unwrap();
        let mut last_speed = 1.0;
        for p in Preset::ALL {
            let preset = run.calibration.preset(p, model.class_name(), &host, STEPS).unwrap();
            assert!(preset.is_calibrated());
            let (data, stats, ..) = generate(model, &input, Some(preset.config())).unwrap();
            let db = psnr(&data, &plain);
            assert!(db >= p.target_psnr_db(), "{p:?} ({}): {db:.1} dB on a held-out input", preset.config().label());
            let ideal = stats.ideal_speedup(&work, STEPS);
            assert!(ideal >= last_speed - 1e-9, "{p:?}: {ideal} slower than the safer preset's {last_speed}");
            last_speed = ideal;
            seen.push((p, db, stats.blocks().reused));
        }
    }
    seen
}

#[test]
fn presets_meet_their_targets_on_held_out_prompts_of_the_trained_model() {
    let dev = device();
    let mut model = VideoModel::<B>::from_dir(&shapes_dir(), &dev).unwrap();
    let VideoModel::CogVideoX { model: m, .. } = &model else { panic!("the trained model is a CogVideoX") };
    let table = Prompts::load(&shapes_dir(), m.config.max_text_seq_length).unwrap();
    let embed = |prompts: &[&str]| {
        let pos = rows(prompts.iter().map(|p| table.embed(p).unwrap()).collect()).unwrap();
        let neg = rows(vec![table.negative(); prompts.len()]).unwrap();
        (pos, neg)
    };
    assert!(HELD_OUT_PROMPTS.iter().all(|p| !CALIBRATION_PROMPTS.contains(p)));
    let cal = options(Some(embed(&CALIBRATION_PROMPTS)), CALIBRATION_PROMPTS.len());
    let held: Vec<BenchOptions> = HELD_OUT_PROMPTS.iter().map(|p| options(Some(embed(&[*p])), 1)).collect();
    let seen = check_presets(&mut model, &cal, &held);
    eprintln!("trained model, held-out (preset, PSNR, skipped): {seen:?}");
}

#[test]
fn presets_meet_their_targets_on_held_out_inputs_of_the_latte_bench_model() {
    let dev = device();
    let mut model = VideoModel::<B>::latte(&LatteConfig::bench_latte(), &mut WeightSource::random(0), &dev).unwrap();
    // Calibration: four drawn prompts and noises (seed + 1000); held out: the bench's own input (seed 0).
    let cal = options(None, benches::calibrate::CALIBRATION_VIDEOS);
    let seen = check_presets(&mut model, &cal, &[options(None, 1)]);
    // The skipping presets skip whole steps.
    assert!(seen.iter().any(|(_, _, skipped)| *skipped > 0), "{seen:?}");
    eprintln!("Latte bench model, held-out (preset, PSNR, skipped): {seen:?}");
}
