//! Which compiler and which bpf-linker build the eBPF program: the one place that knows.
//!
//! Two crates include this file and they share no dependencies, so it uses std only:
//! - `tcpstate/build.rs` (`#[path = "../xtask/src/toolchain.rs"] mod toolchain;`) picks the
//!   toolchain that builds the eBPF object ([`Route::for_build`]);
//! - xtask (`mod toolchain;`): `setup` completes a route ([`Route::for_setup`]) and
//!   `check-msrv` asks the route's compiler for its version.
//!
//! The eBPF crate needs (1) a Rust compiler with the source of `core`, for
//! `-Z build-std=core --target bpfel-unknown-none`, and (2) `bpf-linker`, built against an LLVM
//! at least as new as that compiler's. Two routes:
//! - rustup's nightly with the `rust-src` component (the usual aya set-up; needs to download);
//! - Debian's `rustc-web` + `rust-web-src` and `llvm-22-dev` (works with only Debian's and
//!   crates.io's registries), with bpf-linker built against that same LLVM 22.
//!
//! `TCPSTATE_EBPF_TOOLCHAIN` forces the build's route: `debian` or `rustup:<toolchain>`.

// Each including crate uses part of this file.
#![allow(dead_code)]

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

pub const TARGET: &str = "bpfel-unknown-none";
/// Forces the route of the eBPF build: `debian` or `rustup:<toolchain>`.
pub const FORCE_VAR: &str = "TCPSTATE_EBPF_TOOLCHAIN";
/// The rustup toolchain of the usual aya route.
pub const NIGHTLY: &str = "nightly";

pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
/// What `rust-web-src` installs: the source `-Z build-std=core` needs.
pub const DEBIAN_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
/// The LLVM Debian's rustc-web links (`libLLVM.so.22.1`), and llvm-22-dev's tools.
pub const DEBIAN_LLVM_MAJOR: u32 = 22;
pub const LLVM22_BIN: &str = "/usr/lib/llvm-22/bin";
pub const DEBIAN_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
pub const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Debian's rustc-web (`/usr/bin/rustc`, sysroot `/usr`) with `RUSTC_BOOTSTRAP=1`.
    Debian,
    /// A rustup toolchain with the `rust-src` component.
    Rustup(String),
}

impl Route {
    /// Parses a `TCPSTATE_EBPF_TOOLCHAIN` value.
    pub fn parse(value: &str) -> Result<Route, String> {
        if value == "debian" {
            return Ok(Route::Debian);
        }
        match value.strip_prefix("rustup:") {
            Some(name) if !name.is_empty() => Ok(Route::Rustup(name.to_string())),
            _ => Err(format!(
                "{FORCE_VAR}={value}: expected `debian` or `rustup:<toolchain>`"
            )),
        }
    }

