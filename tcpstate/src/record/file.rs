//! Creating the file a trace records into.

use std::{
    fs::{self, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Recordings name processes and addresses: only their owner may read them.
const MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0} exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("{0} is a symlink; refusing to follow it")]
    Symlink(PathBuf),
    /// Overwriting would also change the file under its other names.
    #[error("{0} has other hard links; refusing to overwrite it")]
    HardLinked(PathBuf),
    #[error("cannot create {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Creates `path` for a recording, mode 0600, never following a symlink at `path`.
///
/// Without `force` the file must not exist. With `force` an existing regular file is truncated
/// and its mode tightened to 0600, unless it has other hard links (truncating would empty those
/// too, a classic trap for a root process writing into a shared directory); anything else (a
/// FIFO, `/dev/null`) is opened as it is.
pub fn create_record_file(path: &Path, force: bool) -> Result<File, CreateError> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if force {
        // Truncated only after the checks below.
        opts.create(true);
    } else {
        opts.create_new(true);
    }
    let io_err = |e| CreateError::Io(path.to_path_buf(), e);
    let file = match opts.open(path) {
        Ok(f) => f,
        // O_NOFOLLOW: ELOOP; O_EXCL: EEXIST, also for a symlink.
        Err(e)
            if is_symlink(path)
                && (e.raw_os_error() == Some(libc::ELOOP)
                    || e.kind() == io::ErrorKind::AlreadyExists) =>
        {
            return Err(CreateError::Symlink(path.to_path_buf()))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(CreateError::Exists(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(e)),
    };
    if force {
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_file() {
            if meta.nlink() > 1 {
                return Err(CreateError::HardLinked(path.to_path_buf()));
            }
            file.set_len(0).map_err(io_err)?;
            if meta.mode() & 0o7777 != MODE {
                file.set_permissions(Permissions::from_mode(MODE))
                    .map_err(io_err)?;
            }
        }
    }
    Ok(file)
}
