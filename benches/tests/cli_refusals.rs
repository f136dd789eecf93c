//! Nothing the command-line tool accepts is ignored, and nothing a user gives it panics: zero and nonsense
//! numbers, flags a run would not use, and a user's model directory with a bad prompt table are refused with a
//! message naming the flag or value, exit status 1 (2 where clap refuses), never the panic status 101.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use models::HostTensor;

fn ditcache(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ditcache")).args(args).output().unwrap()
}

/// Asserts the run was refused (exit status `code`) with a message containing every one of `expected`.
fn assert_refused(args: &[&str], code: i32, expected: &[&str]) {
    let out = ditcache(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: no {e:?} in {err}");
    }
}

/// A strategy file that caches nothing, in `dir`.
fn none_config(dir: &Path) -> String {
    let p = dir.join("none.json");
    std::fs::write(&p, r#"{"type": "none"}"#).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn forward_refuses_zero_repeats_and_an_empty_batch() {
    assert_refused(&["forward", "--repeats", "0"], 1, &["--repeats must be at least 1"]);
    assert_refused(&["forward", "--batch", "0", "--repeats", "1"], 1, &["--batch must be at least 1"]);
}

#[test]
fn zero_and_nonsense_numbers_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let none = none_config(dir.path());
    // Cheap runs where today's code would go on: one step, no calibration.
    let bench = ["bench", "--repeats", "1", "--strategy", none.as_str()];
    let sample = ["sample", "--uncalibrated", "--strategy", "speed"];
    let tune = ["tune", "--min-psnr", "30"];
    let calibrate = ["calibrate", "--model", "s", "--latent-size", "2,4,4"];
    for cmd in [&bench[..], &sample, &tune, &calibrate] {
        let with = |extra: &[&'static str]| [cmd, extra].concat();
        assert_refused(&with(&["--steps", "0"]), 1, &["--steps must be at least 1"]);
        assert_refused(&with(&["--steps", "1", "--batch", "0"]), 1, &["--batch must be at least 1"]);
        assert_refused(&with(&["--steps", "1", "--guidance", "NaN"]), 1, &["--guidance must be a finite number", "NaN"]);
    }
    assert_refused(&[&sample[..], &["--steps", "1", "--scale", "0"]].concat(), 1, &["--scale must be at least 1"]);
    assert_refused(&["tune", "--steps", "2", "--min-psnr", "NaN"], 1, &["--min-psnr", "NaN"]);
    assert_refused(&["tune", "--steps", "2", "--max-rel-l2=-1"], 1, &["--max-rel-l2 must be at least 0", "-1"]);
    let (cal, mag) = (dir.path().join("c.toml"), dir.path().join("m.toml"));
    let (cal, mag) = (cal.to_str().unwrap(), mag.to_str().unwrap());
    let threshold = [&calibrate[..], &["--steps", "2", "--out", cal, "--magcache-out", mag, "--threshold", "NaN"]].concat();
    assert_refused(&threshold, 1, &["--threshold", "NaN"]);
    // Refused before calibrating: nothing was written.
    assert!(!Path::new(cal).exists());
}

#[test]
fn inputs_too_large_for_any_allocation_are_refused_naming_batch_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let none = none_config(dir.path());
    let bench = ["bench", "--steps", "1", "--repeats", "1", "--strategy", none.as_str()];
    let huge = "100000000000000000";
    assert_refused(&["forward", "--repeats", "1", "--batch", huge], 1, &["--batch 100000000000000000", "4x16x16x16 latents"]);
    assert_refused(&[&bench[..], &["--batch", huge]].concat(), 1, &["--batch 100000000000000000", "4x4x16x16 latents"]);
    let size = [&bench[..], &["--model", "s", "--latent-size", "1000000,1000000,1000000"]].concat();
    assert_refused(&size, 1, &["--batch 1", "1000000x16x1000000x1000000 latents"]);
    // More latent frames than the video's frame count can hold.
    let lat = format!("{},4,4", usize::MAX);
    let frames = [&bench[..], &["--model", "s", "--latent-size", &lat]].concat();
    assert_refused(&frames, 1, &["--latent-size", &usize::MAX.to_string(), "latent frames"]);
}

