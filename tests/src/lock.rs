//! A cross-process lock that makes privileged tests run one at a time.
//!
//! Tests share machine-wide state (bridges, the cgroup2 tree, attached eBPF programs, CPU), so they
//! must not overlap. `cargo test` runs tests as threads of one process while nextest runs each test
//! in its own process; an `flock` on a well-known file serialises both, because flock locks belong
//! to the open file description, so two opens in one process exclude each other too.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// Where the lock lives: /run is root-only tmpfs, cleared on boot, so a stale file is harmless.
pub const LOCK_PATH: &str = "/run/podmeter-tests.lock";

/// Holds the serial lock until dropped; closing the file releases the flock.
#[derive(Debug)]
pub struct SerialGuard {
    _file: File,
}

/// Blocks until no other privileged test (in this or another process) is running.
///
/// Call it first in every test: `let _serial = serial();`. Panics when the lock file cannot be
/// opened, which means the test is not running as root.
pub fn serial() -> SerialGuard {
    serial_at(Path::new(LOCK_PATH)).unwrap_or_else(|error| {
        panic!(
            "cannot take the test serial lock {LOCK_PATH}: {error} (these tests must run as root)"
        )
    })
}

fn serial_at(path: &Path) -> io::Result<SerialGuard> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc == 0 {
            return Ok(SerialGuard { _file: file });
        }
        let error = io::Error::last_os_error();
        // A signal may interrupt the wait; anything else is a real failure.
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property `cargo test` relies on: two opens in one process exclude each other.
    #[test]
    fn a_second_open_of_the_lock_file_waits_for_the_first() {
        let path =
            std::env::temp_dir().join(format!("podmeter-tests-lock-test-{}", std::process::id()));
        let first = serial_at(&path).expect("first lock");
        let second = File::options()
            .write(true)
            .open(&path)
            .expect("second open");
        // SAFETY: flock on a descriptor we own.
        let busy = unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(busy, -1, "the lock must be held by the first open");
        drop(first);
        // SAFETY: as above.
        let free = unsafe { libc::flock(second.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(free, 0, "dropping the guard must release the lock");
        let _ = std::fs::remove_file(&path);
    }
}
