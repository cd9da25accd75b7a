//! One seed drives every random choice of a run. Each purpose draws from its own stream,
//! derived from (seed, stream, index), so adding a random choice in one place never shifts
//! the numbers drawn in another, and a resumed run draws exactly what it would have.

/// Weight initialisation.
pub const STREAM_INIT: u64 = 1;
/// The order of the training images, per epoch.
pub const STREAM_SHUFFLE: u64 = 2;
/// Everything random within one training iteration (augmentation, dropout), per iteration.
pub const STREAM_ITERATION: u64 = 3;
/// Augmentation of one image of a batch, from its iteration's seed.
pub const STREAM_AUGMENT: u64 = 7;
/// The dropout mask of one chunk of a batch, from the layer's seed.
pub const STREAM_DROPOUT: u64 = 11;
/// A layer's seed for one iteration, from the iteration's seed.
pub const STREAM_LAYER: u64 = 100;

/// A seed for purpose `stream`, item `index`, derived from `seed` (SplitMix64).
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03)
        ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
