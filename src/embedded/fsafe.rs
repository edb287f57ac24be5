//! File-system steps that another local user must not be able to redirect:
//! checking a directory before adopting it (lstat: a real directory, the
//! expected owner, no group/other write), creating private directories,
//! changing owners and modes through descriptors opened with `O_NOFOLLOW`
//! (never through a path that a symlink could replace), and writing or
//! reading files without following a symlink at their last component.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a directory may not be adopted; None when it is fine.
pub(super) fn dir_problem(
    path: &Path,
    owners: &[u32],
    private: bool,
) -> io::Result<Option<String>> {
    let meta = fs::symlink_metadata(path)?;
    Ok(meta_problem(&meta, owners, private))
}

fn meta_problem(meta: &fs::Metadata, owners: &[u32], private: bool) -> Option<String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Some("it is a symbolic link".to_owned());
    }
    if !kind.is_dir() {
        return Some("it is not a directory".to_owned());
    }
    if !owners.contains(&meta.uid()) {
        let expected = owners
            .iter()
            .map(|uid| user_label(*uid))
            .collect::<Vec<_>>()
            .join(" or ");
        return Some(format!(
            "it belongs to {} instead of {expected}",
            user_label(meta.uid())
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {mode:04o})"
        ));
    }
    if private && mode & 0o077 != 0 {
        return Some(format!(
            "it is accessible by group or others (mode {mode:04o}, must be 0700)"
        ));
    }
    None
}

/// "uid 65534 (nobody)".
pub(super) fn user_label(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// The login name of `uid`, if the user database has one.
pub(super) fn user_name(uid: u32) -> Option<String> {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain old data; getpwuid_r fills it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call; buf.len() is its size.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() => return None,
            0 => {
                // SAFETY: on success pw_name points into buf, NUL-terminated.
                let name = unsafe { CStr::from_ptr(pwd.pw_name) };
                return name.to_str().ok().map(str::to_owned);
            }
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 2, 0),
            _ => return None,
        }
    }
}

pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a directory; fails (ELOOP/ENOTDIR) if the last component is a
/// symlink or not a directory.
pub(super) fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a file for reading without following a symlink at its last component.
pub(super) fn open_read_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

pub(super) fn read_to_string_nofollow(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    open_read_nofollow(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// chown (when `owner` is given) and chmod a directory through a descriptor,
/// so a symlink put in its place is never followed.
pub(super) fn set_dir_owner_mode(
    path: &Path,
    owner: Option<(u32, u32)>,
    mode: u32,
) -> io::Result<()> {
    let dir = open_dir_nofollow(path)?;
    if let Some((uid, gid)) = owner {
        // SAFETY: the fd is valid while `dir` lives.
        check(unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) })?;
    }
    dir.set_permissions(fs::Permissions::from_mode(mode))
}

/// Recursive chown that never follows a symlink: directories are opened
/// with O_NOFOLLOW relative to their parent's descriptor, everything else
/// is changed with fchownat(AT_SYMLINK_NOFOLLOW).
pub(super) fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let dir = open_dir_nofollow(path)?;
    // SAFETY: the fd is valid while `dir` lives.
    check(unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) })?;
    chown_children(dir.as_raw_fd(), uid, gid)
}

