//! Running the server's tools (initdb, pg_ctl, postgres) as the server's
//! user with an emptied environment, and turning a failed run into an error
//! that shows the command line and its output.

use super::users::RunAs;
use super::{access, EmbeddedError};
use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};

/// Base command for initdb / pg_ctl / postgres, dropping to `run_as`, with
/// an emptied environment (see [`access::clean_env`]).
pub(super) fn server_command(program: &Path, run_as: Option<&RunAs>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    // Our cwd may be unreadable for the server user (e.g. under /root), and
    // the PostgreSQL tools resolve paths relative to it.
    cmd.current_dir("/").stdin(Stdio::null());
    match run_as {
        Some(user) => {
            cmd.uid(user.uid).gid(user.gid);
            access::clean_env(&mut cmd, home, Some(&user.name));
        }
        None => access::clean_env(&mut cmd, home, access::owner_name().as_deref()),
    }
    cmd
}

pub(super) fn command_line(cmd: &Command, run_as: Option<&RunAs>) -> String {
    let mut line = shell_quote(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    if let Some(user) = run_as {
        line.push_str(&format!(" (as user {})", user.name));
    }
    line
}

pub(super) fn shell_quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Run to completion; a non-zero exit becomes CommandFailed with its output.
pub(super) fn run_captured(
    mut cmd: Command,
    run_as: Option<&RunAs>,
    hint: &str,
) -> Result<Output, EmbeddedError> {
    let command = command_line(&cmd, run_as);
    let out = cmd.output().map_err(|source| EmbeddedError::Spawn {
        command: command.clone(),
        hint: "check that the PostgreSQL binaries are intact and executable".to_owned(),
        source,
    })?;
    if out.status.success() {
        return Ok(out);
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(stdout.trim());
    }
    Err(EmbeddedError::CommandFailed {
        command,
        status: describe_exit(Ok(out.status)),
        output,
        log_tail: String::new(),
        hint: hint.to_owned(),
    })
}

pub(super) fn describe_exit(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("could not wait for it: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote(OsStr::new("port=5")), "port=5");
        assert_eq!(shell_quote(OsStr::new("a b'c")), r"'a b'\''c'");
    }
}
