//! Images built on this machine (no registry is reachable): a static busybox on an empty base,
//! built with buildah in a storage of its own and written as an OCI archive that containerd
//! imports under exactly the image's name.

use std::{fs, path::Path, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result};

use crate::process::run_ok;

/// Debian's busybox-static: one static executable serves as `sleep` (the sandbox) and `httpd`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The sandbox ("pause") image of every pod: `busybox sleep`, never pulled.
pub const SANDBOX_IMAGE: &str = "localhost/podmeter-test/pause:1";
/// An HTTP server image: `busybox httpd` on port [`HTTPD_PORT`] serving [`HTTPD_BODY`] at `/`.
pub const HTTPD_IMAGE: &str = "localhost/podmeter-test/httpd:1";
pub const HTTPD_PORT: u16 = 8080;
pub const HTTPD_BODY: &str = "podmeter-test httpd\n";

const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// What goes into a busybox image besides the binary.
pub struct BusyboxImage<'a> {
    pub name: &'a str,
    /// The command line after `/bin/busybox` (the entrypoint).
    pub cmd: &'a [&'a str],
    /// Files as (path inside the image, contents).
    pub files: &'a [(&'a str, &'a str)],
}

impl BusyboxImage<'_> {
    /// The sandbox image: sleeps until containerd kills it (SIGKILL on StopPodSandbox).
    pub fn sandbox() -> BusyboxImage<'static> {
        BusyboxImage {
            name: SANDBOX_IMAGE,
            cmd: &["sleep", "2147483647"],
            files: &[],
        }
    }

    /// The HTTP server image.
    pub fn httpd() -> BusyboxImage<'static> {
        BusyboxImage {
            name: HTTPD_IMAGE,
            cmd: &["httpd", "-f", "-p", "8080", "-h", "/www"],
            files: &[("www/index.html", HTTPD_BODY)],
        }
    }

    /// Builds the image with buildah (storage under `work`, vfs: no mounts) and writes it as
    /// `<work>/<file stem>.tar`, an OCI archive whose reference is the image's name.
    pub fn build_archive(&self, work: &Path) -> Result<PathBuf> {
        let stem = self
            .name
            .rsplit('/')
            .next()
            .unwrap_or("image")
            .replace(':', "-");
        let context = work.join(format!("{stem}-context"));
        fs::create_dir_all(&context)?;
        fs::copy(BUSYBOX, context.join("busybox")).with_context(|| {
            format!("copying {BUSYBOX} (Debian's busybox-static; scripts/setup.sh installs it)")
        })?;
        let mut containerfile = String::from("FROM scratch\nCOPY busybox /bin/busybox\n");
        for (path, contents) in self.files {
            let file = context.join("files").join(path);
            fs::create_dir_all(file.parent().context("a file path has a parent")?)?;
            fs::write(&file, contents)?;
            containerfile.push_str(&format!("COPY files/{path} /{path}\n"));
        }
        let cmd = serde_json::to_string(self.cmd)?;
        containerfile.push_str(&format!("ENTRYPOINT [\"/bin/busybox\"]\nCMD {cmd}\n"));
        fs::write(context.join("Containerfile"), containerfile)?;

        let storage = work.join("buildah");
        let buildah = |args: &[&str]| {
            let mut command = Command::new("buildah");
            command
                .arg("--root")
                .arg(storage.join("root"))
                .arg("--runroot")
                .arg(storage.join("runroot"))
                .args(["--storage-driver", "vfs"])
                .args(args);
            run_ok(command, BUILD_TIMEOUT)
        };
        let context_str = context.to_str().context("non-UTF-8 path")?;
        buildah(&[
            "bud",
            "--quiet",
            "--format",
            "oci",
            "-f",
            &format!("{context_str}/Containerfile"),
            "-t",
            self.name,
            context_str,
        ])
        .with_context(|| format!("buildah bud of {}", self.name))?;
        let archive = work.join(format!("{stem}.tar"));
        let archive_str = archive.to_str().context("non-UTF-8 path")?;
        buildah(&[
            "push",
            "--quiet",
            self.name,
            &format!("oci-archive:{archive_str}:{}", self.name),
        ])
        .with_context(|| format!("buildah push of {}", self.name))?;
        fs::remove_dir_all(&context)?;
        Ok(archive)
    }
}