fn chown_children(dirfd: RawFd, uid: u32, gid: u32) -> io::Result<()> {
    for name in list_names(dirfd)? {
        // SAFETY: stat is plain old data that fstatat fills in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: dirfd is open, name is NUL-terminated, st is writable.
        check(unsafe { libc::fstatat(dirfd, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            // SAFETY: as above; the returned fd is owned by `child` below.
            let fd = unsafe {
                libc::openat(
                    dirfd,
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a freshly opened descriptor nobody else owns.
            let child = unsafe { File::from_raw_fd(fd) };
            // SAFETY: the fd is valid while `child` lives.
            check(unsafe { libc::fchown(child.as_raw_fd(), uid, gid) })?;
            chown_children(child.as_raw_fd(), uid, gid)?;
        } else {
            // SAFETY: dirfd is open and name is NUL-terminated.
            check(unsafe {
                libc::fchownat(dirfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
            })?;
        }
    }
    Ok(())
}

/// The entries of an open directory, without `.` and `..`.
fn list_names(dirfd: RawFd) -> io::Result<Vec<CString>> {
    // fdopendir takes over the descriptor it is given: hand it a duplicate.
    // SAFETY: dirfd is open; F_DUPFD_CLOEXEC returns a new descriptor.
    let dup = unsafe { libc::fcntl(dirfd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup is a directory descriptor we own; on success it belongs to the DIR.
    let dirp = unsafe { libc::fdopendir(dup) };
    if dirp.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(err);
    }
    // The duplicate shares the file offset with dirfd: start from the top.
    // SAFETY: dirp is a valid DIR stream.
    unsafe { libc::rewinddir(dirp) };
    let mut names = Vec::new();
    loop {
        // SAFETY: dirp is valid; readdir returns null at the end.
        let entry = unsafe { libc::readdir(dirp) };
        if entry.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    // SAFETY: dirp is valid and closed exactly once.
    unsafe { libc::closedir(dirp) };
    Ok(names)
}

/// Atomically replaces `dir/name` with `contents`: written to a new file
/// (O_EXCL|O_NOFOLLOW, `mode`, then chowned to `owner`) and renamed over
/// the old one, so a symlink at `dir/name` is replaced, never followed.
pub(super) fn replace_file(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dirf = open_dir_nofollow(dir)?;
    let dirfd = dirf.as_raw_fd();
    let tmp = cstring(format!(".{name}.tripload-new").as_bytes())?;
    let target = cstring(name.as_bytes())?;
    // A leftover from an interrupted write.
    // SAFETY: dirfd is open and tmp is NUL-terminated.
    if unsafe { libc::unlinkat(dirfd, tmp.as_ptr(), 0) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::NotFound {
            return Err(err);
        }
    }
    // SAFETY: as above; the fd is owned by `file` below.
    let fd = unsafe {
        libc::openat(
            dirfd,
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let written = (|| {
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = owner {
            // SAFETY: the fd is valid while `file` lives.
            check(unsafe { libc::fchown(file.as_raw_fd(), uid, gid) })?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        // SAFETY: dirfd is open; both names are NUL-terminated.
        check(unsafe { libc::renameat(dirfd, tmp.as_ptr(), dirfd, target.as_ptr()) })
    })();
    if written.is_err() {
        // SAFETY: dirfd is open and tmp is NUL-terminated.
        unsafe { libc::unlinkat(dirfd, tmp.as_ptr(), 0) };
    }
    written
}

/// Creates `path` as a new file readable only by us (O_EXCL|O_NOFOLLOW,
/// 0600) holding `contents`; fails if anything already exists there.
pub(super) fn create_private_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Reads a file that must be a regular file owned by us with no group or
/// other access; Err(reason) otherwise.
pub(super) fn read_private_file(path: &Path) -> io::Result<Result<String, String>> {
    let mut file = open_read_nofollow(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err("it is not a regular file".to_owned()));
    }
    if meta.uid() != euid() {
        return Ok(Err(format!(
            "it belongs to {} instead of {}",
            user_label(meta.uid()),
            user_label(euid())
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Ok(Err(format!(
            "it is accessible by group or others (mode {:04o}, must be 0600)",
            meta.mode() & 0o7777
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(Ok(text))
}

/// mkdtemp: a new directory `<prefix>XXXXXX` with mode 0700, owned by us.
pub(super) fn make_temp_dir(prefix: &Path) -> io::Result<PathBuf> {
    let mut template = prefix.as_os_str().as_bytes().to_vec();
    template.extend_from_slice(b"XXXXXX");
    let template = cstring(&template)?;
    let raw = template.into_raw();
    // SAFETY: raw is a writable NUL-terminated buffer that mkdtemp edits in place.
    let made = unsafe { libc::mkdtemp(raw) };
    // SAFETY: raw came from CString::into_raw and its length is unchanged.
    let template = unsafe { CString::from_raw(raw) };
    if made.is_null() {
        return Err(io::Error::last_os_error());
    }
    Ok(PathBuf::from(OsStr::from_bytes(template.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_problem_names_symlinks_owners_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let me = euid();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(dir_problem(&dir, &[me], true).unwrap(), None);
        let other = me.wrapping_add(1);
        let why = dir_problem(&dir, &[other], true).unwrap().unwrap();
        assert!(why.contains("belongs to"), "{why}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let why = dir_problem(&dir, &[me], false).unwrap().unwrap();
        assert!(why.contains("writable by group or others"), "{why}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(dir_problem(&dir, &[me], false).unwrap(), None);
        let why = dir_problem(&dir, &[me], true).unwrap().unwrap();
        assert!(why.contains("must be 0700"), "{why}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let why = dir_problem(&link, &[me], false).unwrap().unwrap();
        assert!(why.contains("symbolic link"), "{why}");
    }

    #[test]
    fn set_dir_owner_mode_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(set_dir_owner_mode(&link, None, 0o700).is_err());
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn replace_file_replaces_a_symlink_instead_of_writing_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let dir = tmp.path().join("d");
        fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("conf")).unwrap();
        replace_file(&dir, "conf", b"new", 0o600, None).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_to_string(dir.join("conf")).unwrap(), "new");
        assert!(!fs::symlink_metadata(dir.join("conf"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn chown_tree_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("f"), "x").unwrap();
        let tree = tmp.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/file"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sub/link")).unwrap();
        let (uid, gid) = if euid() == 0 {
            (65534, 65534)
        } else {
            (euid(), unsafe { libc::getegid() })
        };
        chown_tree(&tree, uid, gid).unwrap();
        for p in ["", "sub", "sub/file"] {
            assert_eq!(
                fs::symlink_metadata(tree.join(p)).unwrap().uid(),
                uid,
                "{p}"
            );
        }
        assert_eq!(
            fs::symlink_metadata(tree.join("sub/link")).unwrap().uid(),
            uid
        );
        assert_eq!(fs::metadata(&outside).unwrap().uid(), euid());
        assert_eq!(fs::metadata(outside.join("f")).unwrap().uid(), euid());
        // The tree itself given as a symlink is refused.
        let link = tmp.path().join("tree-link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        assert!(chown_tree(&link, uid, gid).is_err());
        assert_eq!(fs::metadata(&outside).unwrap().uid(), euid());
    }

    #[test]
    fn private_files_are_checked_on_reading() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("secret");
        create_private_file(&path, b"pw").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_private_file(&path).unwrap(), Ok("pw".to_owned()));
        assert!(create_private_file(&path, b"again").is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_private_file(&path).unwrap().is_err());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_private_file(&link).is_err());
    }

    #[test]
    fn temp_dirs_are_private_and_unique() {
        let tmp = tempfile::tempdir().unwrap();
        let prefix = tmp.path().join("sock-");
        let a = make_temp_dir(&prefix).unwrap();
        let b = make_temp_dir(&prefix).unwrap();
        assert_ne!(a, b);
        assert_eq!(fs::metadata(&a).unwrap().mode() & 0o777, 0o700);
        assert_eq!(dir_problem(&a, &[euid()], true).unwrap(), None);
    }
}
