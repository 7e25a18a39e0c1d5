//! Builds the eBPF program (`tcpstate-ebpf`) and leaves the object in OUT_DIR, where
//! `src/kernel/probe.rs` embeds it: the release binary is then self-contained.
//!
//! The eBPF crate needs a compiler with the source of `core` (for `-Z build-std=core`) and
//! `bpf-linker`. Two routes are supported and picked automatically:
//! - rustup's nightly with the `rust-src` component (the usual aya set-up);
//! - Debian's `rustc-web` + `rust-web-src` (works offline; see `cargo xtask setup`).
//!
//! `TCPSTATE_EBPF_TOOLCHAIN` forces one: `debian` or `rustup:<toolchain>`.
//! `TCPSTATE_EBPF_OBJECT` skips the build and embeds a prebuilt object instead.
//! Without the `kernel` feature (`--no-default-features`) nothing is built: the pure core
//! needs neither the object nor the eBPF toolchain.
//!
//! How the toolchain is found lives in `xtask/src/toolchain.rs`, shared with `cargo xtask setup`.

#[path = "../xtask/src/toolchain.rs"]
mod toolchain;

use std::{
    env,
    ffi::OsString,
    fs,
    path::PathBuf,
    process::{exit, Command},
};

use toolchain::{Route, TARGET};

fn main() {
    if let Err(msg) = run() {
        // One clear line; the details (compiler output) were printed above it.
        eprintln!("error: building the eBPF program failed: {msg}");
        exit(1);
    }
}

fn run() -> Result<(), String> {
    if env::var_os("CARGO_FEATURE_KERNEL").is_none() {
        // Features are part of the build script's unit: turning `kernel` on reruns it.
        println!("cargo:rerun-if-changed=build.rs");
        return Ok(());
    }
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("no CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let object = out_dir.join("tcpstate.bpf.o");

    for var in ["TCPSTATE_EBPF_OBJECT", "TCPSTATE_EBPF_TOOLCHAIN", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Some(prebuilt) = env::var_os("TCPSTATE_EBPF_OBJECT") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        fs::copy(&prebuilt, &object)
            .map_err(|e| format!("copying TCPSTATE_EBPF_OBJECT {}: {e}", prebuilt.display()))?;
        return Ok(());
    }
    for path in [
        "tcpstate-ebpf/src",
        "tcpstate-ebpf/Cargo.toml",
        "tcpstate-common/src",
        "tcpstate-common/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }

    let route = Route::for_build()?;
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");
    let mut cmd = route.cargo();
    cmd.current_dir(&root)
        .args([
            "build",
            "--locked",
            "--release",
            "--package",
            "tcpstate-ebpf",
            "--bin",
            "tcpstate",
        ])
        .args(["--target", TARGET, "-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir);
    clean_env(&mut cmd);
    route.configure(&mut cmd);
    let linker = toolchain::bpf_linker_path()
        .ok_or("bpf-linker is not installed (or not on PATH): run `cargo xtask setup`")?;
    let linker_dir = linker.parent().ok_or("bpf-linker has no directory")?;
    let mut path = OsString::from(linker_dir.as_os_str());
    if let Some(old) = env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    cmd.env("PATH", path);
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    );

    let status = cmd
        .status()
        .map_err(|e| format!("running {route:?} cargo: {e}"))?;
    if !status.success() {
        return Err(format!("{route:?} cargo exited with {status}"));
    }
    let built = target_dir.join(TARGET).join("release").join("tcpstate");
    fs::copy(&built, &object).map_err(|e| format!("copying {}: {e}", built.display()))?;
    Ok(())
}

/// The outer cargo's variables describe the host build (and clippy's wrapper); none of them may
/// leak into the nested eBPF build.
fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let leaks = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key.starts_with("RUSTFLAGS")
            || key.starts_with("CLIPPY")
            || key == "RUSTUP_TOOLCHAIN"
            || matches!(
                key,
                "TARGET" | "HOST" | "OUT_DIR" | "PROFILE" | "OPT_LEVEL" | "DEBUG" | "NUM_JOBS"
            );
        if leaks {
            cmd.env_remove(key);
        }
    }
}