#[test]
fn calibration_flags_a_run_would_not_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let none = none_config(dir.path());
    let cal = dir.path().join("cal.toml");
    let cal = cal.to_str().unwrap();
    let bench = ["bench", "--steps", "1", "--repeats", "1", "--strategy", none.as_str()];
    assert_refused(&[&bench[..], &["--calibration", cal]].concat(), 1, &["--calibration", cal, "--strategy files"]);
    assert_refused(&[&bench[..], &["--uncalibrated"]].concat(), 1, &["--uncalibrated", "--strategy files"]);
    let sample = ["sample", "--steps", "1", "--strategy", none.as_str()];
    assert_refused(&[&sample[..], &["--uncalibrated"]].concat(), 1, &["--uncalibrated", &none, "presets only"]);
    assert_refused(&[&sample[..], &["--calibration", cal]].concat(), 1, &["--calibration", cal, &none, "config file"]);
    // A preset takes one or the other.
    assert_refused(&["sample", "--steps", "1", "--uncalibrated", "--calibration", cal], 2, &["--uncalibrated", "--calibration"]);
    // A mistyped preset is named as neither a preset nor a file.
    assert_refused(&["sample", "--steps", "1", "--strategy", "qualty"], 1, &["--strategy qualty", "not a preset"]);
    // The trained model calibrates on its prompt table, one video per prompt: a batch is refused, naming both.
    assert_refused(&["calibrate", "--steps", "2", "--batch", "3", "--out", cal], 1, &["--batch 3", "16 videos", "does not apply"]);
    let two = ["--prompt", "shape=disc", "--prompt", "shape=square"];
    assert_refused(&[&["calibrate", "--steps", "2", "--batch", "4", "--out", cal][..], &two].concat(), 1, &["--batch 4", "2 videos"]);
    // MagCache's threshold is only for --magcache-out's config.
    assert_refused(&["calibrate", "--steps", "2", "--threshold", "0.1", "--out", cal], 2, &["--magcache-out"]);
    assert!(!Path::new(cal).exists());
}

#[test]
fn model_flags_the_model_would_not_use_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let none = none_config(dir.path());
    // A model directory has its own weights.
    assert_refused(&["bench", "--steps", "1", "--repeats", "1", "--seed", "3", "--strategy", &none], 1, &["--seed 3", "shapes", "own weights"]);
    // A model without a prompt table draws its prompt embeddings.
    let s = ["bench", "--model", "s", "--latent-size", "2,4,4", "--steps", "1", "--repeats", "1", "--strategy", &none];
    assert_refused(&[&s[..], &["--prompt", "shape=disc"]].concat(), 1, &["--prompt", "no prompt table"]);
}

/// The trained model copied to a directory of its own, with `table` as its prompt embeddings and
/// `max_text_seq_length` as its text length.
fn trained_model_copy(dir: &Path, table: Option<BTreeMap<String, HostTensor>>, max_text_seq_length: usize) {
    let src = benches::shapes::shapes_dir();
    for sub in ["transformer", "scheduler"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
        }
    }
    let table_path = dir.join("attribute_embeddings.safetensors");
    match table {
        Some(t) => models::weights::save_safetensors(&table_path, &t).unwrap(),
        None => {
            std::fs::copy(src.join("attribute_embeddings.safetensors"), &table_path).unwrap();
        }
    }
    let config = dir.join("transformer/config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["max_text_seq_length"] = max_text_seq_length.into();
    std::fs::write(&config, json.to_string()).unwrap();
}

#[test]
fn a_model_directory_with_a_bad_prompt_table_is_refused_naming_the_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let none = none_config(dir.path());
    let run = |model: &Path, expected: &[&str]| {
        let model = model.to_str().unwrap();
        assert_refused(&["bench", "--model", model, "--steps", "1", "--repeats", "1", "--strategy", &none], 1, expected);
    };
    // Embeddings of two lengths.
    let row = |n: usize| HostTensor { shape: vec![n], data: vec![0.5; n] };
    let mut table: BTreeMap<String, HostTensor> =
        ["shape.disc", "size.large", "colour.red", "direction.right"].iter().map(|k| (k.to_string(), row(128))).collect();
    table.insert("size.large".into(), row(64));
    let ragged = dir.path().join("ragged");
    trained_model_copy(&ragged, Some(table), 8);
    run(&ragged, &["colour.red has 128", "size.large has 64"]);
    // A text shorter than a prompt's four attribute tokens.
    let short = dir.path().join("short");
    trained_model_copy(&short, None, 3);
    run(&short, &["max_text_seq_length 3", "4 attribute tokens"]);
}

#[test]
fn parity_on_a_missing_directory_reports_the_case_and_fails() {
    let out = ditcache(&["parity", "/nonexistent/ditcache-case"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["pass"], serde_json::Value::Bool(false));
    assert!(line["error"].as_str().unwrap().contains("/nonexistent/ditcache-case"), "{line}");
}
