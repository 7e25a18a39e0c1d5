//! `cargo xtask check-msrv`: fails if a lock file resolves a package whose `rust-version` is
//! newer than a compiler this project is built with.
//!
//! The compilers: the user-space `rustc` (what `cargo build` uses) and the eBPF route's
//! (Debian's `/usr/bin/rustc`, or rustup's nightly; see `toolchain.rs`). The check holds every
//! locked package to the oldest of them. It exists because a newer release of a dependency may
//! need a newer compiler than any available here: aya-build 0.2.1 (pulled by aya-ebpf 0.2.1)
//! needs rustc 1.98, so Cargo.lock pins 0.2.0.

use std::{fmt, path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::toolchain::Route;

/// A Rust version: `1.87`, `1.87.0`, or a compiler's `1.97.0-nightly` (a pre-release counts as
/// its release, as cargo does for `rust-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u64, u64, u64);

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let release = s.trim().split(['-', '+']).next()?;
        let mut parts = release.split('.').map(|p| p.parse::<u64>().ok());
        let major = parts.next()??;
        let minor = parts.next().unwrap_or(Some(0))?;
        let patch = parts.next().unwrap_or(Some(0))?;
        if parts.next().is_some() {
            return None;
        }
        Some(Version(major, minor, patch))
    }

    /// From `rustc --version`: `rustc 1.95.0 (59807616e 2026-04-14)`.
    pub fn from_rustc_output(out: &str) -> Option<Version> {
        let mut words = out.split_whitespace();
        (words.next()? == "rustc")
            .then(|| words.next())
            .flatten()
            .and_then(Version::parse)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A locked package that needs a newer compiler than `floor`.
#[derive(Debug, PartialEq, Eq)]
pub struct TooNew {
    pub package: String,
    pub rust_version: String,
}

/// The packages of `cargo metadata --format-version 1` output whose `rust_version` is newer
/// than `floor`. A package without one is taken to build with any compiler; one that cannot be
/// parsed is reported.
pub fn too_new(metadata: &Value, floor: Version) -> Result<Vec<TooNew>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no `packages` array")?;
    let mut found = Vec::new();
    for p in packages {
        let Some(rust_version) = p["rust_version"].as_str() else {
            continue;
        };
        let newer = Version::parse(rust_version).is_none_or(|v| v > floor);
        if newer {
            found.push(TooNew {
                package: format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?")
                ),
                rust_version: rust_version.to_string(),
            });
        }
    }
    found.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(found)
}

