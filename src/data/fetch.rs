//! Finding the data set files, and downloading them when they are nowhere to be found.
//!
//! Where we look, in order: `--data DIR`, then `$CONVNET_DATA`, then the per-user cache
//! (`$XDG_CACHE_HOME/convnet` or `~/.cache/convnet`), then (Fashion-MNIST) Debian's
//! `/usr/share/datasets`. In each root the files may sit in `ROOT/<dataset>/` or in `ROOT/`
//! itself, raw or `.gz`. When missing, they are downloaded into `--data` when given, else into the cache; each mirror is tried in turn, the SHA-256 of the
//! *decompressed* bytes is checked (re-gzipped copies differ in their .gz bytes only), and
//! the file is written to a temporary name and renamed, so a failed download leaves nothing
//! half-written. `$CONVNET_MIRRORS` (comma-separated base URLs) replaces the mirror list.

use super::dataset::DatasetKind;
use super::idx::decompress_if_gzip;
use crate::Error;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file of a data set and the SHA-256 of its decompressed content.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    /// The file name without `.gz`.
    pub name: &'static str,
    /// The SHA-256 of its decompressed content, in hex.
    pub sha256: &'static str,
}

pub const FILE_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

impl DatasetKind {
    pub(crate) fn files(self) -> [RemoteFile; 4] {
        let sums = match self {
            DatasetKind::Mnist => [
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            ],
            DatasetKind::FashionMnist => [
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            ],
        };
        [0, 1, 2, 3].map(|i| RemoteFile {
            name: FILE_NAMES[i],
            sha256: sums[i],
        })
    }

    /// Base URLs that serve `<name>.gz`, tried in turn.
    pub(crate) fn mirrors(self) -> Vec<String> {
        if let Ok(list) = std::env::var("CONVNET_MIRRORS") {
            return list
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        let m: &[&str] = match self {
            DatasetKind::Mnist => &[
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                "https://storage.googleapis.com/cvdf-datasets/mnist/",
                "http://yann.lecun.com/exdb/mnist/",
            ],
            DatasetKind::FashionMnist => &[
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            ],
        };
        m.iter().map(|s| s.to_string()).collect()
    }
}

/// The four files of a data set, found on disk.
#[derive(Clone, Debug)]
pub struct DataFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

/// `$XDG_CACHE_HOME/convnet`, else `~/.cache/convnet`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("convnet"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("convnet"))
}

/// What one folder holds of a data set's four files.
#[derive(Debug, Default)]
struct Found {
    /// Each file's path, in `FILE_NAMES` order, when present.
    files: [Option<PathBuf>; 4],
    /// Entries where a file should be that are not readable files: a folder, a FIFO, a
    /// dangling link.
    bad: Vec<(PathBuf, &'static str)>,
}

impl Found {
    fn count(&self) -> usize {
        self.files.iter().filter(|f| f.is_some()).count()
    }
    fn complete(&self) -> Option<DataFiles> {
        match &self.files {
            [Some(a), Some(b), Some(c), Some(d)] => Some(DataFiles {
                train_images: a.clone(),
                train_labels: b.clone(),
                test_images: c.clone(),
                test_labels: d.clone(),
            }),
            _ => None,
        }
    }
    fn missing(&self) -> Vec<&'static str> {
        FILE_NAMES
            .iter()
            .zip(&self.files)
            .filter(|(_, f)| f.is_none())
            .map(|(n, _)| *n)
            .collect()
    }
}

/// What `dir` holds of the four files (raw or `.gz`).
fn scan(dir: &Path) -> Found {
    let mut found = Found::default();
    for (slot, name) in found.files.iter_mut().zip(FILE_NAMES) {
        for candidate in [dir.join(format!("{name}.gz")), dir.join(name)] {
            let Ok(link) = std::fs::symlink_metadata(&candidate) else {
                continue;
            };
            match std::fs::metadata(&candidate) {
                Ok(m) if m.is_file() => {
                    *slot = Some(candidate);
                    break;
                }
                Ok(m) if m.is_dir() => found.bad.push((candidate, "is a folder")),
                Ok(_) => found.bad.push((
                    candidate,
                    "is not a regular file (a FIFO, socket or device)",
                )),
                Err(_) if link.file_type().is_symlink() => found
                    .bad
                    .push((candidate, "is a link to a file that does not exist")),
                Err(_) => found.bad.push((candidate, "cannot be read")),
            }
        }
    }
    found
}

