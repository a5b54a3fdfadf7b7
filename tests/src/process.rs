//! Running programs inside a pod (its network namespace and its cgroup) or in the root namespace,
//! always with a deadline, and always reaped.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// How long a guard's drop waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// Makes `command` start inside the network namespace file `netns` (e.g. `/run/netns/<name>`)
/// and/or the cgroup v2 directory `cgroup`, both joined in the child between fork and exec.
///
/// Joining before exec (rather than moving the process afterwards) guarantees that every socket
/// the program ever opens belongs to the pod: sockets take their cgroup at creation. Both files
/// are opened here, in the parent, so the child only makes two async-signal-safe syscalls.
pub fn place(command: &mut Command, netns: Option<&Path>, cgroup: Option<&Path>) -> Result<()> {
    let netns_fd: Option<OwnedFd> = netns
        .map(|path| File::open(path).with_context(|| format!("opening netns {}", path.display())))
        .transpose()?
        .map(OwnedFd::from);
    let procs_fd: Option<OwnedFd> = cgroup
        .map(|dir| {
            let procs = dir.join("cgroup.procs");
            File::options()
                .write(true)
                .open(&procs)
                .with_context(|| format!("opening {}", procs.display()))
        })
        .transpose()?
        .map(OwnedFd::from);
    // SAFETY: the closure runs in the forked child and only calls write(2) and setns(2) on
    // descriptors owned by the closure (opened with O_CLOEXEC, so the program does not inherit them).
    unsafe {
        command.pre_exec(move || {
            if let Some(fd) = &procs_fd {
                // "0" means "the writing process" in cgroup.procs.
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = &netns_fd
                && libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Makes the child get SIGTERM when the thread that spawned it dies, so that a test killed with
/// SIGKILL (which runs no destructors) does not leave its servers running. SIGTERM rather than
/// SIGKILL lets nginx's master stop its worker and the agent detach its programs.
///
/// All spawns in the harness happen on the test's own thread, which lives until its guards drop.
pub fn die_with_parent(command: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child and only makes the async-signal-safe
    // syscalls prctl(2) and getppid(2).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would signal us.
            // (ESRCH rather than a custom message: allocating is not safe between fork and exec.)
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// A process this harness started. Drop sends SIGTERM to its PID, waits up to [`TERM_GRACE`],
/// then sends SIGKILL, and reaps it, so no test leaves a process behind.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    label: String,
    status: Option<ExitStatus>,
    forwarders: Vec<JoinHandle<()>>,
}

impl ChildGuard {
    /// Spawns `command` with the stdio it already has.
    pub fn spawn(mut command: Command, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {label}: {command:?}"))?;
        Ok(Self {
            child,
            label,
            status: None,
            forwarders: Vec::new(),
        })
    }

    /// Spawns `command` with stdout and stderr forwarded line by line to the test's output, each
    /// line prefixed with `[label]`. The test harness captures the output and shows it on failure.
    pub fn spawn_forwarding(mut command: Command, label: impl Into<String>) -> Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = Self::spawn(command, label)?;
        let stdout = guard
            .child
            .stdout
            .take()
            .context("child stdout was not piped")?;
        let stderr = guard
            .child
            .stderr
            .take()
            .context("child stderr was not piped")?;
        guard
            .forwarders
            .push(forward_lines(stdout, format!("[{}]", guard.label)));
        guard
            .forwarders
            .push(forward_lines(stderr, format!("[{} stderr]", guard.label)));
        Ok(guard)
    }

    /// Wraps a child spawned elsewhere (e.g. with stdout kept for parsing); spawn it with
    /// [`die_with_parent`] applied so that it cannot outlive a killed test.
    pub fn from_child(child: Child, label: impl Into<String>) -> Self {
        Self {
            child,
            label: label.into(),
            status: None,
            forwarders: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take a piped stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Adds a thread that must be joined when the process ends (e.g. one reading its output).
    pub fn attach_thread(&mut self, handle: JoinHandle<()>) {
        self.forwarders.push(handle);
    }

    /// The exit status if the process has exited (and reaps it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                self.join_forwarders();
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the process if it has not exited yet. Signalling only a child that has
    /// not been reaped is what makes this safe: until we reap it, its PID cannot be reused.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_none() {
            // SAFETY: kill(2) on the PID of our own unreaped child; no memory is involved.
            let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
            if rc != 0 {
                let error = std::io::Error::last_os_error();
                return Err(error)
                    .with_context(|| format!("signalling {} ({})", self.label, self.pid()));
            }
        }
        Ok(())
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status once reaped.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        eprintln!(
            "podmeter-tests: {} ({}) ignored SIGTERM for {grace:?}; sending SIGKILL",
            self.label,
            self.pid()
        );
        self.signal(libc::SIGKILL)?;
        match self.wait_timeout(Duration::from_secs(5))? {
            Some(status) => Ok(status),
            None => bail!("{} ({}) survived SIGKILL", self.label, self.pid()),
        }
    }

    fn join_forwarders(&mut self) {
        // The readers end when the pipes close; a grandchild holding them open must not hang us.
        let deadline = Instant::now() + Duration::from_secs(2);
        for handle in std::mem::take(&mut self.forwarders) {
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(error) = self.terminate(TERM_GRACE) {
            eprintln!("podmeter-tests: stopping {}: {error:#}", self.label);
        }
    }
}

/// Prints every line read from `source` with `prefix` until EOF, on its own thread.
pub fn forward_lines(source: impl Read + Send + 'static, prefix: String) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(source).lines() {
            match line {
                Ok(line) => println!("{prefix} {line}"),
                Err(_) => break,
            }
        }
    })
}

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Fails with both outputs in the message unless the command exited with status 0.
    pub fn check(self, what: &str) -> Result<Self> {
        if !self.success() {
            bail!(
                "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
                self.status,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs `command` to completion, capturing stdout and stderr; kills it after `timeout`.
pub fn run(command: Command, timeout: Duration) -> Result<CommandOutput> {
    run_with_input(command, &[], timeout)
}

/// Like [`run`], and fails unless the command exits with status 0.
pub fn run_ok(command: Command, timeout: Duration) -> Result<CommandOutput> {
    let what = format!("{command:?}");
    run(command, timeout)?.check(&what)
}

/// Runs `command` with `input` on its stdin, capturing stdout and stderr; kills it after `timeout`.
pub fn run_with_input(
    mut command: Command,
    input: &[u8],
    timeout: Duration,
) -> Result<CommandOutput> {
    let what = format!("{command:?}");
    command.stdin(if input.is_empty() {
        Stdio::null()
    } else {
        Stdio::piped()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut command);
    let child = command
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    let mut guard = ChildGuard::from_child(child, what.clone());
    // Feed stdin and drain both pipes on threads so that a chatty child never blocks on a full pipe.
    if let Some(mut stdin) = guard.child.stdin.take() {
        let input = input.to_vec();
        guard.attach_thread(std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        }));
    }
    let stdout = read_to_end_on_thread(guard.child.stdout.take().context("stdout was not piped")?);
    let stderr = read_to_end_on_thread(guard.child.stderr.take().context("stderr was not piped")?);
    let status = match guard.wait_timeout(timeout)? {
        Some(status) => status,
        None => {
            let status = guard.terminate(Duration::from_secs(2))?;
            let stdout = collect(stdout);
            let stderr = collect(stderr);
            bail!(
                "{what} did not finish within {timeout:?} (then {status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
    };
    Ok(CommandOutput {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

fn read_to_end_on_thread(mut source: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = source.read_to_end(&mut bytes);
        bytes
    })
}

/// Joins a reader thread, giving up after a short while: a grandchild that inherited the pipe
/// (e.g. a daemon) would otherwise keep it open forever.
fn collect(reader: JoinHandle<Vec<u8>>) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !reader.is_finished() {
        return String::from("<output still open: a descendant kept the pipe>");
    }
    String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned()
}
