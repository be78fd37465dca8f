//! `tableslurp`: restore backups written by tablesnap (see `tablesnap::cli::slurp`).
fn main() -> std::process::ExitCode {
    tablesnap::cli::slurp::main()
}
