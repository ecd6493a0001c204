//! Writes the man pages and shell completions of `quiesce` from its CLI definition (clap), so
//! that they are generated, never kept by hand. Run by scripts/package.sh:
//! `quiesce-gen-docs OUT_DIR` writes OUT_DIR/man/quiesce.8 (and one page per subcommand) and
//! OUT_DIR/completions/{quiesce.bash,_quiesce,quiesce.fish}.

#![deny(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;
use quiesce::cli::Cli;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: quiesce-gen-docs OUT_DIR");
            std::process::exit(2);
        });
    let man = out.join("man");
    let completions = out.join("completions");
    fs::create_dir_all(&man)?;
    fs::create_dir_all(&completions)?;

    let cmd = Cli::command();
    write_page(&man, "quiesce", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // clap's names are &'static str; this short-lived tool can afford to leak a few.
        let name: &'static str = Box::leak(format!("quiesce-{}", sub.get_name()).into_boxed_str());
        write_page(&man, name, sub.clone().name(name))?;
    }
    for (shell, file) in [
        (Shell::Bash, "quiesce.bash"),
        (Shell::Zsh, "_quiesce"),
        (Shell::Fish, "quiesce.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "quiesce", &mut buf);
        fs::write(completions.join(file), buf)?;
    }
    Ok(())
}

/// One page in section 8 (system administration): the agent is a root daemon.
fn write_page(dir: &Path, name: &str, cmd: clap::Command) -> std::io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .title(name.to_uppercase())
        .section("8")
        .source(format!("quiesce {}", env!("CARGO_PKG_VERSION")))
        .manual("System Administration")
        .render(&mut buf)?;
    fs::write(dir.join(format!("{name}.8")), buf)
}
