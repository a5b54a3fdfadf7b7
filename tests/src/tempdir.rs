//! Temporary directories for generated configs and request bodies: `tempfile`'s [`TempDir`],
//! removed on drop, named so that the next run recognises those of a killed one.

use std::{fs, os::unix::fs::PermissionsExt, path::PathBuf};

use anyhow::{Context, Result};
pub use tempfile::TempDir;

use crate::names;

/// A fresh directory `podmeter-test-<pid>-<id>-<label>-XXXXXX` under the system temp dir;
/// `label` only makes the name readable.
pub fn new(label: &str) -> Result<TempDir> {
    let prefix = format!("{}-{label}-", names::temp_dir_stem(names::next_id()));
    let dir = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir()
        .with_context(|| format!("creating temp dir {prefix}* in the system temp dir"))?;
    // World-readable so that servers dropping privileges can still read what we generate (set
    // after creation: the umask would narrow a mode given at creation).
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", dir.path().display()))?;
    Ok(dir)
}

/// Writes `contents` to `name` inside `dir` and returns the file's path.
pub fn write(dir: &TempDir, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
    let file = dir.path().join(name);
    fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_named_for_its_owner_world_readable_and_removed_on_drop() {
        let dir = new("label").expect("temp dir");
        let name = dir.path().file_name().expect("a name").to_string_lossy();
        assert_eq!(
            names::temp_dir_owner(&name),
            Some(std::process::id()),
            "{name}"
        );
        let mode = fs::metadata(dir.path())
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        let file = write(&dir, "f", "x").expect("write");
        assert_eq!(fs::read_to_string(&file).expect("read back"), "x");
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
