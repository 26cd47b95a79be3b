//! The `braid` binary: a thin shim over [`braid::cli`].

fn main() -> std::process::ExitCode {
    braid::cli::main()
}
