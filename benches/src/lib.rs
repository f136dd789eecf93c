//! The `ditcache` command-line tool's library: parity replay, model presets, and the backend of this build.

pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod engine_time;
pub mod parity;
mod parity_flux;
mod parity_wan;
pub mod png;
pub mod shapes;
pub mod tune;
pub mod video_model;

/// This crate's directory: `CARGO_MANIFEST_DIR` at run time when set (so a binary built elsewhere finds the
/// checkout it runs in), else where it was built. The committed cases and the trained model are found from it.
pub fn crate_dir() -> std::path::PathBuf {
    let at_run_time = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    at_run_time.unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
