//! Data sets in memory: batches and their seeded augmentation.

use super::common::data_root;
use crate::data::dataset::{load_splits, Augment, PixelLut};
use crate::data::DatasetKind;
use crate::spec::Normalize;

#[test]
#[cfg_attr(
    not(convnet_data),
    ignore = "needs the data sets: set CONVNET_DATA=DIR"
)]
fn augmentation_keeps_labels_and_image_statistics() {
    let splits = load_splits(DatasetKind::Mnist, Some(&data_root()), 1000).unwrap();
    let ds = &splits.test;
    let idx: Vec<u32> = (0..64).collect();
    let norm = Normalize {
        mean: 0.0,
        scale: 255.0,
    };
    let lut = PixelLut::new(norm);
    let (mut plain, mut labels) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch(&idx, &lut, &mut plain, &mut labels);
    let off = Augment {
        shift: 0.0,
        rotate: 0.0,
        flip: false,
    };
    let (mut same, mut l2) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, off, 1, &mut same, &mut l2);
    assert_eq!(labels, l2);
    assert!(
        plain.iter().zip(&same).all(|(a, b)| (a - b).abs() < 1e-6),
        "no augmentation is the identity"
    );
    let aug = Augment {
        shift: 2.0,
        rotate: 10.0,
        flip: false,
    };
    let (mut a, mut la) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, aug, 1, &mut a, &mut la);
    assert_eq!(labels, la, "labels are unchanged");
    assert_ne!(a, plain, "images changed");
    for (i, (img, orig)) in a.chunks(784).zip(plain.chunks(784)).enumerate() {
        let (m1, m0) = (img.iter().sum::<f32>(), orig.iter().sum::<f32>());
        assert!((m1 / m0 - 1.0).abs() < 0.1, "image {i}: ink {m1} vs {m0}");
        assert!(img.iter().all(|v| (0.0..=1.0001).contains(v)));
    }
    let (mut b, mut lb) = (vec![0.0; 64 * 784], Vec::new());
    ds.fill_batch_augmented(&idx, norm, aug, 1, &mut b, &mut lb);
    assert_eq!(a, b, "the same seed gives the same batch");
    ds.fill_batch_augmented(&idx, norm, aug, 2, &mut b, &mut lb);
    assert_ne!(a, b, "another seed another batch");
    // Flips mirror whole images: every image equals the original or its mirror.
    let flip = Augment {
        shift: 0.0,
        rotate: 0.0,
        flip: true,
    };
    ds.fill_batch_augmented(&idx, norm, flip, 3, &mut b, &mut lb);
    let mut mirrored = 0;
    for (img, orig) in b.chunks(784).zip(plain.chunks(784)) {
        let mirror: Vec<f32> = orig
            .chunks(28)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        let same = img.iter().zip(orig).all(|(a, b)| (a - b).abs() < 1e-6);
        let flipped = img.iter().zip(&mirror).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(same || flipped);
        mirrored += usize::from(flipped && !same);
    }
    assert!(
        (16..=48).contains(&mirrored),
        "about half are mirrored: {mirrored} of 64"
    );
}
