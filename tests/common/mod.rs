//! Shared by the command-line tests: running the binary, reading its output, tiny data
//! sets written on the spot.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_convnet");

/// Runs `convnet` with `args`.
pub fn convnet(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// (stdout, stderr).
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The data sets' folder (`CONVNET_DATA`), for tests that need them.
pub fn data() -> String {
    let d = std::env::var("CONVNET_DATA").expect("CONVNET_DATA must point at the data sets");
    assert!(
        Path::new(&d).join("mnist").is_dir(),
        "CONVNET_DATA={d} has no mnist/"
    );
    d
}

/// An IDX images file: `count` images of `rows` x `cols`.
pub fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0x0000_0803u32, count, rows, cols] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| ((i * 7) % 251) as u8));
    b
}

/// An IDX labels file: `count` labels cycling through 0-9.
pub fn idx_labels(count: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0x0000_0801u32, count] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    b.extend((0..count).map(|i| (i % 10) as u8));
    b
}

/// Writes a tiny MNIST-shaped data set (`n` images of 28x28 in each split) into `dir`.
pub fn fake_mnist(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx_images(n, 28, 28)).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx_labels(n)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(n, 28, 28)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx_labels(n)).unwrap();
}

/// `convnet ARGS` with the data set in `data` and nothing else to find or download.
pub fn offline(data: &Path, args: &[&str]) -> Output {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Command::new(BIN)
        .args(args)
        .env("CONVNET_DATA", data)
        .env("XDG_CACHE_HOME", data.join("no-cache"))
        .env("CONVNET_MIRRORS", format!("http://{closed}/"))
        .output()
        .expect("the binary runs")
}

/// The SHA-256 of a file, in hex.
pub fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
