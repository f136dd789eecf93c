//! The command-line tool's contracts: parity's exit status and JSON lines, tune's config output read back by
//! the library, and the bench metrics on hand-derived numbers.

use std::process::Command;

use benches::bench::psnr;
use benches::parity::rel_l2;
use cache_engines::CacheConfig;

fn ditcache() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ditcache"))
}

#[test]
fn metrics_on_hand_derived_numbers() {
    // rel_l2: ||(1,2) - (1,0)|| / ||(1,0)|| = 2.
    assert_eq!(rel_l2(&[1.0, 2.0], &[1.0, 0.0]), 2.0);
    // PSNR: peak 2, MSE (0 + 1) / 2 = 0.5 → 10·log10(4 / 0.5) = 10·log10(8).
    let p = psnr(&[2.0, -1.0], &[2.0, 0.0]);
    assert!((p - 10.0 * 8f64.log10()).abs() < 1e-12, "{p}");
    assert!(psnr(&[1.0], &[1.0]).is_infinite());
}

#[test]
fn parity_reports_each_case_and_fails_on_an_unreadable_one() {
    let root = benches::parity::committed_cases_dir();
    let ok = ditcache().arg("parity").arg(root.join("forward_sincos")).arg(root.join("fbc_1")).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let summary = format!("parity on {}: 2 passed, 0 failed", benches::backend::NAME);
    assert!(String::from_utf8_lossy(&ok.stderr).contains(&summary), "{}", String::from_utf8_lossy(&ok.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(ok.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["decisions_match"], serde_json::Value::Bool(true));
    for l in &lines {
        for key in ["case", "kind", "rel_l2", "tolerance", "decisions_match", "pass"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
    }
    let missing = tempfile::tempdir().unwrap();
    let bad = ditcache().args(["parity", missing.path().to_str().unwrap()]).output().unwrap();
    assert!(!bad.status.success());
    let line: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(line["pass"], serde_json::Value::Bool(false));
    assert!(line["error"].as_str().unwrap().contains("case.json"));
}

#[test]
fn config_files_round_trip_in_json_and_toml() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("s.toml");
    std::fs::write(
        &toml_path,
        "type = \"stack\"\n[[strategies]]\ntype = \"faster_cache\"\nattention_weight = { start = 0.2, end = 0.6 }\n\
         [[strategies]]\ntype = \"first_block_cache\"\nthreshold = 0.1\n",
    )
    .unwrap();
    let cfg = CacheConfig::from_file(&toml_path).unwrap();
    let CacheConfig::Stack { strategies } = &cfg else { panic!("{cfg:?}") };
    assert_eq!(strategies.len(), 2);
    let json_path = dir.path().join("s.json");
    std::fs::write(&json_path, serde_json::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(CacheConfig::from_file(&json_path).unwrap(), cfg);
    std::fs::write(&json_path, r#"{"type": "first_block_cache", "threshold": -1}"#).unwrap();
    assert!(matches!(CacheConfig::from_file(&json_path), Err(cache_engines::ConfigError::Negative { .. })));
}

#[test]
fn calibrate_writes_a_calibration_that_bench_sample_and_the_library_load() {
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("cal.toml");
    let mag = dir.path().join("mag.toml");
    let out = ditcache()
        .args(["calibrate", "--steps", "6", "--out", cal.to_str().unwrap(), "--magcache-out", mag.to_str().unwrap(), "--threshold", "0.3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The calibration: one measurement per step for every engine, TeaCache's polynomial, three presets.
    let c = cache_engines::Calibration::from_file(&cal).unwrap();
    assert_eq!((c.num_inference_steps, c.model.class.as_str(), c.mag_ratios.len(), c.mag_ratios[0]), (6, "CogVideoXTransformer3DModel", 6, 1.0));
    assert_eq!((c.first_block_changes.len(), c.residual_changes.len()), (5, 5));
    assert!(c.attention_changes.values().all(|v| v.len() == 5) && !c.attention_changes.is_empty());
    let tea = c.teacache.as_ref().expect("CogVideoX hands TeaCache its emb");
    assert_eq!((tea.coefficients.len(), tea.signal_changes.len()), (5, 5));
    for p in cache_engines::Preset::ALL {
        let r = &c.presets[p.name()];
        assert_eq!(r.target_psnr_db, p.target_psnr_db());
        // What is stored was verified: the target plus the margin on the calibration videos, or no cache.
        match r.calibration_psnr_db {
            Some(db) => assert!(db >= r.target_psnr_db + cache_engines::MARGIN_DB, "{p:?}: {db}"),
            None => assert_eq!(r.config, CacheConfig::None),
        }
    }
    // The MagCache config with the same ratios, loadable by bench and the library.
    let CacheConfig::MagCache(m) = CacheConfig::from_file(&mag).unwrap() else { panic!("not a MagCache config") };
    assert_eq!((m.num_inference_steps, m.threshold, m.mag_ratios.as_deref()), (6, 0.3, Some(&c.mag_ratios[..])));
    // bench takes the calibration: MagCache, TeaCache and preset rows from it.
    let json = dir.path().join("report.json");
    let out = ditcache()
        .args(["bench", "--steps", "6", "--repeats", "1", "--calibration", cal.to_str().unwrap(), "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["strategy"] == name).unwrap_or_else(|| panic!("no row {name}"));
    assert_eq!(row("teacache(0.1)")["config"]["coefficients"].as_array().unwrap().len(), 5);
    assert_eq!(row("quality ≥40dB")["config"], serde_json::to_value(&c.presets["quality"].config).unwrap());
    // A calibration made for 6 steps is refused for 8, typed and naming both.
    let out = ditcache().args(["bench", "--steps", "8", "--repeats", "1", "--calibration", cal.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("num_inference_steps") && err.contains('6') && err.contains('8'), "{err}");
    // ... and for another architecture.
    let out = ditcache()
        .args(["sample", "--model", "latte", "--steps", "6", "--strategy", "quality", "--calibration", cal.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model class") && err.contains("LatteTransformer3DModel"), "{err}");
    // Uncalibrated presets say so.
    let png = dir.path().join("u.png");
    let out = ditcache()
        .args(["sample", "--steps", "2", "--strategy", "speed", "--uncalibrated", "--out", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uncalibrated"), "{}", String::from_utf8_lossy(&out.stderr));
    // A config without ratios is refused with the way to get them.
    std::fs::write(&mag, "type = \"mag_cache\"\n").unwrap();
    let out = ditcache().args(["bench", "--strategy", mag.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ditcache calibrate"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn latent_size_reaches_the_run_and_the_exported_config() {
    let dir = tempfile::tempdir().unwrap();
    let none = dir.path().join("none.json");
    std::fs::write(&none, r#"{"type": "none"}"#).unwrap();
    let export = dir.path().join("export");
    let out = ditcache()
        .args(["bench", "--model", "s", "--latent-size", "2,4,6", "--steps", "1", "--repeats", "1", "--strategy"])
        .arg(&none)
        .arg("--export")
        .arg(&export)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(export.join("transformer/config.json")).unwrap()).unwrap();
    // 2 latent frames = (2 - 1)·4 + 1 video frames (the VAE's temporal compression of 4).
    assert_eq!((cfg["sample_frames"].as_u64(), cfg["sample_height"].as_u64(), cfg["sample_width"].as_u64()), (Some(5), Some(4), Some(6)));
    let inputs = models::weights::read_safetensors(&export.join("inputs.safetensors")).unwrap();
    assert_eq!(inputs["latents"].shape, vec![1, 2, 16, 4, 6]);

    for (args, expected) in [
        (vec!["--model", "s", "--latent-size", "2,4"], "FRAMES,HEIGHT,WIDTH"),
        (vec!["--model", "s", "--latent-size", "0,4,4"], "FRAMES,HEIGHT,WIDTH"),
        (vec!["--model", "latte", "--latent-size", "2,4,6"], "square"),
        (vec!["--model", "shapes", "--latent-size", "2,4,4"], "preset models"),
    ] {
        let out = ditcache().arg("bench").args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn forward_profile_counts_each_operation_of_the_s_model() {
    // S: 6 blocks. Linear layers: per block 2 adaLN projections + q, k, v, out + the feed-forward's second
    // half = 7, plus the time embedding (2), patch and text projections (2), norm_out and proj_out (2): 48.
    // Per block one attention, one fused linear+GELU, the q and k norms, and 2 norms × 2 streams modulated;
    // then norm_final (plain) and norm_out (modulated).
    let want = [("linear", 48.0), ("linear+gelu", 6.0), ("attention", 6.0), ("layer_norm", 13.0), ("layer_norm+modulate", 25.0)];
    let own = if benches::backend::NAME == "ndarray" { "cpu-kernels" } else { "generic" };
    for (flag, path) in [(None, own), (Some("--generic-ops"), "generic")] {
        let mut cmd = ditcache();
        cmd.args(["forward", "--preset", "s", "--repeats", "1", "--profile"]);
        cmd.args(flag);
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["ops_path"], path);
        if benches::backend::NAME != "ndarray" {
            continue; // only the synchronous CPU backend records per-operation times
        }
        for (op, calls) in want {
            assert_eq!(json["ops"][op]["calls_per_forward"], calls, "{op} ({path}): {json}");
            assert!(json["ops"][op]["ms_per_forward"].as_f64().unwrap() > 0.0, "{op}: {json}");
        }
        assert!(String::from_utf8_lossy(&out.stderr).contains("layer_norm+modulate"));
    }
}

#[test]
fn batch_runs_several_prompts_in_one_loop_and_reports_time_per_video() {
    let dir = tempfile::tempdir().unwrap();
    let fbc = dir.path().join("fbc.json");
    std::fs::write(&fbc, r#"{"type": "first_block_cache", "threshold": 0.2}"#).unwrap();
    let (json, export) = (dir.path().join("bench.json"), dir.path().join("export"));
    // Trained model: two prompts, two videos each (adjacent), one loop.
    let red = "shape=disc,size=large,colour=red,direction=right";
    let blue = "shape=square,size=small,colour=blue,direction=up";
    let out = ditcache()
        .args(["bench", "--steps", "3", "--repeats", "1", "--batch", "4", "--prompt", red, "--prompt", blue, "--strategy"])
        .arg(&fbc)
        .arg("--json")
        .arg(&json)
        .arg("--export")
        .arg(&export)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: benches::bench::Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.batch, 4);
    for r in &report.rows {
        assert!((r.time_per_video_s - r.time_s / 4.0).abs() < 1e-12, "{r:?}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("s/video"));
    // What diffusers gets: one embedding row per video, in the order [red, red, blue, blue].
    let inputs = models::weights::read_safetensors(&export.join("inputs.safetensors")).unwrap();
    assert_eq!(inputs["latents"].shape[0], 4);
    let p = &inputs["prompt_embeds"];
    let n = p.data.len() / 4;
    let video = |j: usize| &p.data[j * n..(j + 1) * n];
    assert!(video(0) == video(1) && video(2) == video(3) && video(1) != video(2));

    // A batch the prompts do not divide is refused, naming both numbers.
    let out = ditcache().args(["bench", "--steps", "1", "--batch", "3", "--prompt", red, "--prompt", blue]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 videos") && err.contains("2 prompts"), "{err}");

    // sample: per video an uncached row and a cached row.
    let png = dir.path().join("s.png");
    let out = ditcache()
        .args(["sample", "--model", "s", "--latent-size", "2,4,4", "--steps", "2", "--batch", "2", "--scale", "1", "--strategy"])
        .arg(&fbc)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    // PNG IHDR: height at bytes 20..24; 4 rows of 4 pixels with gaps of 2 around and between them.
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(height, 4 * 4 + 5 * 2);
}

#[test]
fn parity_holds_cases_to_a_tighter_bound_when_asked() {
    // fbc_1 passes its own 1e-3 at ~4e-7 on the float32 backends; a bound far below what any backend reaches
    // fails it and the line says which bound applied.
    let case = benches::parity::committed_cases_dir().join("fbc_1");
    let tight = ditcache().arg("parity").arg("--max-rel-l2").arg("1e-12").arg(&case).output().unwrap();
    assert!(!tight.status.success());
    let line: serde_json::Value = serde_json::from_slice(&tight.stdout).unwrap();
    assert_eq!((line["pass"].as_bool(), line["max_rel_l2"].as_f64()), (Some(false), Some(1e-12)), "{line}");
    let loose = ditcache().arg("parity").arg("--max-rel-l2").arg("1e-1").arg(&case).output().unwrap();
    assert!(loose.status.success(), "{}", String::from_utf8_lossy(&loose.stdout));
    let bad = ditcache().arg("parity").arg("--max-rel-l2").arg("NaN").arg(&case).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--max-rel-l2"));
}

#[test]
fn flux_shapes_runs_bench_export_and_sample_with_true_cfg_in_two_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let fbc = dir.path().join("fbc.json");
    std::fs::write(&fbc, r#"{"type": "first_block_cache", "threshold": 0.2}"#).unwrap();
    let (json, export) = (dir.path().join("bench.json"), dir.path().join("export"));
    let red = "shape=disc,size=large,colour=red,direction=right";
    let blue = "shape=square,size=small,colour=blue,direction=up";
    let out = ditcache()
        .args(["bench", "--model", "flux-shapes", "--steps", "3", "--repeats", "1", "--batch", "2", "--prompt", red, "--prompt", blue])
        .arg("--strategy")
        .arg(&fbc)
        .arg("--json")
        .arg(&json)
        .arg("--export")
        .arg(&export)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: benches::bench::Report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // True CFG: two calls per step, and the table counts skips over both.
    assert_eq!((report.batch, report.calls_per_step), (2, 2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("/6 |"), "{}", String::from_utf8_lossy(&out.stdout));
    // What FluxPipeline gets: packed latents of a 256 × 256 image, the pooled rows (mean of the attribute
    // tokens), true CFG at the guidance scale.
    let inputs = models::weights::read_safetensors(&export.join("inputs.safetensors")).unwrap();
    assert_eq!(inputs["latents"].shape, vec![2, 256, 16]);
    let pooled = benches::shapes::pooled(&inputs["prompt_embeds"]).unwrap();
    assert_eq!(pooled, inputs["pooled_prompt_embeds"]);
    assert!(inputs["negative_pooled_prompt_embeds"].data.iter().all(|v| *v == 0.0));
    let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export.join("bench.json")).unwrap()).unwrap();
    assert_eq!((spec["family"].as_str(), spec["true_cfg_scale"].as_f64(), spec["height"].as_u64()), (Some("flux"), Some(6.0), Some(256)));
    assert!(export.join("scheduler/scheduler_config.json").exists());
    // sample: the uncached image's row, then the cached one's (one 32 × 32 frame each, gaps of 2).
    let png = dir.path().join("f.png");
    let out = ditcache()
        .args(["sample", "--model", "flux-shapes", "--steps", "2", "--scale", "1", "--strategy"])
        .arg(&fbc)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 2 * 32 + 3 * 2);
}
