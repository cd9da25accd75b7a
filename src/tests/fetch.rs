//! Finding data on disk, and downloading it from mirrors served on 127.0.0.1, with the
//! checksum of the decompressed bytes verified.

use super::common::data_root;
use crate::data::fetch::{download, find_in, hex, RemoteFile};
use crate::data::DatasetKind;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A minimal HTTP/1.1 server: serves `files` by path, 404 otherwise; records requests.
fn serve(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            seen.lock().unwrap().push(path.clone());
            let (status, body) = match files.get(&path) {
                Some(b) => ("200 OK", b.clone()),
                None => ("404 Not Found", b"not here".to_vec()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    (format!("http://{addr}"), log)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn remote(name: &'static str, content: &[u8]) -> RemoteFile {
    RemoteFile {
        name,
        sha256: Box::leak(hex(&Sha256::digest(content)).into_boxed_str()),
    }
}

#[test]
fn downloads_from_the_first_mirror_with_the_right_content() {
    let good = crate::data::idx::encode_labels(&[1, 2, 3]);
    let file = remote("t10k-labels-idx1-ubyte", &good);
    // Mirror A is missing the file, mirror B serves different content, mirror C is right.
    let mut files = HashMap::new();
    files.insert(
        "/b/t10k-labels-idx1-ubyte.gz".to_string(),
        gzip(&crate::data::idx::encode_labels(&[9])),
    );
    files.insert("/c/t10k-labels-idx1-ubyte.gz".to_string(), gzip(&good));
    let (base, log) = serve(files);
    let mirrors = vec![
        format!("{base}/a/"),
        format!("{base}/b"),
        format!("{base}/c/"),
    ];
    let dir = tempfile::tempdir().unwrap();
    download(dir.path(), &[file], &mirrors).unwrap();
    let saved = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let content = crate::data::idx::read_maybe_gzip(&saved).unwrap();
    assert_eq!(content, good);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "/a/t10k-labels-idx1-ubyte.gz",
            "/b/t10k-labels-idx1-ubyte.gz",
            "/c/t10k-labels-idx1-ubyte.gz"
        ]
    );
    // Nothing but the file itself is left in the folder (no temporary files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A second call finds it and asks no mirror.
    download(dir.path(), &[file], &mirrors).unwrap();
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[test]
fn failure_reports_every_mirror_and_writes_nothing() {
    let file = remote("train-labels-idx1-ubyte", b"whatever");
    let mut files = HashMap::new();
    files.insert(
        "/bad/train-labels-idx1-ubyte.gz".to_string(),
        gzip(b"other bytes"),
    );
    let (base, _) = serve(files);
    // A closed port stands for being offline.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let mirrors = vec![closed.clone(), format!("{base}/bad/")];
    let dir = tempfile::tempdir().unwrap();
    let msg = download(dir.path(), &[file], &mirrors).unwrap_err();
    assert!(
        msg.contains("could not fetch train-labels-idx1-ubyte"),
        "{msg}"
    );
    assert!(msg.contains(&closed), "{msg}");
    assert!(msg.contains("checksum mismatch"), "{msg}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn finds_files_in_the_dataset_folder_or_the_root_raw_or_gzip() {
    let root = tempfile::tempdir().unwrap();
    assert!(find_in(root.path(), DatasetKind::Mnist).is_none());
    let sub = root.path().join("mnist");
    std::fs::create_dir(&sub).unwrap();
    for (i, n) in crate::data::fetch::FILE_NAMES.iter().enumerate() {
        let name = if i % 2 == 0 {
            format!("{n}.gz")
        } else {
            n.to_string()
        };
        std::fs::write(sub.join(name), b"x").unwrap();
    }
    let f = find_in(root.path(), DatasetKind::Mnist).unwrap();
    assert!(f.train_images.ends_with("mnist/train-images-idx3-ubyte.gz"));
    assert!(f.train_labels.ends_with("mnist/train-labels-idx1-ubyte"));
    // The files directly in the folder given also count.
    let f = find_in(&sub, DatasetKind::Mnist).unwrap();
    assert!(f.test_labels.ends_with("t10k-labels-idx1-ubyte"));
    // Fashion-MNIST is not found in an MNIST folder's parent.
    assert!(find_in(root.path(), DatasetKind::FashionMnist).is_none());
}

/// The checksums the downloader verifies must be those of the real files: all four of
/// each data set, images and labels.
#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn the_shipped_checksums_match_the_shared_copies() {
    let root = data_root();
    for kind in [DatasetKind::Mnist, DatasetKind::FashionMnist] {
        let files = find_in(&root, kind)
            .unwrap_or_else(|| panic!("{kind} missing under {}", root.display()));
        let paths = [
            files.train_images,
            files.train_labels,
            files.test_images,
            files.test_labels,
        ];
        for (path, remote) in paths.iter().zip(kind.files()) {
            let content = crate::data::idx::read_maybe_gzip(path).unwrap();
            assert_eq!(
                hex(&Sha256::digest(&content)),
                remote.sha256,
                "{}",
                path.display()
            );
        }
    }
}
