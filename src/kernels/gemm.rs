//! The single place that calls a GEMM crate.
//!
//! `sgemm` computes `C = alpha * op(A) * op(B) + beta * C` on row-major slices, where
//! `op(A)` is `m x k` and `op(B)` is `k x n`. With `a_trans`, `A` is stored as `k x m`;
//! with `b_trans`, `B` is stored as `n x k`. Transposes are only strides: nothing is copied.
//!
//! All calls are single-threaded: parallelism comes from the layers, which split the
//! batch into fixed chunks, so results do not depend on the thread count.
//! Which crate is used was decided by `cargo bench --bench gemm` on the layer shapes of
//! the seed network; see BENCHMARKS.md.

/// The GEMM crates we can call. `DEFAULT` is the one the layers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `matrixmultiply`: BLIS-style packing, AVX2/FMA kernels chosen at run time.
    MatrixMultiply,
    /// `gemm` (faer's kernels): AVX2 and AVX-512 kernels chosen at run time.
    Gemm,
}

impl Backend {
    /// The one the layers use.
    pub const DEFAULT: Backend = Backend::Gemm;
    /// Every backend, for benchmarks and tests.
    pub const ALL: [Backend; 2] = [Backend::MatrixMultiply, Backend::Gemm];

    /// The crate's name.
    pub fn crate_name(self) -> &'static str {
        match self {
            Backend::MatrixMultiply => "matrixmultiply",
            Backend::Gemm => "gemm",
        }
    }
}

/// `C = alpha * op(A) * op(B) + beta * C` with the default backend, contiguous matrices.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_trans: bool,
    b: &[f32],
    b_trans: bool,
    beta: f32,
    c: &mut [f32],
) {
    sgemm_with(
        Backend::DEFAULT,
        m,
        k,
        n,
        alpha,
        a,
        a_trans,
        b,
        b_trans,
        beta,
        c,
    )
}

/// `sgemm` with an explicit backend (benchmarks and tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    backend: Backend,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_trans: bool,
    b: &[f32],
    b_trans: bool,
    beta: f32,
    c: &mut [f32],
) {
    let lda = if a_trans { m } else { k };
    let ldb = if b_trans { k } else { n };
    sgemm_ld(
        backend,
        m,
        k,
        n,
        alpha,
        (a, lda, a_trans),
        (b, ldb, b_trans),
        beta,
        (c, n),
    )
}

/// The general form: each matrix is `(slice, leading dimension, transposed)`, where the
/// leading dimension is the distance between consecutive stored rows. This lets a layer
/// work on a block of columns of a larger matrix without copying it.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_ld(
    backend: Backend,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    (a, lda, a_trans): (&[f32], usize, bool),
    (b, ldb, b_trans): (&[f32], usize, bool),
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // Stored shapes: A is m x k (or k x m when transposed), B is k x n (or n x k).
    let (a_rows, a_cols) = if a_trans { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if b_trans { (n, k) } else { (k, n) };
    let needed = |rows: usize, cols: usize, ld: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * ld + cols
        }
    };
    assert!(
        lda >= a_cols && a.len() >= needed(a_rows, a_cols, lda),
        "sgemm: A too small"
    );
    assert!(
        ldb >= b_cols && b.len() >= needed(b_rows, b_cols, ldb),
        "sgemm: B too small"
    );
    assert!(
        ldc >= n && c.len() >= needed(m, n, ldc),
        "sgemm: C too small"
    );
    let (rsa, csa) = if a_trans {
        (1, lda as isize)
    } else {
        (lda as isize, 1)
    };
    let (rsb, csb) = if b_trans {
        (1, ldb as isize)
    } else {
        (ldb as isize, 1)
    };
    let (rsc, csc) = (ldc as isize, 1isize);
    if k == 0 {
        for row in c.chunks_mut(ldc).take(m) {
            for v in &mut row[..n] {
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return;
    }
    // SAFETY: the asserts above guarantee every index the strides reach is in bounds.
    unsafe {
        match backend {
            Backend::MatrixMultiply => matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha,
                a.as_ptr(),
                rsa,
                csa,
                b.as_ptr(),
                rsb,
                csb,
                beta,
                c.as_mut_ptr(),
                rsc,
                csc,
            ),
            // The gemm crate computes dst = alpha*dst + beta*lhs*rhs (names swapped).
            Backend::Gemm => gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                csc,
                rsc,
                beta != 0.0,
                a.as_ptr(),
                csa,
                rsa,
                b.as_ptr(),
                csb,
                rsb,
                beta,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            ),
        }
    }
}

/// Plain triple loop, the reference the fast paths are tested against.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub fn sgemm_reference(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    a_trans: bool,
    b: &[f32],
    b_trans: bool,
    beta: f32,
    c: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                let av = if a_trans { a[p * m + i] } else { a[i * k + p] };
                let bv = if b_trans { b[j * k + p] } else { b[p * n + j] };
                acc += av as f64 * bv as f64;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta * c[i * n + j]
            };
            c[i * n + j] = alpha * acc as f32 + old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn backends_match_reference_for_every_transpose() {
        let mut s = 7u64;
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 9, 33), (64, 72, 196)] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
                let c0: Vec<f32> = (0..m * n).map(|_| lcg(&mut s)).collect();
                let mut want = c0.clone();
                sgemm_reference(m, k, n, 0.7, &a, ta, &b, tb, 0.3, &mut want);
                for backend in Backend::ALL {
                    let mut got = c0.clone();
                    sgemm_with(backend, m, k, n, 0.7, &a, ta, &b, tb, 0.3, &mut got);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() < 1e-4,
                            "{backend:?} {m}x{k}x{n} {ta} {tb}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_garbage_in_c() {
        let a = [1.0, 2.0];
        let b = [3.0, 4.0];
        for backend in Backend::ALL {
            let mut c = [f32::NAN];
            sgemm_with(backend, 1, 2, 1, 1.0, &a, false, &b, false, 0.0, &mut c);
            assert_eq!(c[0], 11.0, "{backend:?}");
        }
    }
}
