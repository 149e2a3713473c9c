//! Writes a whole file atomically and durably: the one way the workspace replaces a file that
//! must never be seen torn or lost (the device's token and settings, the server's API keys,
//! the verifier's keyring).
//!
//! The steps, each named in the error when it fails: a temporary file is created beside the
//! target (same directory, so the rename cannot cross file systems) with `create_new` and a
//! chosen mode (0600 unless told otherwise, set exactly whatever the umask), written,
//! `fsync`ed, renamed over the target (or hard-linked, for [`Options::create_new`]), and the
//! directory is `fsync`ed so the rename itself survives a power cut. On any failure the
//! temporary file is removed and the target is as it was.
//!
//! The temporary file's name is unique to the process and thread writing
//! ([`temp_path`]), so two writers of one target never share a temporary file; a file of that
//! name can only be left by a crashed process that had the same id, and is removed first.
//! A writer killed mid-write (kill -9, power cut) leaves its temporary file, which may hold a
//! secret; every write therefore also removes the temporary files of the same target whose
//! process is no longer alive (on Linux, no `/proc/PID`; a live process's are never touched,
//! and without `/proc` none are).
//!
//! [`state_dir`] is the other half of how the workspace keeps its files: *where* (the state
//! directory both programs look up by one rule). It lives here rather than in a crate of its
//! own because every program that writes there already depends on this crate.
//!
//! Standard library only, and licensed like the verifier (MIT or Apache-2.0), so every crate
//! of the workspace may use it without crossing the licence line.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

mod state_dir;

pub use state_dir::state_dir;

/// The step of a write that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Removing a temporary file left by a crashed writer.
    RemoveStale,
    /// Creating the temporary file.
    Create,
    /// Setting the temporary file's mode.
    SetMode,
    /// Writing the temporary file.
    Write,
    /// `fsync` of the temporary file.
    Sync,
    /// Renaming the temporary file over the target.
    Replace,
    /// Linking the temporary file as the target ([`Options::create_new`]); the error's kind
    /// is [`io::ErrorKind::AlreadyExists`] when the target exists.
    Link,
    /// `fsync` of the directory.
    SyncDir,
}

impl Step {
    /// What the step does, as a verb phrase for messages ("cannot {action} {path}").
    pub fn action(self) -> &'static str {
        match self {
            Step::RemoveStale => "remove a stale temporary file",
            Step::Create => "create",
            Step::SetMode => "set the mode of",
            Step::Write => "write",
            Step::Sync => "fsync",
            Step::Replace => "replace",
            Step::Link => "create",
            Step::SyncDir => "fsync the directory",
        }
    }
}

/// A write that failed: which step, on which path (the temporary file, the target or the
/// directory), and the I/O error. The target is unchanged unless the step is
/// [`Step::SyncDir`] (then the new file is in place but may not survive a power cut).
#[derive(Debug)]
pub struct Error {
    step: Step,
    path: PathBuf,
    source: io::Error,
}

impl Error {
    /// The step that failed.
    pub fn step(&self) -> Step {
        self.step
    }

    /// The path the step worked on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The I/O error.
    pub fn io(&self) -> &io::Error {
        &self.source
    }

    /// The I/O error, owned.
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The I/O error is the `source()`, not repeated here (`{:#}` in anyhow would print
        // it twice).
        write!(f, "cannot {} {}", self.step.action(), self.path.display())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// How to write: the new file's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    mode: u32,
}

impl Default for Options {
    /// Mode 0600: owner read and write only, for files that hold secrets.
    fn default() -> Self {
        Options { mode: 0o600 }
    }
}

/// Replaces `path` with `bytes`, mode 0600 ([`Options::replace`] with the defaults).
///
/// # Errors
/// [`Error`] naming the step that failed; the old file is then unchanged.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    Options::default().replace(path, bytes)
}

impl Options {
    /// Options with the default mode, 0600.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mode the new file gets (on Unix; set exactly, the umask does not apply).
    #[must_use]
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Replaces `path` with `bytes`: readers see the old file or the new one, never a torn
    /// one, even after a crash or power cut.
    ///
    /// # Errors
    /// [`Error`] naming the step that failed; the temporary file is removed and the old file
    /// is unchanged (unless the step is [`Step::SyncDir`]).
    pub fn replace(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.write_temp(path, bytes)?;
        if let Err(source) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error {
                step: Step::Replace,
                path: path.to_path_buf(),
                source,
            });
        }
        sync_dir(path)
    }

    /// Creates `path` with `bytes` only if it does not exist yet, atomically: of two writers
    /// racing to create it, exactly one succeeds and the other's file never appears.
    ///
    /// # Errors
    /// [`Error`] with [`Step::Link`] and kind [`io::ErrorKind::AlreadyExists`] when `path`
    /// exists (it is left as it is); other steps as in [`Options::replace`].
    pub fn create_new(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let tmp = self.write_temp(path, bytes)?;
        // A hard link fails if the target exists, where a rename would replace it.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|source| Error {
            step: Step::Link,
            path: path.to_path_buf(),
            source,
        })?;
        sync_dir(path)
    }

    /// Writes `bytes` to the temporary file of `path` and fsyncs it; removes it on failure.
    fn write_temp(&self, path: &Path, bytes: &[u8]) -> Result<PathBuf, Error> {
        let tmp = temp_path(path);
        let at = |step, source| Error {
            step,
            path: tmp.clone(),
            source,
        };
        // Only a crashed process with our id can have left a file of this name.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(Step::RemoveStale, e)),
        }
        remove_dead_writers_files(path);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(self.mode);
        }
        let mut file = options.open(&tmp).map_err(|e| at(Step::Create, e))?;
        let written = self
            .set_mode(&file)
            .map_err(|e| at(Step::SetMode, e))
            .and_then(|()| file.write_all(bytes).map_err(|e| at(Step::Write, e)))
            .and_then(|()| file.sync_all().map_err(|e| at(Step::Sync, e)));
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    #[cfg(unix)]
    fn set_mode(&self, file: &File) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        // The umask can only remove bits; set the mode exactly.
        file.set_permissions(fs::Permissions::from_mode(self.mode))
    }

    #[cfg(not(unix))]
    fn set_mode(&self, _file: &File) -> io::Result<()> {
        Ok(())
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = parent(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| Error {
            step: Step::SyncDir,
            path: dir.to_path_buf(),
            source,
        })
}

