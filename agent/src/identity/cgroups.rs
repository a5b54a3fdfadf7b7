//! Which cgroup directory a cgroup id is: the id the kernel reports is the inode number of the
//! cgroup's directory in the cgroup2 filesystem.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Directories below the root that are searched: pod cgroups are a few levels deep
/// (kubepods.slice/kubepods-burstable.slice/...pod<uid>.slice/<container>.scope).
const MAX_DEPTH: usize = 8;
/// An unknown id triggers a rescan at most this often.
const RESCAN_AFTER: Duration = Duration::from_millis(200);

/// Maps cgroup ids to paths relative to the attach root.
pub(crate) struct CgroupIndex {
    root: PathBuf,
    root_id: Option<u64>,
    paths: HashMap<u64, PathBuf>,
    last_scan: Option<Instant>,
}

impl CgroupIndex {
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root_id = std::fs::metadata(&root).ok().map(|m| m.ino());
        Self {
            root,
            root_id,
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// The path of `id` relative to the root ("" for the root itself), rescanning the tree when
    /// the id is new. Paths of removed cgroups stay known until [`CgroupIndex::forget_removed`].
    pub(crate) fn path(&mut self, id: u64) -> Option<&Path> {
        if Some(id) == self.root_id {
            return Some(Path::new(""));
        }
        if !self.paths.contains_key(&id)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_AFTER)
        {
            self.scan();
        }
        self.paths.get(&id).map(PathBuf::as_path)
    }

    /// Is the cgroup with this id still present?
    pub(crate) fn exists(&self, id: u64) -> bool {
        Some(id) == self.root_id
            || self
                .paths
                .get(&id)
                .is_some_and(|p| self.root.join(p).is_dir())
    }

    /// Is the cgroup `id` gone, for a kernel map key with that id listed before `listed`? A
    /// cgroup not indexed yet is not taken for gone: it may have been created since the last scan
    /// (or before the first one, at the agent's start), and deleting its counters would lose what
    /// they counted since the last read. An unknown id is looked up in a scan begun after
    /// `listed` (one scan serves every key listed then): a cgroup that had a key when listed and
    /// is not in that scan is gone.
    pub(crate) fn gone(&mut self, id: u64, listed: Instant) -> bool {
        if Some(id) != self.root_id
            && !self.paths.contains_key(&id)
            && self.last_scan.is_none_or(|t| t <= listed)
        {
            self.scan();
        }
        !self.exists(id)
    }

    /// Forgets the cgroups whose directories are gone and returns their ids.
    pub(crate) fn forget_removed(&mut self) -> Vec<u64> {
        let root = &self.root;
        let mut dead = Vec::new();
        self.paths.retain(|id, rel| {
            let alive = root.join(rel).is_dir();
            if !alive {
                dead.push(*id);
            }
            alive
        });
        dead
    }

    /// Scans the tree now, whether or not an unknown id asked for it.
    pub(crate) fn rescan(&mut self) {
        self.scan();
    }

    /// Every cgroup indexed, the root included, with its path relative to the root.
    pub(crate) fn all(&self) -> impl Iterator<Item = (u64, &Path)> {
        self.root_id
            .map(|id| (id, Path::new("")))
            .into_iter()
            .chain(self.paths.iter().map(|(id, p)| (*id, p.as_path())))
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut stack = vec![(self.root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if !meta.is_dir() {
                    continue;
                }
                let path = entry.path();
                if let Ok(rel) = path.strip_prefix(&self.root) {
                    self.paths.insert(meta.ino(), rel.to_owned());
                }
                if depth + 1 < MAX_DEPTH {
                    stack.push((path, depth + 1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_directories_by_inode() {
        let tmp =
            std::env::temp_dir().join(format!("podmeter-cgroups-test-{}", std::process::id()));
        let nested = tmp.join("default").join("web-1").join("app");
        std::fs::create_dir_all(&nested).expect("create test dirs");
        let ino = std::fs::metadata(&nested).expect("stat").ino();
        let mut index = CgroupIndex::new(&tmp);
        assert_eq!(index.path(ino), Some(Path::new("default/web-1/app")));
        assert!(index.exists(ino));
        std::fs::remove_dir_all(&tmp).expect("cleanup");
        assert!(!index.exists(ino));
        assert_eq!(
            index.path(ino),
            Some(Path::new("default/web-1/app")),
            "kept until forgotten"
        );
        assert!(index.forget_removed().contains(&ino));
        assert_eq!(index.path(ino), None);
    }

    #[test]
    fn a_cgroup_created_since_the_last_scan_is_not_gone() {
        let tmp =
            std::env::temp_dir().join(format!("podmeter-cgroups-gone-test-{}", std::process::id()));
        let first = tmp.join("default").join("pod-a");
        std::fs::create_dir_all(&first).expect("create test dirs");
        let mut index = CgroupIndex::new(&tmp);
        let first_ino = std::fs::metadata(&first).expect("stat").ino();
        assert!(index.path(first_ino).is_some(), "scanned");
        // Created right after that scan, within RESCAN_AFTER: unknown to the index, not gone.
        let second = tmp.join("default").join("pod-b");
        std::fs::create_dir_all(&second).expect("create test dir");
        let second_ino = std::fs::metadata(&second).expect("stat").ino();
        assert!(!index.gone(second_ino, Instant::now()));
        assert!(!index.gone(first_ino, Instant::now()));
        let listed = Instant::now();
        std::fs::remove_dir(&second).expect("remove test dir");
        assert!(index.gone(second_ino, listed));
        // An id in no scan at all.
        assert!(index.gone(u64::MAX, Instant::now()));
        std::fs::remove_dir_all(&tmp).expect("cleanup");
    }
}
