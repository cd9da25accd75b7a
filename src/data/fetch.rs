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
use std::io::Read;
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

/// The roots searched, in order, with where each came from.
pub fn search_roots(kind: DatasetKind, flag: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    let mut roots = Vec::new();
    if let Some(d) = flag {
        roots.push((d.to_path_buf(), "--data"));
    }
    if let Some(d) = std::env::var_os("CONVNET_DATA").filter(|v| !v.is_empty()) {
        roots.push((PathBuf::from(d), "CONVNET_DATA"));
    }
    if let Some(d) = cache_dir() {
        roots.push((d, "cache"));
    }
    if kind == DatasetKind::FashionMnist {
        roots.push((
            PathBuf::from("/usr/share/datasets"),
            "Debian package dataset-fashion-mnist",
        ));
    }
    roots
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Looks for all four files in `root/<dataset>/`, then in `root/`.
pub fn find_in(root: &Path, kind: DatasetKind) -> Option<DataFiles> {
    for dir in [root.join(kind.dir_name()), root.to_path_buf()] {
        let found: Vec<PathBuf> = FILE_NAMES
            .iter()
            .filter_map(|n| find_file(&dir, n))
            .collect();
        if let [a, b, c, d] = &found[..] {
            return Some(DataFiles {
                train_images: a.clone(),
                train_labels: b.clone(),
                test_images: c.clone(),
                test_labels: d.clone(),
            });
        }
    }
    None
}

/// Finds the data set, downloading it when no search root has it.
pub fn locate(kind: DatasetKind, flag: Option<&Path>) -> Result<DataFiles, Error> {
    let roots = search_roots(kind, flag);
    if let Some(files) = roots.iter().find_map(|(r, _)| find_in(r, kind)) {
        return Ok(files);
    }
    // Download into the folder the user named with --data, else into the cache (a
    // CONVNET_DATA folder may be shared and read-only).
    let target = flag.map(Path::to_path_buf).or_else(cache_dir);
    let Some(root) = target.as_ref() else {
        return Err(Error::Fetch(missing_message(
            kind,
            &roots,
            "no folder to download into (HOME is not set)",
        )));
    };
    let dest = root.join(kind.dir_name());
    eprintln!("{kind} not found; downloading into {}", dest.display());
    download(&dest, &kind.files(), &kind.mirrors())
        .map_err(|why| Error::Fetch(missing_message(kind, &roots, &why)))?;
    find_in(root, kind).ok_or_else(|| {
        Error::Fetch(missing_message(
            kind,
            &roots,
            "download finished but files are missing",
        ))
    })
}

fn missing_message(kind: DatasetKind, roots: &[(PathBuf, &str)], why: &str) -> String {
    let mut m =
        format!("the {kind} data set was not found and could not be downloaded:\n  {why}\n");
    m.push_str("Looked in:\n");
    for (r, from) in roots {
        m.push_str(&format!(
            "  {}/{} and {} ({from})\n",
            r.display(),
            kind.dir_name(),
            r.display()
        ));
    }
    m.push_str("Expected files (raw or .gz):\n");
    for n in FILE_NAMES {
        m.push_str(&format!("  {n}\n"));
    }
    m.push_str(&format!(
        "To fix: put the files in one of those folders (e.g. DIR/{}/), then pass --data DIR or set CONVNET_DATA=DIR;\n\
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
        if find_file(dest, f.name).is_some() {
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
                    eprintln!("  {url} -> {} (sha256 ok)", path.display());
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
