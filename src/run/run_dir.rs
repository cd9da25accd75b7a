//! The files of a run folder. Training writes them; everything else only reads them.

use crate::Error;
use std::path::{Path, PathBuf};

/// Everything needed to resume: weights, optimiser state, config, where the run is.
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The model after the epoch with the best validation accuracy.
pub const BEST: &str = "best.safetensors";
/// The model at the end of training.
pub const MODEL: &str = "model.safetensors";
/// Every setting of the run, the seed and the model spec.
pub const CONFIG: &str = "config.toml";
/// One row per epoch, appended as training goes.
pub const METRICS: &str = "metrics.csv";
/// One row per training batch.
pub const STEPS: &str = "steps.csv";
/// Written when the run diverged (sweeps read it to skip the trial).
pub const DIVERGED: &str = "DIVERGED";
/// The wall-clock times of the last checkpoint, which the checkpoint itself leaves out.
pub const TIMES: &str = "checkpoint.times";

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Refuses a folder that holds files of a run already.
pub fn check_fresh(dir: &Path) -> Result<(), Error> {
    let files = run_files_in(dir);
    if files.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} already holds a run ({}): nothing there is overwritten; choose another --out, or continue \
         it with --resume {}",
        dir.display(),
        files.join(", "),
        dir.display()
    )))
}

/// A fresh run folder: `out` when given (it must not hold a run yet), else a new one
/// under `runs/` named after the time and `name`. Created on disk.
pub fn create_run_dir(out: Option<&Path>, name: &str) -> Result<PathBuf, Error> {
    let dir = match out {
        Some(d) => {
            if d.exists() && !d.is_dir() {
                return Err(Error::Config(format!(
                    "--out {} is not a folder",
                    d.display()
                )));
            }
            // A process training there says so (exit 7) before the files say it holds a run.
            if d.join(LOCK).exists() {
                drop(RunLock::acquire(d)?);
            }
            check_fresh(d)?;
            d.to_path_buf()
        }
        None => {
            let base = PathBuf::from("runs").join(format!("{}-{name}", timestamp()));
            let mut dir = base.clone();
            let mut k = 2;
            while dir.exists() {
                dir = PathBuf::from(format!("{}-{k}", base.display()));
                k += 1;
            }
            dir
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// The lock file of a run folder: its pid while a process trains into the folder.
pub const LOCK: &str = ".convnet.lock";

/// The files a training writes; a folder holding any of them already holds a run.
pub const RUN_FILES: &[&str] = &[
    CONFIG,
    METRICS,
    STEPS,
    CHECKPOINT,
    TIMES,
    BEST,
    MODEL,
    DIVERGED,
    "curves.png",
    "curves.svg",
];

/// The convnet files `dir` holds already.
pub fn run_files_in(dir: &Path) -> Vec<&'static str> {
    RUN_FILES
        .iter()
        .copied()
        .filter(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
        .collect()
}

/// A run folder held by this process: an exclusive `flock` on its `.convnet.lock`, which
/// holds the pid. The kernel releases the lock when the process dies, however it dies, so a
/// lock file left by a killed run is stale and is simply taken over; the file is removed
/// when the run ends.
pub struct RunLock {
    file: std::fs::File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the folder, or says which process has it.
    pub fn acquire(dir: &Path) -> Result<RunLock, Error> {
        use std::io::{Read, Seek, Write};
        let path = dir.join(LOCK);
        loop {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            if !try_lock(&file) {
                // The holder writes its pid right after it takes the lock: give it up to
                // 100 ms to appear before saying "another process".
                let mut holder = String::new();
                for _ in 0..50 {
                    holder.clear();
                    let _ = file.rewind().and_then(|_| file.read_to_string(&mut holder));
                    if !holder.trim().is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                return Err(Error::Busy(format!(
                    "{} is in use by {who}, which is training into it; wait for it to finish, or choose another folder",
                    dir.display()
                )));
            }
            // The previous holder may have removed the file between our open and our lock:
            // then we locked a file nobody else sees, and must try again.
            if !same_file(&file, &path) {
                continue;
            }
            let me = format!("{} on {}\n", std::process::id(), hostname());
            file.set_len(0).map_err(|e| Error::io(&path, e))?;
            file.rewind().map_err(|e| Error::io(&path, e))?;
            file.write_all(me.as_bytes())
                .map_err(|e| Error::io(&path, e))?;
            return Ok(RunLock { file, path });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so no one can take a file that is about to vanish.
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this process owns.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

#[cfg(not(unix))]
fn try_lock(_file: &std::fs::File) -> bool {
    true
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &std::fs::File, _path: &Path) -> bool {
    true
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this machine".into())
}

/// Removes what interrupted writes left in `dir`: `.<name>.<token>.<pid>.tmp` files of processes
/// no longer running (a write in progress is a temporary file until renamed).
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.rsplit('.').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || !process_alive(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a process with this pid runs on this machine.
pub fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    // SAFETY: signal 0 only checks that the process exists.
    unsafe {
        libc::kill(pid as i32, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}
