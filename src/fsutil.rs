//! Writing files so that nothing already on disk is lost: a temporary file in the same
//! folder, flushed, then renamed over the old one.

use crate::Error;
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same folder, flushed to disk
/// and then renamed: a crash or a full disk leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", unique(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable; not every platform lets a folder be synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A token no other write in flight shares: processes on other machines writing into a
/// shared (NFS) folder may have the same pid, and threads of this one the same file.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TAG: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let tag = TAG.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // A 64-bit mix of the clock and the pid (splitmix64's finaliser).
        let mut z = now ^ ((std::process::id() as u64) << 32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    });
    format!("{tag:016x}-{}", COUNT.fetch_add(1, Ordering::Relaxed))
}

/// Reads a whole file of at most `max` bytes; a folder, a device or a larger file is an
/// error naming it, not an attempt to fill the memory.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::data(path, "is not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::data(
            path,
            format!(
                "is {} MiB, more than the {} MiB this tool reads",
                meta.len() >> 20,
                max >> 20
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
