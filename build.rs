//! Tells the tests which outside resources this build may use, so that `cargo test`
//! without them lists the tests that need them as ignored, with the reason, instead of
//! failing, while a build that has them (the README's test command, CI) runs them all.
//!
//! - `convnet_data`: `CONVNET_DATA` is set (the MNIST and Fashion-MNIST files). A test then
//!   fails if the folder does not hold them: CI never skips silently.
//! - `convnet_browser`: Chromium and ChromeDriver are on the PATH, or `CONVNET_CI` is set
//!   (`.ci/run` installs them and sets it, so a missing browser fails the test there).
//! - `convnet_slurm`: Slurm's daemons and munge are on the PATH (or `CONVNET_CI`), for the
//!   scheduler test; `convnet_parallel`: GNU parallel is.

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

fn main() {
    println!("cargo::rerun-if-env-changed=CONVNET_DATA");
    println!("cargo::rerun-if-env-changed=CONVNET_CI");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rustc-check-cfg=cfg(convnet_data)");
    println!("cargo::rustc-check-cfg=cfg(convnet_browser)");
    println!("cargo::rustc-check-cfg=cfg(convnet_slurm)");
    println!("cargo::rustc-check-cfg=cfg(convnet_parallel)");
    if std::env::var_os("CONVNET_DATA").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=convnet_data");
    }
    let ci = std::env::var_os("CONVNET_CI").is_some_and(|v| !v.is_empty());
    if ci || (on_path("chromedriver") && (on_path("chromium") || on_path("chromium-browser"))) {
        println!("cargo::rustc-cfg=convnet_browser");
    }
    let sbin = |n: &str| on_path(n) || std::path::Path::new("/usr/sbin").join(n).is_file();
    if ci || (on_path("sbatch") && sbin("slurmctld") && sbin("slurmd") && sbin("munged")) {
        println!("cargo::rustc-cfg=convnet_slurm");
    }
    if ci || on_path("parallel") {
        println!("cargo::rustc-cfg=convnet_parallel");
    }
}
