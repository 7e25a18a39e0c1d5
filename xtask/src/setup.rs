//! `cargo xtask setup`: makes sure this machine can build the eBPF program.
//!
//! The eBPF crate needs (1) a Rust compiler with the source of `core`, for
//! `-Z build-std=core --target bpfel-unknown-none`, and (2) `bpf-linker`, built against an LLVM
//! at least as new as that compiler's. Two routes, tried in this order:
//! - rustup's nightly with `rust-src` (the usual aya set-up; needs to download);
//! - Debian's `rustc-web` + `rust-web-src` and `llvm-22-dev` (works with only Debian's and
//!   crates.io's registries), with bpf-linker built against that same LLVM 22.
//!
//! Every step checks first and only installs what is missing, so a second run takes seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const LLVM22_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    RustupNightly,
    Debian,
}

fn say(msg: &str) {
    eprintln!("setup: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    say(&format!("running {shown}"));
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .exists()
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cargo_bin_dir());
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// A bpf-linker that links Debian's LLVM 22, the LLVM of Debian's rustc.
fn linker_uses_llvm22(path: &Path) -> bool {
    Command::new("ldd")
        .arg(path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libLLVM.so.22"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn install_debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        say("Debian packages for the eBPF build are installed");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the Debian packages {} are missing and installing them needs root: run \
             `sudo apt-get install -y {}` (or run `cargo xtask setup` as root)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    say(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install_bpf_linker(route: Route) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        "--force",
    ])
    .env_remove("RUSTUP_TOOLCHAIN")
    .env_remove("CARGO_TARGET_DIR");
    if route == Route::Debian {
        // Without llvm-config on PATH, llvm-sys looks for LLVM in the wrong place.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", format!("{LLVM22_BIN}:{path}"));
    }
    run(&mut cmd)
}

/// Picks and completes a route; returns it. rustup is never asked to download: on machines
/// that only reach Debian's and crates.io's registries it cannot, and may hang trying.
pub fn ensure() -> Result<Route> {
    let linker = bpf_linker_path();
    // A workstation already set up the usual aya way is left alone.
    let route = match &linker {
        Some(p) if nightly_has_rust_src() && !linker_uses_llvm22(p) => {
            say("compiler: rustup nightly with rust-src, and its bpf-linker");
            Route::RustupNightly
        }
        _ => {
            say("compiler: Debian's rustc-web with rust-web-src, bpf-linker on Debian's LLVM 22");
            Route::Debian
        }
    };
    if route == Route::Debian {
        install_debian_packages()?;
    }
    match linker {
        Some(p) if route == Route::RustupNightly || linker_uses_llvm22(&p) => {
            say(&format!("bpf-linker: {}", p.display()));
        }
        Some(p) => {
            say(&format!(
                "bpf-linker at {} does not use LLVM 22 (Debian's rustc needs it); rebuilding it",
                p.display()
            ));
            install_bpf_linker(route)?;
        }
        None => {
            say("bpf-linker: not installed; building it (about a minute)");
            install_bpf_linker(route)?;
        }
    }
    say("ready to build the eBPF program");
    Ok(route)
}
