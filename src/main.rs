//! The `convnet` command: one module per subcommand under `src/cli/`.

fn main() {
    std::process::exit(convnet::cli::run());
}
