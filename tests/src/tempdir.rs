//! Temporary directories for generated configs and request bodies, removed on drop.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::names;

/// A directory under the system temp dir, named `podmeter-test-<pid>-<id>-<label>`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory; `label` only makes the name readable.
    pub fn new(label: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{}-{label}",
            names::temp_dir_stem(names::next_id())
        ));
        fs::create_dir(&path).with_context(|| format!("creating temp dir {}", path.display()))?;
        // World-readable so that servers dropping privileges can still read what we generate.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> Result<PathBuf> {
        let file = self.path.join(name);
        fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!(
                "podmeter-tests: could not remove {}: {error}",
                self.path.display()
            );
        }
    }
}
