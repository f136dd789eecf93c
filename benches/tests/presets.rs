//! Presets mean a quality level: calibrated on the committed trained model (its 16 calibration prompts) and on
//! the Latte bench model (drawn prompts and noise), each preset meets its PSNR target on prompts and noise the
//! calibration never saw (on the trained model: all 48 other prompts), and each is at least as fast (by its
//! skip counts) as the safer one before it.
//! Values, not timings: PSNR and skip counts are deterministic.

use benches::backend::{device, Backend as B};
use benches::bench::{generate, psnr, BenchOptions};
use benches::calibrate::{calibrate, uncalibrated_prompts, CALIBRATION_PROMPTS, HELD_OUT_PROMPTS};
use benches::shapes::{shapes_dir, Prompts};
use benches::video_model::{rows, BenchModel, VideoModel};
use cache_engines::Preset;
use models::{HostTensor, LatteConfig, WeightSource};

const STEPS: usize = 20;

fn options(prompt: Option<(HostTensor, HostTensor)>, batch: usize) -> BenchOptions {
    BenchOptions { steps: STEPS, guidance: 6.0, repeats: 1, seed: 0, progress: false, prompt, batch }
}

/// Calibrates `model` on `cal`, then checks every preset on each video of `held_out`. Returns, per preset,
/// the worst held-out PSNR and the blocks it reused.
fn check_presets(model: &mut VideoModel<B>, cal: &BenchOptions, held_out: &[BenchOptions]) -> Vec<(Preset, f64, usize)> {
    let dev = device();
    let run = calibrate(model, cal, &dev).unwrap();
    let host = model.host_info();
    let work = model.work_model();
    let mut seen: Vec<(Preset, f64, usize)> = Preset::ALL.iter().map(|p| (*p, f64::INFINITY, 0)).collect();
    for (g, opts) in held_out.iter().enumerate() {
        let input = model.bench_inputs(opts, &dev).unwrap();
        let (plain, ..) = generate(model, &input, None).unwrap();
        let per = plain.len() / opts.batch;
        let mut last_speed = 1.0;
        for (p, worst, reused) in seen.iter_mut() {
            let preset = run.calibration.preset(*p, model.class_name(), &host, STEPS, 6.0).unwrap();
            assert!(preset.is_calibrated());
            let (data, stats, ..) = generate(model, &input, Some(preset.config())).unwrap();
            for (v, (a, b)) in data.chunks(per).zip(plain.chunks(per)).enumerate() {
                let db = psnr(a, b);
                assert!(db >= p.target_psnr_db(), "{p:?} ({}): {db:.1} dB on video {v} of held-out generation {g}", preset.config().label());
                *worst = worst.min(db);
            }
            let ideal = stats.ideal_speedup(&work, STEPS);
            assert!(ideal >= last_speed - 1e-9, "{p:?}: {ideal} slower than the safer preset's {last_speed}");
            last_speed = ideal;
            *reused += stats.blocks().reused;
        }
    }
    seen
}

#[test]
fn presets_meet_their_targets_on_every_prompt_the_calibration_does_not_see() {
    let dev = device();
    let mut model = VideoModel::<B>::from_dir(&shapes_dir(), &dev).unwrap();
    let VideoModel::CogVideoX { model: m, .. } = &model else { panic!("the trained model is a CogVideoX") };
    let table = Prompts::load(&shapes_dir(), m.config.max_text_seq_length).unwrap();
    let embed = |prompts: &[String]| {
        let pos = rows(prompts.iter().map(|p| table.embed(p).unwrap()).collect()).unwrap();
        let neg = rows(vec![table.negative(); prompts.len()]).unwrap();
        (pos, neg)
    };
    let calibration: Vec<String> = CALIBRATION_PROMPTS.iter().map(|p| p.to_string()).collect();
    let held = uncalibrated_prompts();
    assert_eq!(held.len(), 48);
    assert!(HELD_OUT_PROMPTS.iter().all(|p| held.iter().any(|h| h == p)));
    let cal = options(Some(embed(&calibration)), calibration.len());
    // In generations of 4 videos (generation g: prompts 4g..4g+4), each its own prompt and noise.
    let held: Vec<BenchOptions> = held.chunks(4).map(|c| options(Some(embed(c)), c.len())).collect();
    let seen = check_presets(&mut model, &cal, &held);
    eprintln!("trained model, 48 held-out prompts (preset, worst PSNR, blocks reused): {seen:?}");
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