fn version_of(what: &str, mut cmd: Command) -> Result<Version> {
    let out = cmd
        .arg("--version")
        .output()
        .with_context(|| format!("running {what} --version"))?;
    if !out.status.success() {
        bail!(
            "{what} --version failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Version::from_rustc_output(&text)
        .with_context(|| format!("{what} --version printed {:?}", text.trim()))
}

/// The compilers that build this project, with their versions.
fn compilers() -> Result<Vec<(String, Version)>> {
    // User space: the `rustc` cargo runs, as xtask's own `cargo` calls see it.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut user = Command::new(&rustc);
    user.env_remove("RUSTUP_TOOLCHAIN");
    let mut found = vec![(format!("{rustc} (user space)"), version_of(&rustc, user)?)];
    match Route::for_build() {
        Ok(route) => {
            let what = match &route {
                Route::Debian => format!("{} (eBPF, Debian route)", crate::toolchain::DEBIAN_RUSTC),
                Route::Rustup(tc) => format!("rustup {tc} rustc (eBPF)"),
            };
            let v = version_of(&what, route.rustc())?;
            found.push((what, v));
        }
        Err(e) => eprintln!("check-msrv: no eBPF compiler yet ({e}); checking user space only"),
    }
    Ok(found)
}

/// Checks the lock file of the workspace at `manifest` against `floor`.
fn check_lock(manifest: &Path, floor: Version) -> Result<Vec<TooNew>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .with_context(|| format!("running cargo metadata for {}", manifest.display()))?;
    if !out.status.success() {
        bail!(
            "cargo metadata --locked for {} failed (is its Cargo.lock up to date?): {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let metadata: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    too_new(&metadata, floor)
}

pub fn run() -> Result<()> {
    let compilers = compilers()?;
    let (oldest_name, floor) = compilers
        .iter()
        .min_by_key(|(_, v)| *v)
        .cloned()
        .context("no compiler")?;
    for (name, v) in &compilers {
        eprintln!("check-msrv: {name}: rustc {v}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    let mut failed = false;
    // The fuzz crate is its own workspace with its own lock file.
    for lock in ["Cargo.toml", "fuzz/Cargo.toml"] {
        let manifest = root.join(lock);
        let bad = check_lock(&manifest, floor)?;
        if bad.is_empty() {
            eprintln!(
                "check-msrv: {}: every locked package builds with rustc {floor}",
                manifest.with_file_name("Cargo.lock").display()
            );
            continue;
        }
        failed = true;
        eprintln!(
            "check-msrv: {} resolves packages that need a newer compiler than {oldest_name} \
             (rustc {floor}):",
            manifest.with_file_name("Cargo.lock").display()
        );
        for b in &bad {
            eprintln!("  {} needs rustc {}", b.package, b.rust_version);
        }
    }
    if failed {
        bail!(
            "Cargo.lock needs a newer compiler than this project is built with: pin the packages \
             above to older releases (`cargo update <name> --precise <version>`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_rust_versions() {
        assert_eq!(v("1.87"), Version(1, 87, 0));
        assert_eq!(v("1.87.0"), Version(1, 87, 0));
        assert_eq!(v("1.95.1"), Version(1, 95, 1));
        assert_eq!(v("1.97.0-nightly"), Version(1, 97, 0));
        assert_eq!(v("1"), Version(1, 0, 0));
        assert_eq!(Version::parse("1.x"), None);
        assert_eq!(Version::parse("1.2.3.4"), None);
        assert_eq!(Version::parse(""), None);
    }

    #[test]
    fn parses_rustc_version_output() {
        let of = Version::from_rustc_output;
        assert_eq!(
            of("rustc 1.95.0 (59807616e 2026-04-14)\n"),
            Some(v("1.95.0"))
        );
        assert_eq!(
            of("rustc 1.96.0 (ac68faa20 2026-05-25) (built from a source tarball)"),
            Some(v("1.96.0"))
        );
        assert_eq!(
            of("rustc 1.97.0-nightly (abcdef012 2026-06-01)"),
            Some(v("1.97.0"))
        );
        assert_eq!(of("cargo 1.95.0"), None);
    }

    #[test]
    fn compares_against_the_oldest_compiler() {
        let floor = v("1.95.0");
        assert!(v("1.98") > floor);
        assert!(v("1.95.1") > floor);
        assert!(v("1.95") <= floor);
        assert!(v("1.87.0") <= floor);
        assert!(v("1.100") > floor);
        assert!(v("2.0") > floor);
    }

    #[test]
    fn reports_locked_packages_that_need_a_newer_compiler() {
        let metadata = serde_json::json!({ "packages": [
            { "name": "aya-build", "version": "0.2.0", "rust_version": "1.87.0" },
            { "name": "aya-build", "version": "0.2.1", "rust_version": "1.98" },
            { "name": "libc", "version": "0.2.170", "rust_version": null },
            { "name": "cargo-platform", "version": "0.3.3", "rust_version": "1.91" },
            { "name": "odd", "version": "1.0.0", "rust_version": "soon" },
        ]});
        let bad = too_new(&metadata, v("1.95.0")).unwrap();
        assert_eq!(
            bad,
            [
                TooNew {
                    package: "aya-build 0.2.1".into(),
                    rust_version: "1.98".into()
                },
                TooNew {
                    package: "odd 1.0.0".into(),
                    rust_version: "soon".into()
                },
            ]
        );
        assert!(too_new(&metadata, v("1.98.0")).unwrap().len() == 1);
        assert!(too_new(&serde_json::json!({}), v("1.95.0")).is_err());
    }
}
