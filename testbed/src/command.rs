//! Running external commands (`ip`, `tc`) with errors that say what failed.

use std::process::{Command, Output};

/// An external command failed to start or exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started at all (usually: not installed).
    #[error("could not run `{command}`: {source} (is the program installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited with a failure status.
    #[error("`{command}` failed with {status}: {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its output, or an error carrying the
/// command line and its stderr when it fails.
pub fn run_checked(cmd: &mut Command) -> Result<Output, CommandError> {
    let output = cmd.output().map_err(|source| CommandError::Spawn {
        command: describe(cmd),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command: describe(cmd),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Convenience: builds and runs `ip ARGS...`.
pub(crate) fn ip(args: &[&str]) -> Result<Output, CommandError> {
    run_checked(Command::new("ip").args(args))
}
