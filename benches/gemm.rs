//! Which GEMM crate? Times every backend on the matrix shapes the seed network's layers
//! multiply (per image for conv, per 8-image block for linear), single-threaded, as the
//! layers call them. Run: `cargo bench --bench gemm`.

use convnet::gemm::{sgemm_with, Backend};
use std::time::Instant;

fn main() {
    // (what, m, k, n, a_trans, b_trans)
    let shapes = [
        ("conv1 fwd   w.cols", 8, 9, 784, false, false),
        ("conv1 dw    dy.cols^T", 8, 784, 9, false, true),
        ("conv2 fwd   w.cols", 16, 72, 196, false, false),
        ("conv2 dw    dy.cols^T", 16, 196, 72, false, true),
        ("conv2 dcols w^T.dy", 72, 16, 196, true, false),
        ("fc1 fwd     x.w^T", 8, 784, 128, false, true),
        ("fc1 dw      dy^T.x", 16, 100, 784, true, false),
        ("fc1 dx      dy.w", 8, 128, 784, false, false),
        ("square 512", 512, 512, 512, false, false),
    ];
    println!(
        "{:<24} {:>16} {:>16}",
        "shape (m x k x n)", "matrixmultiply", "gemm"
    );
    println!("{:<24} {:>16} {:>16}", "", "GFLOP/s", "GFLOP/s");
    for (what, m, k, n, ta, tb) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let mut c = vec![0.0f32; m * n];
        let mut row = format!("{what:<24}");
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
