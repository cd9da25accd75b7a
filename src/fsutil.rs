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
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
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
