//! `tablesnap`: see `tablesnap::cli::snap`.
fn main() -> std::process::ExitCode {
    tablesnap::cli::snap::main()
}