/// Where a data set was found: its folder and which search root that was.
#[derive(Clone, Debug)]
pub struct Source {
    /// The folder holding the files.
    pub dir: PathBuf,
    /// `--data`, `CONVNET_DATA`, `the cache`, ...
    pub origin: String,
}

/// Looks for all four files in `root/<dataset>/`, then in `root/`.
pub fn find_in(root: &Path, kind: DatasetKind) -> Option<DataFiles> {
    [root.join(kind.dir_name()), root.to_path_buf()]
        .iter()
        .find_map(|d| scan(d).complete())
}

/// The folder of `root` that holds some of the data set's files (`root/<dataset>/` first),
/// with what it holds; an error for an entry that is not a readable file.
fn scan_root(root: &Path, kind: DatasetKind) -> Result<(PathBuf, Found), Error> {
    let mut best = (root.join(kind.dir_name()), Found::default());
    for dir in [root.join(kind.dir_name()), root.to_path_buf()] {
        let found = scan(&dir);
        if let Some((path, why)) = found.bad.first() {
            return Err(Error::data(
                path,
                format!("{why}: expected the IDX file of {kind} there (raw or .gz)"),
            ));
        }
        if found.count() > best.1.count() {
            best = (dir, found);
        }
    }
    Ok(best)
}

/// Finds the data set, downloading what is missing, and says where it came from.
///
/// `--data DIR` (when given) is the only place looked in: it must be a folder, and files it
/// lacks are downloaded into it. Otherwise `$CONVNET_DATA` (which must be a folder, and
/// hold all four files if it holds any), then the cache folder, then Debian's copy of
/// Fashion-MNIST; what none holds is downloaded into the cache.
pub fn locate(kind: DatasetKind, flag: Option<&Path>) -> Result<(DataFiles, Source), Error> {
    let source = |dir: &Path, origin: &str| Source {
        dir: dir.to_path_buf(),
        origin: origin.to_string(),
    };
    if let Some(root) = flag {
        if !root.exists() {
            return Err(Error::data(
                root,
                "does not exist (--data): name the folder that holds the data set, or create it to download the data set into it",
            ));
        }
        if !root.is_dir() {
            return Err(Error::data(root, "is not a folder (--data)"));
        }
        let (dir, found) = scan_root(root, kind)?;
        if let Some(files) = found.complete() {
            return Ok((files, source(&dir, "--data")));
        }
        return fetch_into(kind, &dir, &found, "--data");
    }
    if let Some(env) = std::env::var_os("CONVNET_DATA").filter(|v| !v.is_empty()) {
        let root = PathBuf::from(env);
        if !root.is_dir() {
            return Err(Error::data(
                &root,
                "is not a folder (from CONVNET_DATA): set it to the folder holding the data sets, or unset it",
            ));
        }
        let (dir, found) = scan_root(&root, kind)?;
        if let Some(files) = found.complete() {
            return Ok((files, source(&dir, "CONVNET_DATA")));
        }
        if found.count() > 0 {
            return Err(Error::data(
                &dir,
                format!(
                    "holds only {} of the 4 files of {kind} (from CONVNET_DATA); missing: {}",
                    found.count(),
                    found.missing().join(", ")
                ),
            ));
        }
    }
    let cache = cache_dir();
    if let Some(cache) = &cache {
        if cache.is_dir() {
            let (dir, found) = scan_root(cache, kind)?;
            if let Some(files) = found.complete() {
                return Ok((files, source(&dir, "the cache")));
            }
        }
    }
    if kind == DatasetKind::FashionMnist {
        let debian = Path::new("/usr/share/datasets");
        if let Some(files) = find_in(debian, kind) {
            return Ok((
                files,
                source(
                    &debian.join(kind.dir_name()),
                    "Debian's dataset-fashion-mnist",
                ),
            ));
        }
    }
    let Some(cache) = cache else {
        return Err(Error::Fetch(missing_message(
            kind,
            "no folder to download into (HOME is not set): pass --data DIR",
        )));
    };
    let dir = cache.join(kind.dir_name());
    let found = if dir.is_dir() {
        scan(&dir)
    } else {
        Found::default()
    };
    fetch_into(kind, &dir, &found, "the cache")
}

