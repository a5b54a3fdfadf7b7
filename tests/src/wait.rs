//! Bounded polling: every wait in the harness has a deadline.

use std::time::{Duration, Instant};

/// Polls `ready` every `interval` until it returns true (then `true`) or `timeout` passes (`false`).
pub fn poll_until(timeout: Duration, interval: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
