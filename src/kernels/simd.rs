//! The few vector operations the direct convolution kernels need, over the CPU's widest
//! float vectors: AVX-512 (16 lanes) or AVX2 + FMA (8 lanes), chosen at run time, so users
//! need no build flags. Machines with neither (or not x86-64) take the im2col + GEMM path.
//!
//! A kernel is written once, generic over `Lanes`, marked `#[inline(always)]`, and
//! compiled into one function per instruction set (`#[target_feature]`), where the
//! intrinsics below inline into plain vector instructions.

/// Which vector unit the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 16 float lanes.
    Avx512,
    /// 8 float lanes, with fused multiply-add.
    Avx2,
}

impl Isa {
    /// Floats in one vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Isa::Avx512 => "AVX-512",
            Isa::Avx2 => "AVX2+FMA",
        })
    }
}

/// The vector unit the kernels run on: the best this CPU has, or `None`; or the one named
/// by `CONVNET_SIMD` (`avx512`, `avx2`, or `off` for im2col + GEMM everywhere; `reference`
/// runs the readable layers of `nn/` instead of any kernel), to measure or rule out a
/// path. Read once per process.
pub fn detect() -> Option<Isa> {
    static CHOSEN: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let all = supported();
        let wanted = std::env::var("CONVNET_SIMD").ok();
        match wanted.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("auto") => all.first().copied(),
            Some("off") | Some("none") | Some("reference") => None,
            Some(name) => {
                let isa = match name {
                    "avx512" | "avx-512" => Some(Isa::Avx512),
                    "avx2" => Some(Isa::Avx2),
                    _ => None,
                };
                match isa {
                    Some(isa) if all.contains(&isa) => Some(isa),
                    _ => {
                        eprintln!(
                            "warning: CONVNET_SIMD={name} ignored: this CPU offers {}; expected one of those, off, reference or auto",
                            names(&all)
                        );
                        all.first().copied()
                    }
                }
            }
        }
    })
}

/// "AVX-512, AVX2+FMA", or "no vector kernels".
fn names(all: &[Isa]) -> String {
    if all.is_empty() {
        return "no vector kernels".into();
    }
    let names: Vec<String> = all.iter().map(|i| i.to_string()).collect();
    names.join(", ")
}

