//! Checks of the host before anything is loaded, each failing with one line that says what to do.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const EVENT_DIR: &str = "events/sock/inet_sock_set_state";

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("tracing needs root (or CAP_BPF and CAP_PERFMON): run it with sudo")]
    NotPrivileged,
    #[error(
        "tracefs is not mounted and could not be mounted ({0}): mount it with \
         `mount -t tracefs tracefs {TRACEFS}`"
    )]
    NoTracefs(String),
    #[error(
        "this kernel has no sock:inet_sock_set_state tracepoint ({0} is missing): \
         Linux 4.16 or newer with CONFIG_TRACEPOINTS is needed"
    )]
    NoTracepoint(PathBuf),
    #[error("kernel {0} has no BPF ring buffer: tcpstate needs Linux 5.8 or newer")]
    KernelTooOld(String),
}

/// Effective capabilities of this process, from /proc/self/status.
fn effective_caps() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub fn check_privileges() -> Result<(), EnvError> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        Ok(())
    } else {
        Err(EnvError::NotPrivileged)
    }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `(major, minor)` of a release string such as `6.18.0-1-amd64`.
pub fn parse_release(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.split(['.', '-', '+']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn check_kernel_version() -> Result<(), EnvError> {
    let rel = kernel_release();
    match parse_release(&rel) {
        Some(v) if v < (5, 8) => Err(EnvError::KernelTooOld(rel)),
        _ => Ok(()),
    }
}

fn has_events(dir: &Path) -> bool {
    dir.join("events").is_dir()
}

/// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
/// Returns the directory and whether this call mounted it (said on stderr by the caller).
pub fn ensure_tracefs() -> Result<(PathBuf, bool), EnvError> {
    // One mount attempt at a time in this process; another process may still race us, which
    // the re-check after a failed mount covers.
    static MOUNTING: Mutex<()> = Mutex::new(());
    let _guard = MOUNTING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mounted = || {
        [TRACEFS, DEBUGFS_TRACING]
            .into_iter()
            .find(|dir| has_events(Path::new(dir)))
            .map(PathBuf::from)
    };
    if let Some(dir) = mounted() {
        return Ok((dir, false));
    }
    match mount("tracefs", TRACEFS) {
        Ok(()) if has_events(Path::new(TRACEFS)) => Ok((PathBuf::from(TRACEFS), true)),
        Ok(()) => Err(EnvError::NoTracefs(format!(
            "{TRACEFS} has no events after mounting"
        ))),
        Err(e) => match mounted() {
            Some(dir) => Ok((dir, false)),
            None => Err(EnvError::NoTracefs(e.to_string())),
        },
    }
}

fn mount(fstype: &str, target: &str) -> io::Result<()> {
    let src = CString::new(fstype)?;
    let tgt = CString::new(target)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The tracepoint's format file, or a clear error when the tracepoint does not exist.
pub fn read_tracepoint_format(tracefs: &Path) -> Result<String, EnvError> {
    let path = tracefs.join(EVENT_DIR).join("format");
    fs::read_to_string(&path).map_err(|_| EnvError::NoTracepoint(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("4.19.0+"), Some((4, 19)));
        assert_eq!(parse_release("weird"), None);
        assert!((5, 4) < (5, 8) && (6, 1) > (5, 8));
    }
}
