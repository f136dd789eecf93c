//! Wall time per [`super::ModelBackend`] operation, for `ditcache forward --profile`.
//!
//! Only meaningful on a synchronous backend (`NdArray`, the only one that records): a GPU backend returns
//! before its kernels finish. Off by default; when off, a timer costs one relaxed atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Starts (or stops) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
    ENABLED.store(on, Ordering::Relaxed);
}

/// What was recorded since [`enable`]: per operation, its total time and number of calls.
pub fn totals() -> Vec<(&'static str, Duration, u64)> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, (d, n))| (*k, *d, *n)).collect()
}

/// Times the enclosing scope under `op` while recording is on.
#[cfg_attr(not(feature = "ndarray"), allow(dead_code))]
pub(crate) struct Timer(Option<(&'static str, Instant)>);

#[cfg_attr(not(feature = "ndarray"), allow(dead_code))]
pub(crate) fn timer(op: &'static str) -> Timer {
    Timer(ENABLED.load(Ordering::Relaxed).then(|| (op, Instant::now())))
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((op, start)) = self.0.take() {
            let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
            let entry = totals.entry(op).or_default();
            entry.0 += start.elapsed();
            entry.1 += 1;
        }
    }
}