/// Every vector unit this CPU can run, widest first (the tests run each).
pub fn supported() -> Vec<Isa> {
    [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .filter(|&i| has(i))
        .collect()
}

/// Whether this CPU can run `isa` (the standard library caches the answer).
pub fn has(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// Defines `$avx512` and `$avx2`: the generic `$generic::<S, ...>` compiled once for each
/// instruction set (`#[target_feature]`), so the `Lanes` intrinsics inline into it.
/// Optional const parameters pass through.
macro_rules! isa_copies {
    ($avx512:ident, $avx2:ident = $generic:ident $(<const $c:ident: $ct:ty>)? (
        $($arg:ident: $ty:ty),* $(,)?
    )) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx512 $(<const $c: $ct>)? ($($arg: $ty),*) {
            $generic::<crate::kernels::simd::Avx512 $(, $c)?>($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2 $(<const $c: $ct>)? ($($arg: $ty),*) {
            $generic::<crate::kernels::simd::Avx2 $(, $c)?>($($arg),*)
        }
    };
}
pub(crate) use isa_copies;

/// Calls the copy for `isa` of a pair of per-ISA functions (as `isa_copies!` makes) with
/// `args`, inside `unsafe`: the caller vouches for the arguments and that `isa` is on this
/// CPU.
macro_rules! call_isa_copy {
    ($isa:expr, $avx512:ident, $avx2:ident ($($arg:expr),* $(,)?)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::simd::Isa::Avx512 => $avx512($($arg),*),
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::simd::Isa::Avx2 => $avx2($($arg),*),
            #[allow(unreachable_patterns)]
            isa => unreachable!("no vector kernels for {isa:?} on this target"),
        }
    };
}
pub(crate) use call_isa_copy;

/// Defines `fn $name(isa, args)` whose body is compiled three times — for AVX-512, for AVX2
/// and for the baseline — and runs the copy for `isa` (`simd::detect()` in use; a test runs
/// every one the CPU has). The compiler vectorises the plain loops below for each; float
/// operations are never reordered, so every copy gives the same bits.
macro_rules! on_best_isa {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub(crate) fn $name(isa: Option<$crate::kernels::simd::Isa>, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                body($($arg),*)
            }
            if let Some(isa) = isa {
                assert!($crate::kernels::simd::has(isa), "{isa:?} is not on this CPU");
            }
            match isa {
                // SAFETY: the CPU has the instruction set (checked above).
                #[cfg(target_arch = "x86_64")]
                Some($crate::kernels::simd::Isa::Avx512) => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Some($crate::kernels::simd::Isa::Avx2) => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use on_best_isa;

/// Most lanes of any vector type here: buffers the kernels read or write in whole
/// vectors are rounded up to a multiple of this.
pub const MAX_LANES: usize = 16;

/// `n` rounded up to whole vectors of the widest kind.
pub fn round_up(n: usize) -> usize {
    n.div_ceil(MAX_LANES) * MAX_LANES
}

/// Asks for the cache line holding `p` in the core's L1, ready to be written: a store
/// that misses L1 waits for the line, and a kernel writing many streams of an
/// L2-sized buffer stalls on those waits unless the lines are asked for ahead.
/// Nothing is read or written; any address is allowed.
#[inline(always)]
pub(crate) fn prefetch_write(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect but on the caches.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        _mm_prefetch::<_MM_HINT_ET0>(p.cast::<i8>())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A float vector type. All functions are unsafe: they may only run on a CPU with the
/// instruction set, and the pointers must be valid for `LANES` floats.
pub(crate) trait Lanes {
    const LANES: usize;
    type V: Copy;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// a * b + c, rounded once.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// The sum of the lanes.
    unsafe fn reduce(v: Self::V) -> f32;
    /// The first `n` values at `p` (`n < LANES`), zero in the other lanes, which are not
    /// read.
    unsafe fn load_first(p: *const f32, n: usize) -> Self::V;
    unsafe fn add(a: Self::V, b: Self::V) -> Self::V;
    unsafe fn sub(a: Self::V, b: Self::V) -> Self::V;
    /// Stores the first `n` lanes at `p` (`n <= LANES`); the memory past them is not
    /// touched.
    unsafe fn store_first(p: *mut f32, v: Self::V, n: usize);
    /// `a0 b0 a1 b1 ...`: the lanes of `a` and `b` alternating, as two vectors.
    unsafe fn interleave(a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// max(v, 0) per lane, +0 for -0 and NaN (as `if v > 0 { v } else { 0 }`).
    unsafe fn relu(v: Self::V) -> Self::V;
    /// `v` where `m > 0`, else 0 (a ReLU's backward, `m` its output).
    unsafe fn where_positive(v: Self::V, m: Self::V) -> Self::V;
    /// `a` where `a > b`, else `b`, per lane (MAXPS: `b` when either is NaN).
    unsafe fn max(a: Self::V, b: Self::V) -> Self::V;
    /// `a` where `x > y`, else `b`, per lane.
    unsafe fn select_gt(x: Self::V, y: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// The even- and odd-numbered values of the `2 * LANES` values `a` then `b`.
    unsafe fn deinterleave(a: Self::V, b: Self::V) -> (Self::V, Self::V);
    /// 0, 1, 2, ... in the lanes.
    unsafe fn iota() -> Self::V;
    /// Stores the lanes, whole numbers below 2^24, as `u32`.
    unsafe fn store_u32(p: *mut u32, v: Self::V);
    /// The first `n` `u32` at `p` (`n <= LANES`, each below 2^24) as floats, zero in the
    /// other lanes, which are not read.
    unsafe fn load_u32_first(p: *const u32, n: usize) -> Self::V;
    /// `a` where `x == y`, else `b`, per lane.
    unsafe fn select_eq(x: Self::V, y: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Lane indices for `permute`, from the first `LANES` of `from`.
    type Idx: Copy;
    unsafe fn indices(from: &[u32; MAX_LANES]) -> Self::Idx;
    /// Lane `j` of the result is lane `idx[j]` of `v` (`idx[j] < LANES`).
    unsafe fn permute(v: Self::V, idx: Self::Idx) -> Self::V;
    /// Lane `j` of the result is lane `idx[j]` of `a` followed by `b` (`idx[j] < 2 LANES`).
    unsafe fn permute2(a: Self::V, b: Self::V, idx: Self::Idx) -> Self::V;
    /// `a`'s first `n` lanes (`n <= LANES`), then `b`'s.
    unsafe fn blend_first(a: Self::V, b: Self::V, n: usize) -> Self::V;
}

/// Eight f64 lanes made from eight f32 values: what the batch norm's statistics and
/// gradient sums add up in (`batchnorm::lanes_sums`). One AVX-512 vector, two AVX2 ones,
/// or plain floats (`Plain`, on any CPU). Each operation is one IEEE operation per lane,
/// never fused, so every implementation gives the same bits.
pub(crate) trait Wide8 {
    type D: Copy;
    unsafe fn zero() -> Self::D;
    unsafe fn splat(v: f64) -> Self::D;
    /// The 8 floats at `p`, widened.
    unsafe fn widen(p: *const f32) -> Self::D;
    /// `if x * a + b > 0 { g } else { 0 }` (in f32: a fused ReLU's backward, its input
    /// recomputed from `x`) for the 8 floats at `g` and `x`, widened.
    unsafe fn widen_relu(g: *const f32, x: *const f32, a: f32, b: f32) -> Self::D;
    unsafe fn add(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn sub(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn mul(a: Self::D, b: Self::D) -> Self::D;
    unsafe fn lanes(v: Self::D) -> [f64; 8];
}

/// `Wide8` without vector instructions.
pub(crate) struct Plain;

impl Wide8 for Plain {
    type D = [f64; 8];
    #[inline(always)]
    unsafe fn zero() -> [f64; 8] {
        [0.0; 8]
    }
    #[inline(always)]
    unsafe fn splat(v: f64) -> [f64; 8] {
        [v; 8]
    }
    #[inline(always)]
    unsafe fn widen(p: *const f32) -> [f64; 8] {
        std::array::from_fn(|l| f64::from(*p.add(l)))
    }
    #[inline(always)]
    unsafe fn widen_relu(g: *const f32, x: *const f32, a: f32, b: f32) -> [f64; 8] {
        std::array::from_fn(|l| {
            let y = *x.add(l) * a + b;
            f64::from(if y > 0.0 { *g.add(l) } else { 0.0 })
        })
    }
    #[inline(always)]
    unsafe fn add(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] + b[l])
    }
    #[inline(always)]
    unsafe fn sub(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] - b[l])
    }
    #[inline(always)]
    unsafe fn mul(a: [f64; 8], b: [f64; 8]) -> [f64; 8] {
        std::array::from_fn(|l| a[l] * b[l])
    }
    #[inline(always)]
    unsafe fn lanes(v: [f64; 8]) -> [f64; 8] {
        v
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Lanes, MAX_LANES};
    use std::arch::x86_64::*;

    pub(crate) struct Avx512;
    pub(crate) struct Avx2;

    /// The `r8` x `c8` corner of `src` (rows `src_row` apart) transposed into `dst` (rows
    /// `dst_row` apart), 8 x 8 at a time.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_blocks(
        src: &[f32],
        src_row: usize,
        (r8, c8): (usize, usize),
        dst: &mut [f32],
        dst_row: usize,
    ) {
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        // Down the columns of blocks: each output row is written front to back, and the
        // input rows' cache lines are back for the next column while still in L1.
        for c0 in (0..c8).step_by(8) {
            for r0 in (0..r8).step_by(8) {
                let row = |i: usize| _mm256_loadu_ps(s.add((r0 + i) * src_row + c0));
                let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
                let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
                // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves.
                let (t0, t1) = (_mm256_unpacklo_ps(a0, a1), _mm256_unpackhi_ps(a0, a1));
                let (t2, t3) = (_mm256_unpacklo_ps(a2, a3), _mm256_unpackhi_ps(a2, a3));
                let (t4, t5) = (_mm256_unpacklo_ps(a4, a5), _mm256_unpackhi_ps(a4, a5));
                let (t6, t7) = (_mm256_unpacklo_ps(a6, a7), _mm256_unpackhi_ps(a6, a7));
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                for (j, v) in out.into_iter().enumerate() {
                    _mm256_storeu_ps(d.add((c0 + j) * dst_row + r0), v);
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_loop_avx512(iterations: u64) -> f32 {
        super::fma_loop::<Avx512>(iterations)
    }
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_loop_avx2(iterations: u64) -> f32 {
        super::fma_loop::<Avx2>(iterations)
    }

    impl Lanes for Avx512 {
        const LANES: usize = 16;
        type V = __m512;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m512) {
            _mm512_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn reduce(v: __m512) -> f32 {
            _mm512_reduce_add_ps(v)
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m512 {
            _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p)
        }

        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512, b: __m512) -> __m512 {
            _mm512_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
            _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as u16, v)
        }
        #[inline(always)]
        unsafe fn interleave(a: __m512, b: __m512) -> (__m512, __m512) {
            let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            let hi =
                _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            (
                _mm512_permutex2var_ps(a, lo, b),
                _mm512_permutex2var_ps(a, hi, b),
            )
        }
        #[inline(always)]
        unsafe fn relu(v: __m512) -> __m512 {
            // MAXPS returns its second operand when either is NaN or both are zeros.
            _mm512_max_ps(v, _mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn where_positive(v: __m512, m: __m512) -> __m512 {
            let positive = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m, _mm512_setzero_ps());
            _mm512_maskz_mov_ps(positive, v)
        }
        #[inline(always)]
        unsafe fn max(a: __m512, b: __m512) -> __m512 {
            _mm512_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn select_gt(x: __m512, y: __m512, a: __m512, b: __m512) -> __m512 {
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, y), b, a)
        }
        #[inline(always)]
        unsafe fn deinterleave(a: __m512, b: __m512) -> (__m512, __m512) {
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            (
                _mm512_permutex2var_ps(a, even, b),
                _mm512_permutex2var_ps(a, odd, b),
            )
        }
        #[inline(always)]
        unsafe fn iota() -> __m512 {
            _mm512_setr_ps(
                0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0,
                15.0,
            )
        }
        #[inline(always)]
        unsafe fn store_u32(p: *mut u32, v: __m512) {
            _mm512_storeu_si512(p as *mut _, _mm512_cvttps_epi32(v))
        }
        #[inline(always)]
        unsafe fn load_u32_first(p: *const u32, n: usize) -> __m512 {
            let mask = ((1u32 << n) - 1) as u16;
            _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mask, p as *const i32))
        }
        #[inline(always)]
        unsafe fn select_eq(x: __m512, y: __m512, a: __m512, b: __m512) -> __m512 {
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(x, y), b, a)
        }
        type Idx = __m512i;
        #[inline(always)]
        unsafe fn indices(from: &[u32; MAX_LANES]) -> __m512i {
            _mm512_loadu_si512(from.as_ptr() as *const _)
        }
        #[inline(always)]
        unsafe fn permute(v: __m512, idx: __m512i) -> __m512 {
            _mm512_permutexvar_ps(idx, v)
        }
        #[inline(always)]
        unsafe fn permute2(a: __m512, b: __m512, idx: __m512i) -> __m512 {
            _mm512_permutex2var_ps(a, idx, b)
        }
        #[inline(always)]
        unsafe fn blend_first(a: __m512, b: __m512, n: usize) -> __m512 {
            _mm512_mask_blend_ps(((1u32 << n) - 1) as u16, b, a)
        }
    }

    impl Lanes for Avx2 {
        const LANES: usize = 8;
        type V = __m256;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn reduce(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
        #[inline(always)]
        unsafe fn load_first(p: *const f32, n: usize) -> __m256 {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_maskload_ps(p, mask)
        }

        #[inline(always)]
        unsafe fn add(a: __m256, b: __m256) -> __m256 {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m256, b: __m256) -> __m256 {
            _mm256_sub_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_maskstore_ps(p, mask, v)
        }
        #[inline(always)]
        unsafe fn interleave(a: __m256, b: __m256) -> (__m256, __m256) {
            // Within each 128-bit half: a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 ...;
            // then the halves regrouped.
            let (l, h) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            (
                _mm256_permute2f128_ps::<0x20>(l, h),
                _mm256_permute2f128_ps::<0x31>(l, h),
            )
        }
        #[inline(always)]
        unsafe fn relu(v: __m256) -> __m256 {
            // MAXPS returns its second operand when either is NaN or both are zeros.
            _mm256_max_ps(v, _mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn where_positive(v: __m256, m: __m256) -> __m256 {
            _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_GT_OQ>(m, _mm256_setzero_ps()))
        }
        #[inline(always)]
        unsafe fn max(a: __m256, b: __m256) -> __m256 {
            _mm256_max_ps(a, b)
        }
        #[inline(always)]
        unsafe fn select_gt(x: __m256, y: __m256, a: __m256, b: __m256) -> __m256 {
            _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_GT_OQ>(x, y))
        }
        #[inline(always)]
        unsafe fn deinterleave(a: __m256, b: __m256) -> (__m256, __m256) {
            // Within each 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then the 64-bit pairs
            // reordered 0 2 1 3.
            let even = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b));
            let odd = _mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(a, b));
            (
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(even)),
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(odd)),
            )
        }
        #[inline(always)]
        unsafe fn iota() -> __m256 {
            _mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
        }
        #[inline(always)]
        unsafe fn store_u32(p: *mut u32, v: __m256) {
            _mm256_storeu_si256(p as *mut __m256i, _mm256_cvttps_epi32(v))
        }
        #[inline(always)]
        unsafe fn load_u32_first(p: *const u32, n: usize) -> __m256 {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_cvtepi32_ps(_mm256_maskload_epi32(p as *const i32, mask))
        }
        #[inline(always)]
        unsafe fn select_eq(x: __m256, y: __m256, a: __m256, b: __m256) -> __m256 {
            _mm256_blendv_ps(b, a, _mm256_cmp_ps::<_CMP_EQ_OQ>(x, y))
        }
        type Idx = __m256i;
        #[inline(always)]
        unsafe fn indices(from: &[u32; MAX_LANES]) -> __m256i {
            _mm256_loadu_si256(from.as_ptr() as *const __m256i)
        }
        #[inline(always)]
        unsafe fn permute(v: __m256, idx: __m256i) -> __m256 {
            _mm256_permutevar8x32_ps(v, idx)
        }
        #[inline(always)]
        unsafe fn permute2(a: __m256, b: __m256, idx: __m256i) -> __m256 {
            // No two-source permute: each source's lanes (the low three bits), then `b`'s
            // where the index is 8 or more.
            let from_b = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
            _mm256_blendv_ps(
                _mm256_permutevar8x32_ps(a, idx),
                _mm256_permutevar8x32_ps(b, idx),
                from_b,
            )
        }
        #[inline(always)]
        unsafe fn blend_first(a: __m256, b: __m256, n: usize) -> __m256 {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let first = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_blendv_ps(b, a, _mm256_castsi256_ps(first))
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_wide {
    use super::x86::{Avx2, Avx512};
    use super::Wide8;
    use std::arch::x86_64::*;

    impl Wide8 for Avx512 {
        type D = __m512d;
        #[inline(always)]
        unsafe fn zero() -> __m512d {
            _mm512_setzero_pd()
        }
        #[inline(always)]
        unsafe fn splat(v: f64) -> __m512d {
            _mm512_set1_pd(v)
        }
        #[inline(always)]
        unsafe fn widen(p: *const f32) -> __m512d {
            _mm512_cvtps_pd(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn widen_relu(g: *const f32, x: *const f32, a: f32, b: f32) -> __m512d {
            let y = _mm256_add_ps(
                _mm256_mul_ps(_mm256_loadu_ps(x), _mm256_set1_ps(a)),
                _mm256_set1_ps(b),
            );
            let on = _mm256_cmp_ps::<_CMP_GT_OQ>(y, _mm256_setzero_ps());
            _mm512_cvtps_pd(_mm256_and_ps(on, _mm256_loadu_ps(g)))
        }
        #[inline(always)]
        unsafe fn add(a: __m512d, b: __m512d) -> __m512d {
            _mm512_add_pd(a, b)
        }
        #[inline(always)]
        unsafe fn sub(a: __m512d, b: __m512d) -> __m512d {
            _mm512_sub_pd(a, b)
        }
        #[inline(always)]
        unsafe fn mul(a: __m512d, b: __m512d) -> __m512d {
            _mm512_mul_pd(a, b)
        }
        #[inline(always)]
        unsafe fn lanes(v: __m512d) -> [f64; 8] {
            std::mem::transmute(v)
        }
    }

    impl Wide8 for Avx2 {
        type D = [__m256d; 2];
        #[inline(always)]
        unsafe fn zero() -> [__m256d; 2] {
            [_mm256_setzero_pd(); 2]
        }
        #[inline(always)]
        unsafe fn splat(v: f64) -> [__m256d; 2] {
            [_mm256_set1_pd(v); 2]
        }
        #[inline(always)]
        unsafe fn widen(p: *const f32) -> [__m256d; 2] {
            let v = _mm256_loadu_ps(p);
            [
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            ]
        }
        #[inline(always)]
        unsafe fn widen_relu(g: *const f32, x: *const f32, a: f32, b: f32) -> [__m256d; 2] {
            let y = _mm256_add_ps(
                _mm256_mul_ps(_mm256_loadu_ps(x), _mm256_set1_ps(a)),
                _mm256_set1_ps(b),
            );
            let on = _mm256_cmp_ps::<_CMP_GT_OQ>(y, _mm256_setzero_ps());
            let v = _mm256_and_ps(on, _mm256_loadu_ps(g));
            [
                _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
            ]
        }
        #[inline(always)]
        unsafe fn add(a: [__m256d; 2], b: [__m256d; 2]) -> [__m256d; 2] {
            [_mm256_add_pd(a[0], b[0]), _mm256_add_pd(a[1], b[1])]
        }
        #[inline(always)]
        unsafe fn sub(a: [__m256d; 2], b: [__m256d; 2]) -> [__m256d; 2] {
            [_mm256_sub_pd(a[0], b[0]), _mm256_sub_pd(a[1], b[1])]
        }
        #[inline(always)]
        unsafe fn mul(a: [__m256d; 2], b: [__m256d; 2]) -> [__m256d; 2] {
            [_mm256_mul_pd(a[0], b[0]), _mm256_mul_pd(a[1], b[1])]
        }
        #[inline(always)]
        unsafe fn lanes(v: [__m256d; 2]) -> [f64; 8] {
            std::mem::transmute(v)
        }
    }
}

/// `dst[c * rows + r] = src[r * cols + c]`: the (rows, cols) matrix `src` transposed, in
/// 8 x 8 blocks held in vector registers when `isa` allows (every AVX2 or AVX-512 CPU has
/// the AVX shuffles this needs), the edges one value at a time.
pub fn transpose(isa: Option<Isa>, src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    transpose_strided(isa, (src, cols), rows, cols, (dst, rows));
}

/// `dst[c * dst_row + r] = src[r * src_row + c]` for `r < rows`, `c < cols`: `transpose`
/// between matrices whose rows lie `src_row` and `dst_row` values apart.
pub fn transpose_strided(
    isa: Option<Isa>,
    (src, src_row): (&[f32], usize),
    rows: usize,
    cols: usize,
    (dst, dst_row): (&mut [f32], usize),
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src_row >= cols && dst_row >= rows);
    assert!(src.len() >= (rows - 1) * src_row + cols && dst.len() >= (cols - 1) * dst_row + rows);
    if let Some(isa) = isa {
        assert!(supported().contains(&isa), "this CPU cannot run {isa}");
    }
    let (r8, c8) = if isa.is_some() {
        (rows / 8 * 8, cols / 8 * 8)
    } else {
        (0, 0)
    };
    #[cfg(target_arch = "x86_64")]
    if r8 > 0 && c8 > 0 {
        // SAFETY: the CPU has AVX2 or AVX-512, so AVX; the blocks lie inside the checked
        // slices.
        unsafe { x86::transpose_blocks(src, src_row, (r8, c8), dst, dst_row) };
    }
    // The edges: columns past c8 in the block rows, then rows past r8.
    for r in 0..rows {
        let from = if r < r8 { c8 } else { 0 };
        for c in from..cols {
            dst[c * dst_row + r] = src[r * src_row + c];
        }
    }
}

/// Floating-point operations per second one core sustains on fused multiply-adds of the
/// widest vectors it has (`None` without vector kernels): the hardware's ceiling, which
/// `convnet bench` compares the GEMM crate and the network against. Runs about
/// `iterations` x 12 independent FMAs.
pub fn fma_flops_per_second(iterations: u64) -> Option<f64> {
    let isa = detect()?;
    let start = std::time::Instant::now();
    // SAFETY: `isa` came from `detect`.
    let (lanes, sink) = unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => (16, x86::fma_loop_avx512(iterations)),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => (8, x86::fma_loop_avx2(iterations)),
            #[allow(unreachable_patterns)]
            _ => return None,
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    Some((iterations * 12 * lanes * 2) as f64 / seconds)
}

/// Twelve independent chains of FMAs, enough to cover the instruction's latency on
/// every core we know of.
#[inline(always)]
unsafe fn fma_loop<S: Lanes>(iterations: u64) -> f32 {
    let mut acc = [S::splat(1.0); 12];
    let (b, c) = (
        S::splat(std::hint::black_box(0.999_999)),
        S::splat(std::hint::black_box(1e-7)),
    );
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = S::fma(*a, b, c);
        }
    }
    acc.iter().map(|&a| S::reduce(a)).sum()
}
