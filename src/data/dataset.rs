//! Data sets in memory: u8 images and labels, loaded once; batches are normalised f32.

use super::fetch;
use super::idx::{parse_images, parse_labels, read_maybe_gzip};
use crate::seed::{derive_seed, STREAM_AUGMENT};
use crate::spec::Normalize;
use crate::Error;
use std::path::Path;

/// The data sets convnet knows how to find, download and verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Handwritten digits 0-9 (LeCun et al.).
    Mnist,
    /// Zalando's clothing images, ten classes.
    FashionMnist,
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<DatasetKind, String> {
        match s {
            "mnist" => Ok(DatasetKind::Mnist),
            "fashion-mnist" | "fashion_mnist" | "fashion" => Ok(DatasetKind::FashionMnist),
            _ => Err(format!(
                "unknown dataset `{s}`: expected mnist or fashion-mnist"
            )),
        }
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

impl DatasetKind {
    /// The folder name under a data root (`mnist`, `fashion-mnist`).
    pub fn dir_name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }

    /// The class names, by label.
    pub fn class_names(self) -> Vec<String> {
        match self {
            DatasetKind::Mnist => (0..10).map(|d| d.to_string()).collect(),
            DatasetKind::FashionMnist => [
                "T-shirt/top",
                "Trouser",
                "Pullover",
                "Dress",
                "Coat",
                "Sandal",
                "Shirt",
                "Sneaker",
                "Bag",
                "Ankle boot",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }
}

/// A data set in memory: grey images, one byte per pixel (0 the background), and labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Every image's pixels, one after another.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// The class names, by label.
    pub class_names: Vec<String>,
}

/// Training, validation and test sets. Validation is the tail of the training file.
pub struct Splits {
    /// The data set they come from.
    pub kind: DatasetKind,
    /// The training images.
    pub train: Dataset,
    /// The last `val_size` images of the training file.
    pub val: Dataset,
    /// The test file.
    pub test: Dataset,
    /// Where the files were found: `DIR (--data)`, `DIR (CONVNET_DATA)`, ...
    pub source: String,
}

impl Splits {
    /// Finds (or downloads) a data set and splits off the last 5,000 training images for
    /// validation: `$CONVNET_DATA`, then the cache folder, then a verified download.
    pub fn load(kind: DatasetKind) -> Result<Splits, Error> {
        load_splits(kind, None, 5000)
    }

    /// `load` from the folder `data_dir` first (`DIR/<dataset>/` or `DIR/`), with
    /// `val_size` validation images.
    pub fn load_from(
        kind: DatasetKind,
        data_dir: Option<&Path>,
        val_size: usize,
    ) -> Result<Splits, Error> {
        load_splits(kind, data_dir, val_size)
    }
}

impl Dataset {
    /// Loads an images file and its labels file (raw or gzip), checking they agree.
    pub fn from_files(
        images: &Path,
        labels: &Path,
        class_names: Vec<String>,
    ) -> Result<Dataset, Error> {
        let img = parse_images(&read_maybe_gzip(images)?, images)?;
        let lab = parse_labels(&read_maybe_gzip(labels)?, labels, class_names.len())?;
        if img.count != lab.len() {
            return Err(Error::data(
                labels,
                format!(
                    "has {} labels but {} has {} images",
                    lab.len(),
                    images.display(),
                    img.count
                ),
            ));
        }
        Ok(Dataset {
            rows: img.rows,
            cols: img.cols,
            images: img.pixels,
            labels: lab,
            class_names,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.pixels_per_image();
        &self.images[i * n..(i + 1) * n]
    }

    /// Splits off the last `n` images as a new data set.
    pub fn split_off_tail(&mut self, n: usize) -> Dataset {
        let keep = self.len() - n;
        Dataset {
            rows: self.rows,
            cols: self.cols,
            images: self.images.split_off(keep * self.pixels_per_image()),
            labels: self.labels.split_off(keep),
            class_names: self.class_names.clone(),
        }
    }

    /// The first `n` images (for quick runs and tests).
    pub fn truncate(&mut self, n: usize) {
        let n = n.min(self.len());
        self.images.truncate(n * self.pixels_per_image());
        self.labels.truncate(n);
    }

    /// Writes the normalised pixels of the images `indices` into `out` (NCHW, one channel)
    /// and their labels into `labels`.
    pub fn fill_batch(
        &self,
        indices: &[u32],
        lut: &PixelLut,
        out: &mut [f32],
        labels: &mut Vec<u8>,
    ) {
        let n = self.pixels_per_image();
        labels.clear();
        for (&i, dst) in indices.iter().zip(out.chunks_mut(n)) {
            for (d, &p) in dst.iter_mut().zip(self.image(i as usize)) {
                *d = lut.0[p as usize];
            }
            labels.push(self.labels[i as usize]);
        }
    }
}

/// Random shifts and rotations of training images (applied per image, seeded).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Up to this many pixels along each axis.
    pub shift: f32,
    /// Up to this many degrees either way.
    pub rotate: f32,
    /// Mirror left-right with probability 1/2 (clothing, not digits).
    pub flip: bool,
}

impl Augment {
    pub fn is_off(&self) -> bool {
        self.shift == 0.0 && self.rotate == 0.0 && !self.flip
    }
}

impl Dataset {
    /// Like `fill_batch`, but each image is first rotated about its centre and shifted by
    /// random amounts drawn from a generator seeded by (`seed`, position in the batch), and
    /// resampled bilinearly (outside the image is background, 0). Labels are unchanged.
    pub fn fill_batch_augmented(
        &self,
        indices: &[u32],
        norm: Normalize,
        aug: Augment,
        seed: u64,
        out: &mut [f32],
        labels: &mut Vec<u8>,
    ) {
        use rand::{Rng, SeedableRng};
        use rayon::prelude::*;
        let (w, h) = (self.cols, self.rows);
        let isa = crate::kernels::simd::detect();
        labels.clear();
        labels.extend(indices.iter().map(|&i| self.labels[i as usize]));
        out.par_chunks_mut(w * h)
            .zip(indices.par_iter())
            .enumerate()
            .for_each(|(j, (dst, &i))| {
                let mut rng =
                    rand_pcg::Pcg64Mcg::seed_from_u64(derive_seed(seed, STREAM_AUGMENT, j as u64));
                let angle = (rng.gen_range(-1.0f32..=1.0) * aug.rotate).to_radians();
                let (tx, ty) = (
                    rng.gen_range(-1.0f32..=1.0) * aug.shift,
                    rng.gen_range(-1.0f32..=1.0) * aug.shift,
                );
                let flip = aug.flip && rng.gen::<bool>();
                let (sin, cos) = angle.sin_cos();
                let warp = Warp {
                    w,
                    h,
                    cos,
                    sin,
                    tx,
                    ty,
                    flip,
                    norm,
                };
                warp_image(isa, &warp, self.image(i as usize), dst);
            });
    }
}

/// One image's random transform: flip, then rotate by the angle whose sine and cosine these
/// are, then shift, about the image's centre.
pub(crate) struct Warp {
    w: usize,
    h: usize,
    cos: f32,
    sin: f32,
    tx: f32,
    ty: f32,
    flip: bool,
    norm: Normalize,
}

crate::kernels::simd::on_best_isa! {
    /// Writes the normalised, transformed image, bilinearly sampled (zero outside). Compiled
    /// per instruction set so `floor` is one instruction, not a call into libm; the same
    /// float operations in the same order on every copy, so the same bits.
    fn warp_image(warp: &Warp, img: &[u8], dst: &mut [f32]) {
        let Warp { w, h, cos, sin, tx, ty, flip, norm } = *warp;
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let px = |x: i64, y: i64| -> f32 {
            if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
                0.0
            } else {
                img[y as usize * w + x as usize] as f32
            }
        };
        for y in 0..h {
            for x in 0..w {
                // Where this output pixel comes from: the inverse of flip, rotate, shift.
                let xs = if flip { w - 1 - x } else { x };
                let (dx, dy) = (xs as f32 - cx - tx, y as f32 - cy - ty);
                let u = cos * dx + sin * dy + cx;
                let v = -sin * dx + cos * dy + cy;
                let (x0, y0) = (u.floor(), v.floor());
                let (fx, fy) = (u - x0, v - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let val = px(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + px(x0 + 1, y0) * fx * (1.0 - fy)
                    + px(x0, y0 + 1) * (1.0 - fx) * fy
                    + px(x0 + 1, y0 + 1) * fx * fy;
                dst[y * w + x] = (val - norm.mean) / norm.scale;
            }
        }
    }
}

/// The normalised value of each of the 256 pixel values.
pub struct PixelLut(pub [f32; 256]);

impl PixelLut {
    pub fn new(norm: Normalize) -> PixelLut {
        let mut t = [0.0; 256];
        for (v, t) in t.iter_mut().enumerate() {
            *t = (v as f32 - norm.mean) / norm.scale;
        }
        PixelLut(t)
    }
}

/// Finds (or downloads) a data set and splits it: the last `val_size` training images
/// form the validation set; the t10k file is the test set.
pub fn load_splits(
    kind: DatasetKind,
    data_dir: Option<&Path>,
    val_size: usize,
) -> Result<Splits, Error> {
    let (files, source) = fetch::locate(kind, data_dir)?;
    let names = kind.class_names();
    let mut train = Dataset::from_files(&files.train_images, &files.train_labels, names.clone())?;
    let test = Dataset::from_files(&files.test_images, &files.test_labels, names)?;
    if val_size >= train.len() {
        return Err(Error::Config(format!(
            "--val-size {val_size} leaves no training images (the training file has {})",
            train.len()
        )));
    }
    let val = train.split_off_tail(val_size);
    Ok(Splits {
        kind,
        train,
        val,
        test,
        source: format!("{} ({})", source.dir.display(), source.origin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled copy of the warp gives the baseline's bits, across flips, angles and
    /// shifts that send samples off the image.
    #[test]
    fn every_isa_copy_of_the_warp_gives_the_same_bits() {
        let (w, h) = (28, 28);
        let img: Vec<u8> = (0..w * h).map(|i| (i * 37 % 251) as u8).collect();
        let norm = Normalize {
            mean: 33.3,
            scale: 78.5,
        };
        for (k, &(deg, tx, ty)) in [(0.0f32, 0.0, 0.0), (9.7, 1.3, -2.0), (-15.0, 3.5, 0.25)]
            .iter()
            .enumerate()
        {
            let (sin, cos) = deg.to_radians().sin_cos();
            let warp = Warp {
                w,
                h,
                cos,
                sin,
                tx,
                ty,
                flip: k % 2 == 1,
                norm,
            };
            let mut base = vec![0.0f32; w * h];
            warp_image(None, &warp, &img, &mut base);
            if deg == 0.0 {
                let plain: Vec<f32> = img.iter().map(|&p| (p as f32 - 33.3) / 78.5).collect();
                assert_eq!(base, plain, "no transform is the plain normalisation");
            }
            for isa in crate::kernels::simd::supported() {
                let mut out = vec![1.0f32; w * h];
                warp_image(Some(isa), &warp, &img, &mut out);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out), bits(&base), "{isa:?}, case {k}");
            }
        }
    }
}
