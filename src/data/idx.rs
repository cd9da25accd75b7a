//! The IDX format of LeCun et al. (raw or gzip-compressed).
//!
//! Images: magic 0x00000803, then count, rows, cols (big-endian u32), then count*rows*cols
//! bytes. Labels: magic 0x00000801, then count, then count bytes.
//! Every check names the file and what was wrong.

use crate::Error;
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

pub const IMAGES_MAGIC: u32 = 0x0000_0803;
pub const LABELS_MAGIC: u32 = 0x0000_0801;

#[derive(Clone, Debug, PartialEq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

/// Reads a file, decompressing it when it starts with the gzip magic bytes.
pub fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, Error> {
    let raw = crate::fsutil::read_capped(path, MAX_IDX_BYTES)?;
    decompress_if_gzip(raw, path)
}

/// The most bytes an IDX file may decompress to (MNIST's largest is 47 MB): a gzip bomb
/// is refused rather than filling the memory.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// `raw` decompressed when it starts with the gzip magic bytes, else as it is.
pub fn decompress_if_gzip(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>, Error> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(MAX_IDX_BYTES as usize));
    MultiGzDecoder::new(&raw[..])
        .take(MAX_IDX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::data(
                path,
                format!("is not a valid gzip file ({e}); delete it and it will be fetched again"),
            )
        })?;
    if out.len() as u64 > MAX_IDX_BYTES {
        return Err(Error::data(
            path,
            format!(
                "decompresses to more than {} MiB: not an IDX file of this tool's size",
                MAX_IDX_BYTES >> 20
            ),
        ));
    }
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn check_header(
    bytes: &[u8],
    path: &Path,
    magic: u32,
    header: usize,
    what: &str,
) -> Result<(), Error> {
    let too_short = || {
        Error::data(
            path,
            format!(
                "is {} bytes long, too short for an IDX {what} header ({header} bytes)",
                bytes.len()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(too_short());
    }
    let found = be_u32(bytes, 0);
    if found != magic {
        let hint = match found {
            IMAGES_MAGIC => " (this is an images file)",
            LABELS_MAGIC => " (this is a labels file)",
            _ => "",
        };
        return Err(Error::data(
            path,
            format!("magic number is 0x{found:08x}, expected 0x{magic:08x} for IDX {what}{hint}"),
        ));
    }
    if bytes.len() < header {
        return Err(too_short());
    }
    Ok(())
}

pub fn parse_images(bytes: &[u8], path: &Path) -> Result<IdxImages, Error> {
    check_header(bytes, path, IMAGES_MAGIC, 16, "images")?;
    let (count, rows, cols) = (
        be_u32(bytes, 4) as usize,
        be_u32(bytes, 8) as usize,
        be_u32(bytes, 12) as usize,
    );
    if count == 0 || rows == 0 || cols == 0 {
        return Err(Error::data(
            path,
            format!("header says {count} images of {rows}x{cols}; none may be zero"),
        ));
    }
    let Some(expected) = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .and_then(|n| n.checked_add(16))
    else {
        return Err(Error::data(
            path,
            format!("header says {count} images of {rows}x{cols}: more bytes than any file holds"),
        ));
    };
    if bytes.len() != expected {
        return Err(Error::data(
            path,
            format!(
                "is {} bytes long; its header ({count} images of {rows}x{cols}) needs exactly {expected}{}",
                bytes.len(),
                if bytes.len() < expected { " (truncated?)" } else { "" }
            ),
        ));
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

pub fn parse_labels(bytes: &[u8], path: &Path, classes: usize) -> Result<Vec<u8>, Error> {
    check_header(bytes, path, LABELS_MAGIC, 8, "labels")?;
    let count = be_u32(bytes, 4) as usize;
    if bytes.len() != 8 + count {
        return Err(Error::data(
            path,
            format!(
                "is {} bytes long; its header ({count} labels) needs exactly {}",
                bytes.len(),
                8 + count
            ),
        ));
    }
    let labels = bytes[8..].to_vec();
    if let Some((i, &bad)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(Error::data(
            path,
            format!("label {i} is {bad}, expected 0..={}", classes - 1),
        ));
    }
    Ok(labels)
}

/// Writes an images file (tests make fixtures with it).
#[cfg(test)]
pub fn encode_images(rows: usize, cols: usize, pixels: &[u8]) -> Vec<u8> {
    let count = pixels.len() / (rows * cols);
    let mut out = Vec::with_capacity(16 + pixels.len());
    for v in [IMAGES_MAGIC, count as u32, rows as u32, cols as u32] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    out
}

#[cfg(test)]
pub fn encode_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    out.extend_from_slice(labels);
    out
}
