//! Generates man pages and shell completions from the clap definitions of the three tools,
//! for packaging: `cargo run --example gen_docs -- OUTDIR` writes `OUTDIR/man/*.1` and
//! `OUTDIR/completions/{bash,zsh,fish}/...`.

use std::path::PathBuf;

use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/assets".into()),
    );
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    for mut cmd in tablesnap::cli::commands() {
        let name = cmd.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(man.join(format!("{name}.1")), page)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let d = out.join("completions").join(dir);
            std::fs::create_dir_all(&d)?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, name.clone(), &mut buf);
            std::fs::write(d.join(file), buf)?;
        }
        println!("{name}: man page and completions written");
    }
    Ok(())
}
