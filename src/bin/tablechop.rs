//! `tablechop`: delete old backups, keeping what restores need (see `tablesnap::cli::chop`).
fn main() -> std::process::ExitCode {
    tablesnap::cli::chop::main()
}
