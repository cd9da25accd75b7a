//! Property tests: thousands of random mutations of valid IDX files, model files, model
//! specs and images, fed to the readers the command line uses. None may panic; every
//! failure must be an `Error` of the kind its input calls for. (A panic fails the case,
//! and proptest shrinks it to a small reproduction.)

use crate::data::idx::{
    decompress_if_gzip, encode_images, encode_labels, parse_images, parse_labels,
};
use crate::data::preprocess::{decode_image, preprocess_as, Style};
use crate::engine::Network;
use crate::model::Model;
use crate::spec::ModelSpec;
use crate::Error;
use proptest::prelude::*;
use std::io::Write;
use std::path::Path;

/// Cases per property; `CONVNET_FUZZ_CASES` runs more (`.ci/run` keeps the default).
fn cases(default: u32) -> u32 {
    std::env::var("CONVNET_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    /// Set the byte at (position modulo length).
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Cut the bytes at (position modulo length + 1).
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Overwrite four bytes with a big-endian number (IDX sizes).
    Word(usize, u32),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Edit::Set(p, v)),
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, v)| Edit::Insert(p, v)),
        (
            any::<usize>(),
            prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()]
        )
            .prop_map(|(p, v)| Edit::Word(p, v)),
    ]
}

fn apply(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Set(p, v) if !b.is_empty() => b[p % n] = *v,
            Edit::Flip(p, bit) if !b.is_empty() => b[p % n] ^= 1 << bit,
            Edit::Truncate(p) => b.truncate(p % (n + 1)),
            Edit::Insert(p, v) => {
                let at = p % (b.len() + 1);
                b.splice(at..at, v.iter().copied());
            }
            Edit::Word(p, v) if b.len() >= 4 => {
                let at = (p % (b.len() / 4)) * 4;
                b[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(3000), failure_persistence: None, ..ProptestConfig::default() })]

    /// IDX images and labels, raw and gzipped, mutated: an `Error::Data` or a parse whose
    /// sizes agree with its bytes.
    #[test]
    fn mutated_idx_files_parse_or_are_refused(edits in prop::collection::vec(edit(), 1..6), gz in any::<bool>()) {
        let path = Path::new("fuzz.idx");
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| i as u8).collect();
        for valid in [encode_images(4, 5, &pixels), encode_labels(&[1, 2, 9])] {
            let source = if gz { gzip(&valid) } else { valid.clone() };
            let bytes = apply(&source, &edits);
            match decompress_if_gzip(bytes, path) {
                Ok(raw) => {
                    match parse_images(&raw, path) {
                        Ok(img) => prop_assert_eq!(img.pixels.len(), img.count * img.rows * img.cols),
                        Err(e) => prop_assert!(matches!(e, Error::Data { .. }), "{e:?}"),
                    }
                    match parse_labels(&raw, path, 10) {
                        Ok(l) => prop_assert!(l.iter().all(|&v| v < 10)),
                        Err(e) => prop_assert!(matches!(e, Error::Data { .. }), "{e:?}"),
                    }
                }
                Err(e) => prop_assert!(matches!(e, Error::Data { .. }), "{e:?}"),
            }
        }
    }

    /// Model specs with one field set to any value (or a line cut): resolved, built and
    /// initialised, or refused with `Error::Spec` / `Error::Config`.
    #[test]
    fn mutated_model_specs_build_or_are_refused(
        line in 0usize..40,
        value in prop_oneof![
            Just("0".to_string()), Just("-1".to_string()), Just("nan".to_string()), Just("inf".to_string()),
            Just("1e30".to_string()), Just("99999999999".to_string()), Just("18446744073709551615".to_string()),
            Just("\"conv3d\"".to_string()), Just("\"../x\"".to_string()), Just("[1, 0, 28]".to_string()),
            (0u64..100_000).prop_map(|v| v.to_string()),
            (-2.0f64..3.0).prop_map(|v| format!("{v}")),
        ],
        cut in any::<bool>(),
    ) {
        let text = ModelSpec::preset("cnn-plus").unwrap().to_toml();
        let lines: Vec<&str> = text.lines().collect();
        let at = line % lines.len();
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        if cut {
            edited.remove(at);
        } else if let Some((key, _)) = lines[at].split_once(" = ") {
            edited[at] = format!("{key} = {value}");
        }
        let result = ModelSpec::from_toml(&edited.join("\n"), "fuzz.toml")
            .and_then(|spec| Network::build(&spec));
        if let Err(e) = result {
            prop_assert!(matches!(e, Error::Spec(_) | Error::Config(_)), "{e:?}");
        }
    }

    /// Model files with their bytes mutated: a model whose every weight is finite, or
    /// `Error::Model` (or a spec error from its metadata).
    #[test]
    fn mutated_model_files_load_or_are_refused(edits in prop::collection::vec(edit(), 1..4)) {
        thread_local! {
            static VALID: Vec<u8> = {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("m.safetensors");
                let net = Network::build(&ModelSpec::preset("mlp").unwrap()).unwrap();
                Model::from_network(net, None).save(&path).unwrap();
                std::fs::read(&path).unwrap()
            };
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, VALID.with(|v| apply(v, &edits))).unwrap();
        match Model::load(&path) {
            Ok(m) => {
                for l in m.network().layers() {
                    for p in l.params() {
                        prop_assert!(p.value.iter().all(|v| v.is_finite()));
                    }
                }
            }
            Err(e) => prop_assert!(
                matches!(e, Error::Model { .. } | Error::Spec(_) | Error::Config(_)),
                "{e:?}"
            ),
        }
    }

    /// PNG and JPEG bytes mutated: decoded and prepared (28x28, a valid ink box), or
    /// `Error::Data` / a sentence saying why there is no digit.
    #[test]
    fn mutated_images_decode_or_are_refused(edits in prop::collection::vec(edit(), 1..5), jpeg in any::<bool>()) {
        thread_local! {
            static VALID: (Vec<u8>, Vec<u8>) = {
                let img = image::RgbaImage::from_fn(48, 40, |x, y| {
                    let ink = (12..36).contains(&x) && (8..32).contains(&y) && (x + y) % 7 < 3;
                    image::Rgba(if ink { [20, 20, 20, 255] } else { [250, 250, 245, 255] })
                });
                let img = image::DynamicImage::ImageRgba8(img);
                let mut png = Vec::new();
                img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
                let mut jpg = Vec::new();
                image::DynamicImage::ImageRgb8(img.to_rgb8())
                    .write_to(&mut std::io::Cursor::new(&mut jpg), image::ImageFormat::Jpeg)
                    .unwrap();
                (png, jpg)
            };
        }
        let bytes = VALID.with(|(png, jpg)| apply(if jpeg { jpg } else { png }, &edits));
        match decode_image(&bytes, Path::new("fuzz.png")) {
            Ok(img) => {
                if let Ok(p) = preprocess_as(&img, 28, Style::Digit) {
                    prop_assert_eq!(p.pixels.len(), 28 * 28);
                    prop_assert!(p.ink_box.0 < p.ink_box.2 && p.ink_box.1 < p.ink_box.3);
                }
            }
            Err(e) => prop_assert!(matches!(e, Error::Data { .. } | Error::Io { .. }), "{e:?}"),
        }
    }
}
