//! The `braid` binary: a thin shim over [`braid::cli`].

/// mimalloc rather than the system allocator: a fan-out allocates and frees many small
/// records from many threads, where glibc's malloc showed up high in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    braid::cli::main()
}
