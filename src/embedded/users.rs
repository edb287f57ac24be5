//! The OS account the server runs as: itself, or when we are root (initdb,
//! pg_ctl and postgres all refuse root) an unprivileged one, `postgres` or
//! else `nobody`; and handing the data directory to that account.

use super::{fsafe, io_err, EmbeddedError};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The accounts the server may run as when we are root, in order of preference.
pub(super) const SERVER_USERS: [&str; 2] = ["postgres", "nobody"];

/// The unprivileged OS account the server runs as when we are root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// None when we are not root (the server runs as us), else the first of
/// [`SERVER_USERS`] that exists.
pub(super) fn server_user() -> Result<Option<RunAs>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in SERVER_USERS {
        match lookup_user(name) {
            Ok(Some(user)) if user.uid != 0 => return Ok(Some(user)),
            Ok(_) => {}
            Err(source) => {
                return Err(EmbeddedError::UserLookup {
                    name: name.to_owned(),
                    source,
                })
            }
        }
    }
    Err(EmbeddedError::NoServerUser)
}

pub(super) fn lookup_user(name: &str) -> io::Result<Option<RunAs>> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain old data; getpwnam_r fills it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the duration of the call and
        // buf.len() is the true size of buf.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => {
                return Ok(Some(RunAs {
                    name: name.to_owned(),
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                }))
            }
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 2, 0),
            // POSIX lets these mean "no such user".
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The server insists on owning its data directory (mode 0700/0750). An
/// existing cluster may belong to another account (e.g. `nobody` before a
/// `postgres` user was created), hence the recursive variant. Neither
/// follows symlinks.
pub(super) fn take_ownership(
    data_dir: &Path,
    run_as: Option<&RunAs>,
    existing_cluster: bool,
) -> Result<(), EmbeddedError> {
    let Some(user) = run_as else {
        return Ok(());
    };
    let meta = fs::symlink_metadata(data_dir).map_err(|e| io_err("inspect", data_dir, e))?;
    if meta.uid() == user.uid && meta.gid() == user.gid {
        return Ok(());
    }
    if existing_cluster {
        tracing::info!(
            "changing ownership of {} to `{}` so the server can run as that user",
            data_dir.display(),
            user.name
        );
        fsafe::chown_tree(data_dir, user.uid, user.gid)
            .map_err(|e| io_err("change the owner of", data_dir, e))
    } else {
        fsafe::set_dir_owner_mode(data_dir, Some((user.uid, user.gid)), 0o700)
            .map_err(|e| io_err("change the owner of", data_dir, e))
    }
}
