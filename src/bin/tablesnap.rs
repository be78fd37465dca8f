//! `tablesnap`: see `tablesnap::cli::snap`.
fn main() -> std::process::ExitCode {
    // Part buffers are pooled; anything else large should go straight back to the OS
    // instead of lingering in glibc's per-thread arenas (measured: 200+ MiB peak RSS for a
    // 64 MiB budget without this).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    tablesnap::cli::snap::main()
}