/// Downloads the files `found` lacks into `dir` and returns the complete set.
fn fetch_into(
    kind: DatasetKind,
    dir: &Path,
    found: &Found,
    origin: &str,
) -> Result<(DataFiles, Source), Error> {
    let missing = found.missing();
    let _ = writeln!(
        std::io::stderr(),
        "{kind}: {} not found in {} ({origin}); downloading",
        missing.join(", "),
        dir.display()
    );
    let wanted: Vec<RemoteFile> = kind
        .files()
        .into_iter()
        .filter(|f| missing.contains(&f.name))
        .collect();
    download(dir, &wanted, &kind.mirrors()).map_err(|why| {
        Error::Fetch(missing_message(
            kind,
            &format!("into {}: {why}", dir.display()),
        ))
    })?;
    let files = scan(dir).complete().ok_or_else(|| {
        Error::Fetch(missing_message(
            kind,
            "download finished but files are missing",
        ))
    })?;
    Ok((
        files,
        Source {
            dir: dir.to_path_buf(),
            origin: format!("downloaded into {origin}"),
        },
    ))
}

fn missing_message(kind: DatasetKind, why: &str) -> String {
    let mut m =
        format!("the {kind} data set was not found and could not be downloaded:\n  {why}\n");
    m.push_str("Expected files (raw or .gz):\n");
    for n in FILE_NAMES {
        m.push_str(&format!("  {n}\n"));
    }
    m.push_str(&format!(
        "To fix: put the files in a folder (e.g. DIR/{}/), then pass --data DIR or set CONVNET_DATA=DIR;\n\
         or connect to the internet and run again (mirrors: {}), or set CONVNET_MIRRORS to a mirror you can reach.",
        kind.dir_name(),
        kind.mirrors().join(", ")
    ));
    m
}

/// Downloads every file that `dest` lacks from the first mirror that serves it with the
/// right checksum. Returns a description of every failure when a file cannot be had.
pub fn download(dest: &Path, files: &[RemoteFile], mirrors: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(60))
        .build();
    for f in files {
        if scan(dest).files[FILE_NAMES.iter().position(|n| *n == f.name).unwrap_or(0)].is_some() {
            continue;
        }
        let mut failures = Vec::new();
        let mut done = false;
        for base in mirrors {
            let url = format!(
                "{}{}.gz",
                if base.ends_with('/') {
                    base.clone()
                } else {
                    format!("{base}/")
                },
                f.name
            );
            match fetch_verified(&agent, &url, f) {
                Ok(body) => {
                    // Keep the bytes as served; name them by what they are.
                    let gz = body.starts_with(&[0x1f, 0x8b]);
                    let path = dest.join(if gz {
                        format!("{}.gz", f.name)
                    } else {
                        f.name.to_string()
                    });
                    crate::fsutil::write_atomic(&path, &body).map_err(|e| e.to_string())?;
                    let _ = writeln!(
                        std::io::stderr(),
                        "  {url} -> {} (sha256 ok)",
                        path.display()
                    );
                    done = true;
                    break;
                }
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        if !done {
            return Err(format!(
                "could not fetch {}:\n    {}",
                f.name,
                failures.join("\n    ")
            ));
        }
    }
    Ok(())
}

fn fetch_verified(agent: &ureq::Agent, url: &str, f: &RemoteFile) -> Result<Vec<u8>, String> {
    let resp = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(200 << 20)
        .read_to_end(&mut body)
        .map_err(|e| format!("download interrupted: {e}"))?;
    let content = decompress_if_gzip(body.clone(), Path::new(url)).map_err(|e| e.to_string())?;
    let sum = hex(&Sha256::digest(&content));
    if sum != f.sha256 {
        return Err(format!(
            "checksum mismatch: sha256 of the content is {sum}, expected {}",
            f.sha256
        ));
    }
    Ok(body)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
