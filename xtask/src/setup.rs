//! `cargo xtask setup`: makes sure this machine can build the eBPF program.
//!
//! The routes (rustup nightly with `rust-src`, or Debian's `rustc-web` with a bpf-linker on
//! Debian's LLVM 22) and how each is detected are in `toolchain.rs`, shared with
//! `tcpstate/build.rs`, so set-up completes the route the build then picks.
//!
//! Every step checks first and only installs what is missing, so a second run takes seconds.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::toolchain::{
    self, Route, BPF_LINKER_VERSION, DEBIAN_LLVM_MAJOR, DEBIAN_PACKAGES, LLVM22_BIN,
};

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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Debian packages the test suite uses beyond the build: bpftrace (the bench storm's self-test),
/// shells whose completion scripts are loaded, man to render the generated pages, tmux as the
/// terminal `tcpstate top` is tested in.
const TEST_PACKAGES: &[&str] = &["zsh", "fish", "man-db", "tmux", "bpftrace"];

/// Debian packages installed without their recommendations: Prometheus, which scrapes the
/// exporter in a test (its recommends pull in node exporters and a web console nobody uses).
const TEST_PACKAGES_NO_RECOMMENDS: &[&str] = &["prometheus"];

/// Python packages the tests run: kubernetes-validate checks deploy/kubernetes against the
/// Kubernetes schemas it bundles (other validators download them at run time).
const TEST_PIP_PACKAGES: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes_validate")];

/// Installs what `cargo xtask test` needs beyond the build (idempotent).
pub fn ensure_test_tools() -> Result<()> {
    install_packages(TEST_PACKAGES, "the tests", false)?;
    install_packages(TEST_PACKAGES_NO_RECOMMENDS, "the Prometheus test", true)?;
    install_pip_packages(TEST_PIP_PACKAGES)
}

fn install_debian_packages() -> Result<()> {
    install_packages(DEBIAN_PACKAGES, "the eBPF build", false)
}

/// `(distribution, module)` pairs: installs with pip what python3 cannot import.
fn install_pip_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, module)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(dist, _)| *dist)
        .collect();
    if missing.is_empty() {
        say("Python packages for the tests are installed");
        return Ok(());
    }
    run(Command::new("python3")
        .args(["-m", "pip", "install", "-q"])
        .args(&missing))
}

fn install_packages(packages: &[&str], purpose: &str, no_recommends: bool) -> Result<()> {
    let missing: Vec<&str> = packages
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
        say(&format!("Debian packages for {purpose} are installed"));
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
        .args(no_recommends.then_some("--no-install-recommends"))
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install_bpf_linker(route: &Route) -> Result<()> {
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
    if *route == Route::Debian {
        // Without llvm-config on PATH, llvm-sys looks for LLVM in the wrong place.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.args(["--no-default-features", "--features"])
            .arg(format!("llvm-{DEBIAN_LLVM_MAJOR}"))
            .env("PATH", format!("{LLVM22_BIN}:{path}"));
    }
    run(&mut cmd)
}

/// Picks and completes a route; returns it. rustup is never asked to download: on machines
/// that only reach Debian's and crates.io's registries it cannot, and may hang trying.
pub fn ensure() -> Result<Route> {
    let route = Route::for_setup();
    match &route {
        Route::Rustup(toolchain) => {
            say(&format!(
                "compiler: rustup {toolchain} with rust-src, and its bpf-linker"
            ));
        }
        Route::Debian => {
            say(&format!(
                "compiler: Debian's rustc-web with rust-web-src, bpf-linker on Debian's LLVM \
                 {DEBIAN_LLVM_MAJOR}"
            ));
            install_debian_packages()?;
        }
    }
    match toolchain::bpf_linker_path() {
        Some(p) if route != Route::Debian || toolchain::links_debian_llvm(&p) => {
            say(&format!("bpf-linker: {}", p.display()));
        }
        Some(p) => {
            say(&format!(
                "bpf-linker at {} does not use Debian's LLVM {DEBIAN_LLVM_MAJOR} (Debian's rustc \
                 needs it); rebuilding it",
                p.display()
            ));
            install_bpf_linker(&route)?;
        }
        None => {
            say("bpf-linker: not installed; building it (about a minute)");
            install_bpf_linker(&route)?;
        }
    }
    say("ready to build the eBPF program");
    Ok(route)
}