/// Removes the temporary files of `path` (`.NAME.PID-THREAD.tmp`) left by processes that are
/// no longer alive. Best effort: a file that cannot be listed or removed is left (the write
/// itself matters more), and a process whose life cannot be checked counts as alive.
fn remove_dead_writers_files(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = fs::read_dir(parent(path)) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|rest| rest.split_once('-'))
            .filter(|(_, thread)| thread.parse::<u64>().is_ok())
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && !alive(pid) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether process `pid` may be alive: `/proc/PID` exists, or there is no `/proc` to tell.
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// The temporary file this thread writes `path` through: `.NAME.PID-THREAD.tmp` beside it,
/// unique among live writers (each thread writes one file at a time). Public so tests can
/// put something in its way.
pub fn temp_path(path: &Path) -> PathBuf {
    static NEXT_THREAD: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
    }
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let thread = THREAD.with(|t| *t);
    parent(path).join(format!(".{name}.{}-{thread}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn replaces_whole_files_privately_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["file"]);
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn the_chosen_mode_is_set_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("public");
        Options::new().mode(0o644).replace(&path, b"x").unwrap();
        assert_eq!(mode(&path), 0o644);
        // A file that was more open becomes private when rewritten with the default.
        write(&path, b"y").unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn a_failed_write_names_its_step_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // No such directory: the temporary file cannot be created.
        let err = write(&dir.path().join("missing/file"), b"x").unwrap_err();
        assert_eq!(err.step(), Step::Create);
        assert_eq!(err.io().kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("cannot create "), "{err}");

        // The rename fails (the target is a non-empty directory): the temporary file is gone
        // and the target is untouched.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"keep").unwrap();
        let err = write(&target, b"x").unwrap_err();
        assert_eq!(err.step(), Step::Replace);
        assert_eq!(err.path(), target);
        assert_eq!(names(dir.path()), ["taken"]);
        assert_eq!(fs::read(target.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn something_in_the_temporary_files_way_is_an_error_and_the_old_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        write(&path, b"old").unwrap();
        let tmp = temp_path(&path);
        fs::create_dir(&tmp).unwrap();
        let err = write(&path, b"new").unwrap_err();
        assert_eq!(err.step(), Step::RemoveStale);
        assert_eq!(err.path(), tmp);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        // A stale temporary file (a crashed writer's) is simply replaced.
        fs::remove_dir(&tmp).unwrap();
        fs::write(&tmp, b"half").unwrap();
        write(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["file"]);
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        Options::new().create_new(&path, b"first").unwrap();
        let err = Options::new().create_new(&path, b"second").unwrap_err();
        assert_eq!(err.step(), Step::Link);
        assert_eq!(err.io().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["key"]);
    }

    #[test]
    fn threads_write_through_their_own_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        let here = temp_path(&path);
        let there = std::thread::scope(|s| s.spawn(|| temp_path(&path)).join().unwrap());
        assert_ne!(here, there);
        assert_eq!(here.parent(), Some(dir.path()));
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write(path, &[i; 64]).unwrap();
                    }
                });
            }
        });
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 64);
        assert!(bytes.iter().all(|b| *b == bytes[0]));
        assert_eq!(names(dir.path()), ["shared"]);
    }

    /// The pid of a process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_dead_writers_temporary_files_are_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.toml");
        let dead = dead_pid();
        let left = dir.path().join(format!(".token.toml.{dead}-3.tmp"));
        fs::write(&left, b"secret").unwrap();
        // Our own process is alive: another thread's file of ours is kept.
        let live = dir
            .path()
            .join(format!(".token.toml.{}-999.tmp", std::process::id()));
        fs::write(&live, b"busy").unwrap();
        // Another target's and a foreign name are not ours to touch.
        let other = dir.path().join(format!(".settings.toml.{dead}-0.tmp"));
        fs::write(&other, b"x").unwrap();
        let odd = dir.path().join(format!(".token.toml.{dead}-x.tmp"));
        fs::write(&odd, b"x").unwrap();
        write(&path, b"new").unwrap();
        let mut expected = vec![
            "token.toml".to_owned(),
            live.file_name().unwrap().to_string_lossy().into_owned(),
            other.file_name().unwrap().to_string_lossy().into_owned(),
            odd.file_name().unwrap().to_string_lossy().into_owned(),
        ];
        expected.sort();
        assert_eq!(names(dir.path()), expected);
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        assert_eq!(temp_path(Path::new("f")).parent(), Some(Path::new(".")));
    }
}
