//! Builds the eBPF program (`tcpstate-ebpf`) and leaves the object in OUT_DIR, where
//! `src/probe.rs` embeds it: the release binary is then self-contained.
//!
//! The eBPF crate needs a compiler with the source of `core` (for `-Z build-std=core`) and
//! `bpf-linker`. Two routes are supported and picked automatically:
//! - rustup's nightly with the `rust-src` component (the usual aya set-up);
//! - Debian's `rustc-web` + `rust-web-src` (works offline; see `cargo xtask setup`).
//!
//! `TCPSTATE_EBPF_TOOLCHAIN` forces one: `debian` or `rustup:<toolchain>`.
//! `TCPSTATE_EBPF_OBJECT` skips the build and embeds a prebuilt object instead.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{exit, Command},
};

const TARGET: &str = "bpfel-unknown-none";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";

fn main() {
    if let Err(msg) = run() {
        // One clear line; the details (compiler output) were printed above it.
        eprintln!("error: building the eBPF program failed: {msg}");
        exit(1);
    }
}

fn run() -> Result<(), String> {
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

    let route = Route::pick()?;
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
    let linker_dir = bpf_linker_dir()
        .ok_or("bpf-linker is not installed (or not on PATH): run `cargo xtask setup`")?;
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

#[derive(Debug)]
enum Route {
    Debian,
    Rustup(String),
}

impl Route {
    fn pick() -> Result<Route, String> {
        match env::var("TCPSTATE_EBPF_TOOLCHAIN").ok().as_deref() {
            Some("debian") => return Ok(Route::Debian),
            Some(other) => {
                if let Some(name) = other.strip_prefix("rustup:") {
                    return Ok(Route::Rustup(name.to_string()));
                }
                return Err(format!(
                    "TCPSTATE_EBPF_TOOLCHAIN={other}: expected `debian` or `rustup:<toolchain>`"
                ));
            }
            None => {}
        }
        let debian = Path::new(DEBIAN_RUSTC).exists()
            && Path::new(DEBIAN_CARGO).exists()
            && Path::new(DEBIAN_SRC).exists();
        // A bpf-linker built on Debian's LLVM pairs with Debian's rustc (one libLLVM for both);
        // with another compiler its LLVM could be older than the compiler's, which fails.
        if debian && bpf_linker_dir().is_some_and(|d| links_debian_llvm(&d.join("bpf-linker"))) {
            return Ok(Route::Debian);
        }
        if rustup_has_rust_src("nightly") {
            return Ok(Route::Rustup("nightly".into()));
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

    fn cargo(&self) -> Command {
        match self {
            Route::Debian => Command::new(DEBIAN_CARGO),
            Route::Rustup(toolchain) => {
                let mut c = Command::new("rustup");
                c.args(["run", toolchain, "cargo"]);
                c
            }
        }
    }

    fn configure(&self, cmd: &mut Command) {
        if let Route::Debian = self {
            cmd.env("RUSTC", DEBIAN_RUSTC);
            // Debian's compiler is a stable release; build-std needs unstable flags.
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
    }
}

fn rustup_has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
}

fn links_debian_llvm(linker: &Path) -> bool {
    Command::new("ldd")
        .arg(linker)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("/usr/lib/llvm-"))
}

fn bpf_linker_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().find(|d| d.join("bpf-linker").is_file())
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
