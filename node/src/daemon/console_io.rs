//! What a client does with an open serial-console stream, wherever it came
//! from (the local control socket or a node's remote console port): run
//! one shell command and collect its output ([`exec`]), or attach this
//! terminal to it until Ctrl-] ([`attach`]).

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The byte Ctrl-] sends: detaches an interactive session.
pub const DETACH_BYTE: u8 = 0x1d;

/// Why running a command on a console failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Reading or writing the console stream failed.
    #[error("console stream: {0}")]
    Io(#[from] std::io::Error),
    /// The other end closed the console before the command finished.
    #[error("the console closed before the command finished; output so far: {output}")]
    Closed {
        /// What the console printed until then.
        output: String,
    },
    /// The marker the command echoes last did not arrive in time.
    #[error("no `{marker}` from the console within {timeout:?}; output so far: {output}")]
    Timeout {
        /// The marker waited for.
        marker: String,
        /// How long it waited.
        timeout: Duration,
        /// What the console printed until then.
        output: String,
    },
}

/// Runs a shell command on a serial console and returns what it printed
/// (the guest must have a shell on its console, as the default appliance
/// does). Output ends at a marker the command echoes last; reading stops at
/// `timeout`.
pub async fn exec<S>(console: &mut S, command: &str, timeout: Duration) -> Result<String, ExecError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nonce: u64 = rand::random();
    let marker = format!("SLICENET-DONE-{nonce:016x}");
    // The marker is assembled by the shell, so the echo of the typed line
    // never contains it verbatim.
    let line = format!("\n{command}; echo \"SLICENET-DONE-\"'{nonce:016x}'\n");
    console.write_all(line.as_bytes()).await?;
    console.flush().await?;
    let mut output = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&output);
        if let Some(end) = text.find(&marker) {
            return Ok(command_output(&text, command, end));
        }
        let n = tokio::select! {
            n = console.read(&mut buf) => n?,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ExecError::Timeout { marker, timeout, output: text.into_owned() });
            }
        };
        if n == 0 {
            return Err(ExecError::Closed {
                output: text.into_owned(),
            });
        }
        output.extend_from_slice(&buf[..n]);
    }
}

/// The command's output in a console transcript that holds the marker at
/// `end`: what follows the echoed command line, trimmed.
fn command_output(text: &str, command: &str, end: usize) -> String {
    let start = text
        .find(command)
        .map(|i| i + command.len())
        .unwrap_or(0)
        .min(end);
    text[start..end]
        .trim_start_matches(|c| c != '\n')
        .trim()
        .to_string()
}

/// Puts the terminal on stdin into raw mode (so Ctrl-] and every other key
/// go to the console at once) and restores it when dropped; does nothing
/// when stdin is not a terminal.
struct RawTerminal {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawTerminal { saved: None };
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawTerminal { saved: None };
        }
        RawTerminal { saved: Some(saved) }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

/// Connects this terminal to a console until Ctrl-] is typed, stdin ends
/// or the console closes.
pub async fn attach<S>(console: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite,
{
    let _raw = RawTerminal::enter();
    let (mut rd, mut wr) = tokio::io::split(console);
    let to_vm = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            let n = stdin.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            // Whatever came before Ctrl-] in the same read still goes out.
            if let Some(at) = buf[..n].iter().position(|&b| b == DETACH_BYTE) {
                wr.write_all(&buf[..at]).await?;
                return Ok(());
            }
            wr.write_all(&buf[..n]).await?;
        }
    };
    let from_vm = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let mut out = std::io::stdout();
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    };
    tokio::select! {
        r = to_vm => r,
        r = from_vm => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console's far end that behaves like a shell echoing what it is
    /// typed and then running it: answers `line` with `reply`.
    async fn fake_shell(mut far: tokio::io::DuplexStream, reply: &'static str) {
        let mut typed = Vec::new();
        let mut buf = [0u8; 256];
        while !typed.ends_with(b"'\n") {
            let n = far.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            typed.extend_from_slice(&buf[..n]);
        }
        let typed = String::from_utf8(typed).unwrap();
        let nonce = typed.rsplit('\'').nth(1).unwrap().to_string();
        far.write_all(typed.as_bytes()).await.unwrap();
        let answer = format!("{reply}\r\nSLICENET-DONE-{nonce}\r\n# ");
        far.write_all(answer.as_bytes()).await.unwrap();
    }

    #[tokio::test]
    async fn exec_returns_only_what_the_command_printed() {
        let (mut near, far) = tokio::io::duplex(4096);
        let shell = tokio::spawn(fake_shell(far, "hi-2"));
        let out = exec(&mut near, "echo hi-$((1+1))", Duration::from_secs(10))
            .await
            .unwrap();
        shell.await.unwrap();
        assert_eq!(out, "hi-2");
    }

    #[tokio::test]
    async fn exec_reports_a_console_that_closes_early() {
        let (mut near, far) = tokio::io::duplex(4096);
        drop(far);
        let err = exec(&mut near, "true", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ExecError::Io(_) | ExecError::Closed { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exec_gives_up_at_its_timeout_with_the_output_so_far() {
        let (mut near, mut far) = tokio::io::duplex(4096);
        far.write_all(b"booting...").await.unwrap();
        let err = exec(&mut near, "true", Duration::from_millis(100))
            .await
            .unwrap_err();
        match err {
            ExecError::Timeout { output, .. } => assert_eq!(output, "booting..."),
            other => panic!("expected a timeout, got {other}"),
        }
        drop(far);
    }
}
