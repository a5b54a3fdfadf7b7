//! Mounts the kubelet and containerd make under the node's directory (the kubelet's root dir
//! bound onto itself, containers' overlay root filesystems, network namespace files, secret
//! volumes), found in /proc/self/mountinfo and detached, newest first.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Mount points at or below `dir`, in mount order.
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        if let Some(code) = code {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir` (lazily: MNT_DETACH), newest first, until none is
/// left (a mount may be stacked on another).
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    for _round in 0..5 {
        let mounts = mounts_under(dir)?;
        if mounts.is_empty() {
            return Ok(());
        }
        for point in mounts.iter().rev() {
            let path =
                CString::new(point.as_os_str().as_bytes()).context("mount point with NUL")?;
            // SAFETY: umount2 reads the valid C string we pass; no other memory is involved.
            let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                let error = io::Error::last_os_error();
                // Already gone with a parent mount.
                if error.raw_os_error() != Some(libc::EINVAL)
                    && error.kind() != io::ErrorKind::NotFound
                {
                    return Err(error).with_context(|| format!("umount {}", point.display()));
                }
            }
        }
    }
    let left = mounts_under(dir)?;
    if !left.is_empty() {
        bail!("mounts left under {}: {left:?}", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_octal_escapes_are_decoded() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }
}
