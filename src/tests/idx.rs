//! The IDX reader on fixtures made here: valid raw and gzip files, and each way a file
//! can be wrong. Every error must name the file and say what was expected.

use crate::data::idx::{encode_images, encode_labels, parse_images, parse_labels, read_maybe_gzip};
use crate::data::Dataset;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn digits() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

fn err_text(r: Result<impl std::fmt::Debug, crate::Error>) -> String {
    r.expect_err("should be rejected").to_string()
}

#[test]
fn reads_raw_and_gzip_files_alike() {
    let dir = tempfile::tempdir().unwrap();
    let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
    let images = encode_images(4, 5, &pixels);
    let labels = encode_labels(&[3, 1, 4]);
    let raw = Dataset::from_files(
        &write(dir.path(), "i", &images),
        &write(dir.path(), "l", &labels),
        digits(),
    )
    .unwrap();
    let gz = Dataset::from_files(
        &write(dir.path(), "i.gz", &gzip(&images)),
        &write(dir.path(), "l.gz", &gzip(&labels)),
        digits(),
    )
    .unwrap();
    for ds in [&raw, &gz] {
        assert_eq!((ds.len(), ds.rows, ds.cols), (3, 4, 5));
        assert_eq!(ds.labels, vec![3, 1, 4]);
        assert_eq!(ds.image(2), &pixels[40..60]);
    }
}

#[test]
fn wrong_magic_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let labels = write(dir.path(), "labels-as-images", &encode_labels(&[1, 2]));
    let msg = err_text(parse_images(&read_maybe_gzip(&labels).unwrap(), &labels));
    assert!(msg.contains("labels-as-images"), "{msg}");
    assert!(
        msg.contains("magic number is 0x00000801, expected 0x00000803"),
        "{msg}"
    );
    assert!(msg.contains("this is a labels file"), "{msg}");
}

#[test]
fn truncated_and_overlong_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let images = encode_images(2, 2, &[0; 12]);
    let short = write(dir.path(), "short", &images[..images.len() - 1]);
    let msg = err_text(parse_images(&std::fs::read(&short).unwrap(), &short));
    assert!(
        msg.contains("short") && msg.contains("needs exactly 28") && msg.contains("truncated"),
        "{msg}"
    );
    let mut long = images.clone();
    long.push(0);
    let msg = err_text(parse_images(&long, Path::new("long")));
    assert!(msg.contains("is 29 bytes long"), "{msg}");
    let msg = err_text(parse_images(&images[..10], Path::new("tiny")));
    assert!(msg.contains("too short for an IDX images header"), "{msg}");
    let labels = encode_labels(&[1, 2, 3]);
    let msg = err_text(parse_labels(&labels[..9], Path::new("lab"), 10));
    assert!(
        msg.contains("its header (3 labels) needs exactly 11"),
        "{msg}"
    );
}

#[test]
fn zero_dimensions_and_bad_labels_are_rejected() {
    let mut images = encode_images(2, 2, &[0; 4]);
    images[8..12].copy_from_slice(&0u32.to_be_bytes());
    let msg = err_text(parse_images(&images, Path::new("zero")));
    assert!(msg.contains("none may be zero"), "{msg}");
    let msg = err_text(parse_labels(
        &encode_labels(&[1, 10, 2]),
        Path::new("lab"),
        10,
    ));
    assert!(msg.contains("label 1 is 10, expected 0..=9"), "{msg}");
}

#[test]
fn mismatched_image_and_label_counts_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let i = write(dir.path(), "imgs", &encode_images(2, 2, &[0; 12]));
    let l = write(dir.path(), "labs", &encode_labels(&[1, 2]));
    let msg = err_text(Dataset::from_files(&i, &l, digits()));
    assert!(
        msg.contains("labs") && msg.contains("has 2 labels but") && msg.contains("has 3 images"),
        "{msg}"
    );
}

#[test]
fn corrupt_gzip_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = gzip(&encode_labels(&[1, 2, 3]));
    let n = gz.len();
    gz.truncate(n - 6);
    let p = write(dir.path(), "broken.gz", &gz);
    let msg = err_text(read_maybe_gzip(&p));
    assert!(
        msg.contains("broken.gz") && msg.contains("not a valid gzip file"),
        "{msg}"
    );
}
