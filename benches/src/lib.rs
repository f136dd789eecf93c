//! The `ditcache` command-line tool's library: parity replay, model presets, and the backend of this build.

pub mod backend;
pub mod bench;
pub mod calibrate;
pub mod parity;
pub mod png;
pub mod shapes;
pub mod tune;
pub mod video_model;
