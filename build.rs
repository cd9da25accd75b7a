//! Tells the tests which outside resources this build may use, so that `cargo test`
//! without them lists the tests that need them as ignored, with the reason, instead of
//! failing, while a build that has them (the README's test command, CI) runs them all.
//!
//! - `convnet_data`: `CONVNET_DATA` is set (the MNIST and Fashion-MNIST files). A test then
//!   fails if the folder does not hold them: CI never skips silently.

fn main() {
    println!("cargo::rerun-if-env-changed=CONVNET_DATA");
    println!("cargo::rustc-check-cfg=cfg(convnet_data)");
    if std::env::var_os("CONVNET_DATA").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=convnet_data");
    }
}
