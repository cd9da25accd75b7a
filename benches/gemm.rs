//! Which GEMM crate, and which orientation of each product? Times every backend on the
//! matrix shapes the seed network's layers multiply, per chunk of 8 images (conv columns in
//! the wide layout: 28x30 and 14x16 positions per image), single-threaded, as the layers
//! call them; alternatives the layers do not use are marked "(unused)". Then cnn-plus's
//! fc1 (3136 -> 128) on 8, 32 and 64 rows (the chunk sizes a stage may use) and its weight
//! gradient in blocks of 16, 32 and 64 of its 128 outputs (batch 128).
//! Run: `cargo bench --bench gemm`.

use convnet::bench::{sgemm_with, Backend};
use std::time::Instant;

fn main() {
    // (what, m, k, n, a_trans, b_trans)
    let shapes = [
        ("conv1 fwd   w.cols", 8, 9, 6720, false, false),
        ("conv1 dw^T  cols.dy^T", 9, 6720, 8, false, true),
        ("conv1 dw    dy.cols^T (unused)", 8, 6720, 9, false, true),
        ("conv2 fwd   w.cols", 16, 72, 1792, false, false),
        ("conv2 dw^T  cols.dy^T", 72, 1792, 16, false, true),
        ("conv2 dw    dy.cols^T (unused)", 16, 1792, 72, false, true),
        ("conv2 dcols w^T.dy", 72, 16, 1792, true, false),
        ("fc1 fwd     x.wt", 8, 784, 128, false, false),
        ("fc1 fwd     x.w^T (unused)", 8, 784, 128, false, true),
        ("fc1 fwd     w.x^T = y^T (unused)", 128, 784, 8, false, true),
        ("fc1 dw      dy^T.x", 16, 100, 784, true, false),
        ("fc1 dx      dy.w", 8, 128, 784, false, false),
        ("plus fc1 fwd x.wt, 8 rows", 8, 3136, 128, false, false),
        ("plus fc1 fwd x.wt, 32 rows", 32, 3136, 128, false, false),
        ("plus fc1 fwd x.wt, 64 rows", 64, 3136, 128, false, false),
        ("plus fc1 dx dy.w, 8 rows", 8, 128, 3136, false, false),
        ("plus fc1 dx dy.w, 64 rows", 64, 128, 3136, false, false),
        ("plus fc1 dw dy^T.x, 16 of 128", 16, 128, 3136, true, false),
        ("plus fc1 dw dy^T.x, 32 of 128", 32, 128, 3136, true, false),
        ("plus fc1 dw dy^T.x, 64 of 128", 64, 128, 3136, true, false),
        ("square 512", 512, 512, 512, false, false),
    ];
    println!(
        "{:<32} {:>16} {:>16}",
        "shape (m x k x n)", "matrixmultiply", "gemm"
    );
    println!("{:<32} {:>16} {:>16}", "", "GFLOP/s", "GFLOP/s");
    for (what, m, k, n, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut c = vec![0.0f32; m * n];
        let mut row = format!("{what:<32}");
        for backend in Backend::ALL {
            let flops = 2.0 * (m * k * n) as f64;
            let reps = ((2e9 / flops) as usize).clamp(3, 1_000_000);
            sgemm_with(backend, m, k, n, 1.0, &a, ta, &b, tb, 0.0, &mut c);
            let start = Instant::now();
            for _ in 0..reps {
                sgemm_with(backend, m, k, n, 1.0, &a, ta, &b, tb, 0.0, &mut c);
            }
            let gflops = flops * reps as f64 / start.elapsed().as_secs_f64() / 1e9;
            row.push_str(&format!(" {gflops:>16.1}"));
        }
        println!("{row}");
        std::hint::black_box(&c);
    }
}
