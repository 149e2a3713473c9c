//! The code on the desktop's clipboard (WCAG 2.2 SC 3.3.8: no retyping six digits), taken
//! off again when it expires unless something else replaced it.
//!
//! X11 and Wayland keep no clipboard text of their own: the program that copied serves it
//! while it lives, and the clipboard is empty once it exits. So `code --copy` and `speak
//! --copy` start a *holder*: `codereader` itself again (the hidden `clipboard-hold` command),
//! in a process group of its own with no terminal, which runs the standard tool in the
//! foreground (`wl-copy --foreground` on Wayland, `xclip -quiet` on X11) with the code on its
//! standard input. The tool exits by itself when another program takes the clipboard; at
//! expiry the holder ends the tool if it still serves the code, which takes the code off
//! the clipboard. So a newer copy is never cleared. The code crosses a pipe only, never the
//! command line (`ps`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long a counter-based code (which does not expire) stays on the clipboard.
pub const COUNTER_CODE_SECONDS: u64 = 120;

/// A tool that exits within this long after starting has failed to take the clipboard.
const TAKE_LIMIT: Duration = Duration::from_millis(500);

/// Why the code could not be put on the clipboard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipboardError {
    /// Neither `WAYLAND_DISPLAY` nor `DISPLAY` is set.
    #[error("no desktop session to copy to (neither WAYLAND_DISPLAY nor DISPLAY is set)")]
    NoSession,
    /// The tool is not installed or cannot run.
    #[error("cannot run {tool}: {cause}; install it with: apt-get install {package}")]
    Tool {
        /// `wl-copy` or `xclip`.
        tool: &'static str,
        /// Its Debian package.
        package: &'static str,
        /// Why.
        cause: io::Error,
    },
    /// The tool refused (no display, no seat).
    #[error("{tool} could not take the clipboard: {message}")]
    Refused {
        /// `wl-copy` or `xclip`.
        tool: &'static str,
        /// What it said.
        message: String,
    },
    /// The holder process failed.
    #[error("the clipboard holder failed: {0}")]
    Holder(String),
}

/// The desktop's clipboard tool, by the session's environment (Wayland first: an X11
/// program under Xwayland would only reach X11 programs).
fn tool() -> Result<(&'static str, &'static str, Vec<&'static str>), ClipboardError> {
    let set = |name| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("WAYLAND_DISPLAY") {
        Ok((
            "wl-copy",
            "wl-clipboard",
            vec!["--foreground", "--type", "text/plain"],
        ))
    } else if set("DISPLAY") {
        Ok((
            "xclip",
            "xclip",
            vec!["-quiet", "-selection", "clipboard", "-in"],
        ))
    } else {
        Err(ClipboardError::NoSession)
    }
}

/// Puts `code` on the clipboard until `seconds` have passed (or something else is copied),
/// through a detached holder process; returns once the clipboard holds it.
///
/// # Errors
/// [`ClipboardError`]s: no session, no tool, the tool refused.
pub fn copy(code: &str, seconds: u64) -> Result<(), ClipboardError> {
    tool()?;
    let exe = std::env::current_exe().map_err(|e| ClipboardError::Holder(e.to_string()))?;
    use std::os::unix::process::CommandExt;
    let mut holder = Command::new(exe)
        .args(["clipboard-hold", "--seconds", &seconds.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Holds no directory (a mount) busy while it waits.
        .current_dir("/")
        // Its own process group: the terminal's ctrl-c or hang-up does not end it early.
        .process_group(0)
        .spawn()
        .map_err(|e| ClipboardError::Holder(e.to_string()))?;
    if let Some(mut input) = holder.stdin.take() {
        input
            .write_all(code.as_bytes())
            .map_err(|e| ClipboardError::Holder(e.to_string()))?;
    }
    // One line: `copied`, or what went wrong.
    let mut line = String::new();
    if let Some(out) = holder.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    let line = line.trim_end();
    if line == "copied" {
        return Ok(());
    }
    let _ = holder.wait();
    Err(ClipboardError::Holder(if line.is_empty() {
        "it ended without a word".to_owned()
    } else {
        line.to_owned()
    }))
}

/// The holder (`codereader clipboard-hold --seconds N`, code on standard input): serves the
/// code through the tool for `seconds`, says `copied` (or the error) on standard output, and
/// ends the tool at expiry unless it has already ended (something else was copied).
///
/// # Errors
/// [`ClipboardError`]s, also said on standard output for [`copy`].
pub fn hold(seconds: u64) -> Result<(), ClipboardError> {
    let mut code = zeroize::Zeroizing::new(String::new());
    io::stdin()
        .read_to_string(&mut code)
        .map_err(|e| ClipboardError::Holder(e.to_string()))?;
    // The wall clock, not a monotonic one: a laptop suspended meanwhile wakes up past the
    // expiry, and the code must then go at once.
    let deadline = SystemTime::now() + Duration::from_secs(seconds);
    let mut out = io::stdout();
    let mut child = match start(code.trim()) {
        Ok(child) => child,
        Err(e) => {
            let _ = writeln!(out, "{e}");
            return Err(e);
        }
    };
    let _ = writeln!(out, "copied");
    // Nothing more is written: the caller reads that one line and goes on.
    let _ = out.flush();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            // Something else took the clipboard: nothing to clear.
            return Ok(());
        }
        if SystemTime::now() >= deadline {
            // Still ours: the code expired, take it off.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the tool with `code` and checks it took the clipboard (it is still serving after
/// [`TAKE_LIMIT`]).
fn start(code: &str) -> Result<Child, ClipboardError> {
    let (tool, package, args) = tool()?;
    let mut child = Command::new(tool)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|cause| ClipboardError::Tool {
            tool,
            package,
            cause,
        })?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(code.as_bytes())
            .map_err(|e| ClipboardError::Holder(e.to_string()))?;
    }
    // Its messages are read to the end on a thread, so it never blocks on a full pipe (or
    // dies writing to a closed one) while it serves the clipboard.
    let said = Arc::new(Mutex::new(String::new()));
    if let Some(err) = child.stderr.take() {
        let said = Arc::clone(&said);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                if let Ok(mut said) = said.lock() {
                    if said.is_empty() {
                        said.push_str(line.trim());
                    }
                }
            }
        });
    }
    let started = Instant::now();
    while started.elapsed() < TAKE_LIMIT {
        if let Ok(Some(status)) = child.try_wait() {
            // Its last words may still be on the way.
            std::thread::sleep(Duration::from_millis(50));
            let message = said.lock().map(|s| s.clone()).unwrap_or_default();
            return Err(ClipboardError::Refused {
                tool,
                message: if message.is_empty() {
                    status.to_string()
                } else {
                    message
                },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}
