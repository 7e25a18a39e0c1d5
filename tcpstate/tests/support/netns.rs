//! Named network namespaces (`ip netns`), entering them, and TUN devices created inside them.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Every namespace these tests create starts with this, followed by the creating pid.
pub const NAME_PREFIX: &str = "tcpst";

/// Longest interface name the kernel accepts (IFNAMSIZ - 1); namespace names follow it too
/// because the TUN devices are named after their namespace.
const MAX_NAME: usize = 15;

const IP_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// A fresh pair of names `tcpst<pid>-<n>a` / `...b`, pid and n in base 36 so that any pid and
/// thousands of links per process fit in 15 characters.
pub fn unique_pair() -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let stem = format!(
        "{NAME_PREFIX}{}-{}",
        base36(std::process::id()),
        base36(n % 36u32.pow(3))
    );
    debug_assert!(stem.len() < MAX_NAME);
    (format!("{stem}a"), format!("{stem}b"))
}

/// The pid encoded in a name made by `unique_pair`, if it is one.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    u32::from_str_radix(pid, 36).ok()
}

/// Runs `ip` with the given arguments (and optional stdin), bounded in time.
pub fn ip(args: &[&str], stdin: Option<&str>) -> io::Result<()> {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip` (iproute2): {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())?;
    }
    let status = wait_bounded(&mut child, IP_TIMEOUT)?;
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut err);
    }
    Err(io::Error::other(format!(
        "`ip {}` failed ({status}): {}",
        args.join(" "),
        err.trim()
    )))
}

/// Waits for a child at most `limit`, killing it when the limit passes.
pub fn wait_bounded(
    child: &mut std::process::Child,
    limit: Duration,
) -> io::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("child {} did not exit within {limit:?}", child.id()),
            ));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Names of the namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

pub fn exists(name: &str) -> bool {
    fs::metadata(format!("/run/netns/{name}")).is_ok()
}

pub fn add(name: &str) -> io::Result<()> {
    ip(&["netns", "add", name], None)
}

pub fn del(name: &str) -> io::Result<()> {
    ip(&["netns", "del", name], None)
}

/// Deletes namespaces left behind by test processes that died without cleaning up (killed,
/// aborted): those whose creator pid no longer exists. Returns how many were deleted.
pub fn remove_stale() -> usize {
    let mut removed = 0;
    for name in list() {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if fs::metadata(format!("/proc/{pid}")).is_ok() {
            continue;
        }
        // Another process may be removing the same one at this moment; either way it is gone.
        if del(&name).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Moves the calling thread into the named namespace. Only this thread moves: the rest of the
/// process (and every socket it already has) stays where it was.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let file = fs::File::open(format!("/run/netns/{name}"))
        .map_err(|e| io::Error::new(e.kind(), format!("network namespace {name}: {e}")))?;
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside the named namespace, so the caller's thread never
/// changes namespace. Sockets `f` creates belong to that namespace and stay usable after it
/// returns, from any thread.
pub fn run_in_netns<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    thread::scope(|s| {
        s.spawn(|| {
            enter_netns(name)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread inside the namespace panicked")))
    })
}

/// struct ifreq as TUNSETIFF reads it: the name, then the flags, padded to the union's size.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates a layer-3 TUN device `dev` inside namespace `ns` and returns its (non-blocking) fd.
/// The device lives as long as the fd.
pub fn open_tun(ns: &str, dev: &str) -> io::Result<OwnedFd> {
    if dev.len() > MAX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {dev} is longer than {MAX_NAME}"),
        ));
    }
    let dev = dev.to_owned();
    // The device is created in the namespace of the task that opens /dev/net/tun.
    run_in_netns(ns, move || {
        let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
        // SAFETY: valid NUL-terminated path.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
            _pad: [0; 22],
        };
        for (dst, src) in req.name.iter_mut().zip(dev.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: TUNSETIFF reads an ifreq, which IfReq lays out.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    })
}
