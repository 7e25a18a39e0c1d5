//! Recording files on a real file system: permissions, refusals, a full disk.

mod skip;

use std::{
    ffi::CString,
    fs,
    io::{self, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use tcpstate::{
    event::Event,
    input::{Counter, Input, KernelCounters},
    record::{create_record_file, CreateError, Header, RecordReader, RecordWriter},
};

/// A fresh directory, removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tcpstate-record-fs-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn header() -> Header {
    Header::new(
        "6.18.0".into(),
        1_000,
        2_000,
        "tcpstate trace --record t.tsr".into(),
    )
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_new_file_is_private_and_readable_back() {
    let dir = TempDir::new("new");
    let path = dir.path("t.tsr");
    let file = create_record_file(&path, false).unwrap();
    assert_eq!(mode(&path), 0o600);
    let mut w = RecordWriter::new(file, &header()).unwrap();
    w.write(&Input::Tick { now_ns: 5 }).unwrap();
    w.finish().unwrap().sync_all().unwrap();
    let (reader, h) = RecordReader::open(fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(h, header());
    let got: Vec<_> = reader.map(|r| r.unwrap()).collect();
    assert_eq!(got, [Input::Tick { now_ns: 5 }]);
}

#[test]
fn an_existing_file_is_kept_unless_forced() {
    let dir = TempDir::new("exists");
    let path = dir.path("t.tsr");
    fs::write(&path, b"precious").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

    let err = create_record_file(&path, false).unwrap_err();
    assert!(matches!(err, CreateError::Exists(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!("{} exists (use --force to overwrite)", path.display())
    );
    assert_eq!(fs::read(&path).unwrap(), b"precious");

    let mut file = create_record_file(&path, true).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        0,
        "forced overwrite truncates"
    );
    assert_eq!(mode(&path), 0o600, "forced overwrite tightens the mode");
    file.write_all(b"new").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"new");
}

#[test]
fn a_symlink_is_refused_even_when_forced() {
    let dir = TempDir::new("symlink");
    let target = dir.path("target");
    fs::write(&target, b"precious").unwrap();
    let link = dir.path("t.tsr");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.path("dangling.tsr");
    std::os::unix::fs::symlink(dir.path("nowhere"), &dangling).unwrap();

    for path in [&link, &dangling] {
        for force in [false, true] {
            let err = create_record_file(path, force).unwrap_err();
            assert!(
                matches!(err, CreateError::Symlink(_)),
                "force {force}: {err}"
            );
            assert_eq!(
                err.to_string(),
                format!("{} is a symlink; refusing to follow it", path.display())
            );
        }
    }
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(!dir.path("nowhere").exists());
}

#[test]
fn a_hard_linked_file_is_not_truncated() {
    let dir = TempDir::new("hardlink");
    let other = dir.path("other");
    fs::write(&other, b"precious").unwrap();
    let path = dir.path("t.tsr");
    fs::hard_link(&other, &path).unwrap();
    let err = create_record_file(&path, true).unwrap_err();
    assert!(matches!(err, CreateError::HardLinked(_)), "{err}");
    assert_eq!(fs::read(&other).unwrap(), b"precious");
    assert_eq!(fs::metadata(&other).unwrap().nlink(), 2);
}

#[test]
fn a_missing_directory_is_an_io_error_naming_the_file() {
    let dir = TempDir::new("missing");
    let path = dir.path("no/such/dir/t.tsr");
    let err = create_record_file(&path, false).unwrap_err();
    assert!(matches!(err, CreateError::Io(_, ref e) if e.kind() == io::ErrorKind::NotFound));
    assert!(err
        .to_string()
        .starts_with(&format!("cannot create {}: ", path.display())));
}

/// A tmpfs mounted for one test, unmounted on drop (also when the test fails).
struct SmallTmpfs {
    dir: TempDir,
}

impl SmallTmpfs {
    fn mount(size: &str) -> Self {
        let dir = TempDir::new("tmpfs");
        let target = CString::new(dir.0.as_os_str().as_encoded_bytes()).unwrap();
        let opts = CString::new(format!("size={size},mode=0700")).unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", io::Error::last_os_error());
        SmallTmpfs { dir }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path. MNT_DETACH: never leave the mount behind.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn sample(n: u64) -> Input {
    match n % 3 {
        0 => {
            let mut ev = Event::zeroed();
            ev.ts_ns = n;
            ev.skaddr = 0xffff_8880_0000_0000 + n;
            ev.oldstate = 7;
            ev.newstate = 2;
            ev.family = 2;
            ev.dport = 443;
            Input::Event(ev)
        }
        1 => Input::Tick { now_ns: n },
        _ => Input::Counters(KernelCounters::zero().with(Counter::Seen, n)),
    }
}

#[test]
fn a_full_disk_is_reported_and_leaves_a_valid_prefix() {
    if !skip::need_root("a_full_disk_is_reported_and_leaves_a_valid_prefix") {
        return;
    }
    let fs = SmallTmpfs::mount("64k");
    let path = fs.dir.path("t.tsr");
    let file = create_record_file(&path, false).unwrap();
    let mut w = RecordWriter::new(file, &header()).unwrap();
    let mut written = 0u64;
    let err = loop {
        if let Err(e) = w.write(&sample(written)) {
            break e;
        }
        written += 1;
        assert!(written < 10_000_000, "64 KiB of tmpfs never filled up");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(w);

    let size = fs::metadata(&path).unwrap().len();
    assert!(size > 32 * 1024, "only {size} bytes reached the file");
    let (reader, h) = RecordReader::open(fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(h, header());
    let mut read = 0u64;
    for item in reader {
        match item {
            Ok(input) => {
                assert_eq!(input, sample(read), "record {read}");
                read += 1;
            }
            Err(e) => {
                assert!(e.is_truncation(), "{e}");
                assert!(e.offset < size);
                break;
            }
        }
    }
    assert!(read > 0 && read <= written, "read {read} of {written}");
}