    /// The route `TCPSTATE_EBPF_TOOLCHAIN` forces, if it is set.
    pub fn forced() -> Result<Option<Route>, String> {
        match env::var(FORCE_VAR) {
            Ok(value) => Route::parse(&value).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The route that builds the eBPF program with what is installed now.
    pub fn for_build() -> Result<Route, String> {
        if let Some(route) = Route::forced()? {
            return Ok(route);
        }
        let debian = debian_installed();
        // A bpf-linker built on Debian's LLVM pairs with Debian's rustc (one libLLVM for both);
        // with another compiler its LLVM could be older than the compiler's, which fails.
        if debian && bpf_linker_path().is_some_and(|p| links_debian_llvm(&p)) {
            return Ok(Route::Debian);
        }
        if rustup_has_rust_src(NIGHTLY) {
            return Ok(Route::Rustup(NIGHTLY.into()));
        }
        if debian {
            return Ok(Route::Debian);
        }
        Err(
            "no compiler that can build for bpfel-unknown-none (nightly + rust-src, or Debian's \
             rustc-web + rust-web-src): run `cargo xtask setup`"
                .into(),
        )
    }

    /// The route `cargo xtask setup` completes. A workstation already set up the usual aya way
    /// (nightly with rust-src and a bpf-linker not on Debian's LLVM) is left alone; everything
    /// else gets the Debian route, which needs no download from rustup.
    pub fn for_setup() -> Route {
        match bpf_linker_path() {
            Some(p) if rustup_has_rust_src(NIGHTLY) && !links_debian_llvm(&p) => {
                Route::Rustup(NIGHTLY.into())
            }
            _ => Route::Debian,
        }
    }

    /// The cargo that builds the eBPF crate; see also [`Route::configure`].
    pub fn cargo(&self) -> Command {
        match self {
            Route::Debian => Command::new(DEBIAN_CARGO),
            Route::Rustup(toolchain) => rustup_run(toolchain, "cargo"),
        }
    }

    /// The route's compiler (for `--version`).
    pub fn rustc(&self) -> Command {
        match self {
            Route::Debian => Command::new(DEBIAN_RUSTC),
            Route::Rustup(toolchain) => rustup_run(toolchain, "rustc"),
        }
    }

    /// Environment the route's cargo needs.
    pub fn configure(&self, cmd: &mut Command) {
        if let Route::Debian = self {
            cmd.env("RUSTC", DEBIAN_RUSTC);
            // Debian's compiler is a stable release; build-std needs unstable flags.
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
    }
}

fn rustup_run(toolchain: &str, tool: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", toolchain, tool])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Debian's rustc-web, cargo-web and rust-web-src are all installed.
pub fn debian_installed() -> bool {
    [DEBIAN_RUSTC, DEBIAN_CARGO, DEBIAN_SRC]
        .iter()
        .all(|p| Path::new(p).exists())
}

/// The rustup toolchain is installed with the `rust-src` component. Never downloads.
pub fn rustup_has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = rustup_run(toolchain, "rustc")
        .args(["--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .exists()
}

/// Where bpf-linker is: on PATH, else in cargo's bin directory (`cargo install` puts it there,
/// and build scripts may run with a PATH without it).
pub fn bpf_linker_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// This bpf-linker links Debian's LLVM 22, the LLVM of Debian's rustc.
pub fn links_debian_llvm(linker: &Path) -> bool {
    Command::new("ldd")
        .arg(linker)
        .output()
        .is_ok_and(|o| ldd_shows_debian_llvm(&String::from_utf8_lossy(&o.stdout)))
}

/// `ldd` output with a `libLLVM.so.22…` resolved to a file of Debian's (`/usr/lib/…`: either
/// `/usr/lib/llvm-22/lib/` or the multiarch directory). A statically linked or unresolved LLVM,
/// or another major version, does not count.
pub fn ldd_shows_debian_llvm(ldd: &str) -> bool {
    let soname = format!("libLLVM.so.{DEBIAN_LLVM_MAJOR}");
    ldd.lines().any(|line| {
        let Some((name, resolved)) = line.split_once("=>") else {
            return false;
        };
        let name = name.trim();
        (name == soname || name.starts_with(&format!("{soname}.")))
            && resolved.trim().starts_with("/usr/lib/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forced_routes() {
        assert_eq!(Route::parse("debian"), Ok(Route::Debian));
        assert_eq!(
            Route::parse("rustup:nightly-2026-01-01"),
            Ok(Route::Rustup("nightly-2026-01-01".into()))
        );
        assert!(Route::parse("rustup:").is_err());
        assert!(Route::parse("nightly").is_err());
    }

    #[test]
    fn recognises_debian_llvm_in_ldd_output() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007fbaa9600000)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n";
        assert!(ldd_shows_debian_llvm(debian));
        let multiarch = "\tlibLLVM.so.22.1 => /usr/lib/x86_64-linux-gnu/libLLVM.so.22.1 (0x1)\n";
        assert!(ldd_shows_debian_llvm(multiarch));
        let older = "\tlibLLVM.so.19.1 => /usr/lib/llvm-19/lib/libLLVM.so.19.1 (0x1)\n";
        assert!(!ldd_shows_debian_llvm(older));
        let not_found = "\tlibLLVM.so.22.1 => not found\n";
        assert!(!ldd_shows_debian_llvm(not_found));
        let elsewhere = "\tlibLLVM.so.22.1 => /opt/llvm/lib/libLLVM.so.22.1 (0x1)\n";
        assert!(!ldd_shows_debian_llvm(elsewhere));
        let static_llvm = "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n";
        assert!(!ldd_shows_debian_llvm(static_llvm));
    }
}
