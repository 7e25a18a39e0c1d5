//! `cargo xtask man`: man pages generated from tcpstate's clap definition, so they never drift
//! from `--help`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Writes `tcpstate.1` and one `tcpstate-SUBCOMMAND.1` per subcommand into `dir`; returns the
/// files written.
pub fn write_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = tcpstate::cli::Cli::command();
    let mut pages = vec![("tcpstate".to_string(), root.clone())];
    for sub in root.get_subcommands() {
        let name = format!("tcpstate-{}", sub.get_name());
        // The page's title and synopsis name the full command.
        let cmd = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("tcpstate {}", sub.get_name()));
        pages.push((name, cmd));
    }
    let mut written = Vec::new();
    for (name, cmd) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .with_context(|| format!("rendering {name}.1"))?;
        let path = dir.join(format!("{name}.1"));
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Every page renders with man's own formatter and groff's warnings on, without a warning.
    #[test]
    fn every_page_renders_without_warnings() {
        let dir = std::env::temp_dir().join(format!("tcpstate-man-{}", std::process::id()));
        let pages = write_pages(&dir).expect("write pages");
        assert!(pages.len() >= 4, "{pages:?}");
        for page in &pages {
            let out = Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l"])
                .arg(page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
                .expect("man is installed (cargo xtask test installs man-db)");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{}: {stderr}", page.display());
            assert!(
                stderr.trim().is_empty(),
                "{}: warnings: {stderr}",
                page.display()
            );
            assert!(stdout.contains("tcpstate"), "{}: {stdout}", page.display());
        }
        let trace = fs::read_to_string(dir.join("tcpstate-trace.1")).expect("trace page");
        assert!(
            trace.contains("\\-\\-port"),
            "the trace page lists its flags"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
