//! Ctrl-C as a flag: the demo and the bench keep running their clean-up (pods, cgroups, processes)
//! instead of dying mid-way, and check [`INTERRUPTED`] between steps.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once Ctrl-C was pressed.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT set [`INTERRUPTED`] instead of ending the process.
pub fn catch_ctrl_c() {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
