//! The command line: `enroll`, `code`, `speak`, `settings`, `run`, `clock`, `status`,
//! `audio`. The clap types and the small commands are here; `speak` (its outputs and
//! planning) and `settings` (checking and showing them) have a file each, and `run` is
//! [`crate::run_loop`].

mod settings;
mod speak;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use codereader_otp::{KeyPolicy, KeyUri, OtpKind, UnixTime, pskc};
use codereader_speech::VoicePack;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError, Effective, UserSettings};
use crate::process::{EXIT_HELP, Exit, Failure, build_floor, log, now};
use crate::run_loop;
use crate::timesync;
use crate::token_file::{
    Basis, Label, Progress, StateDir, TakeError, TakenCode, Token, current_step,
};
use crate::voice;

/// codereader: the talking token. One key speaks the current one-time code.
#[derive(Debug, Parser)]
#[command(name = "codereader", version, about, long_about = None, after_help = EXIT_HELP)]
pub struct Cli {
    /// State directory (token and user settings) [default: $XDG_STATE_HOME/codereader,
    /// /var/lib/codereader for the system service].
    #[arg(long, global = true, env = "CODEREADER_STATE", value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Config file [default: $XDG_CONFIG_HOME/codereader/config.toml, then
    /// /etc/codereader/config.toml, else built-in defaults].
    #[arg(long, global = true, env = "CODEREADER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Voice packs directory (one subdirectory per language).
    #[arg(long, global = true, env = "CODEREADER_VOICES", value_name = "DIR")]
    pub voices: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a token (from an otpauth:// URI or a PSKC file). The secret is never printed.
    Enroll(EnrollArgs),
    /// Print the current code (for sighted helpers, scripts and tests). For an HOTP token this
    /// uses up a counter, exactly like speaking it.
    Code(CodeArgs),
    /// Speak the current code once, on the sound card or into a WAV file.
    Speak(SpeakArgs),
    /// Show the settings, or change them (kept across restarts).
    Settings(SettingsArgs),
    /// The device loop: keys from the terminal, evdev devices and GPIO lines, as configured.
    Run(RunArgs),
    /// Show the clock's state; after the clock ran backwards and was checked, accept it.
    Clock(ClockArgs),
    /// Show the enrolled token (never its secret) and the clock's state.
    Status,
    /// Show the output device the config names; with --list, the names it can name.
    Audio(AudioArgs),
    /// (Internal) keep a code on the clipboard until it expires; started by `--copy`.
    #[command(hide = true)]
    ClipboardHold(ClipboardHoldArgs),
}

/// `clipboard-hold` options (the code comes on standard input).
#[derive(Debug, Args)]
pub struct ClipboardHoldArgs {
    /// How long the code stays on the clipboard.
    #[arg(long)]
    pub seconds: u64,
}

/// `audio` options.
#[derive(Debug, Args)]
pub struct AudioArgs {
    /// List the output devices, by the names `[audio] device` in the config takes.
    #[arg(long)]
    pub list: bool,
}

/// `enroll` options.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// otpauth://totp/... or otpauth://hotp/... URI; `-` reads it from standard input (keeps
    /// the secret out of the shell history and the process list).
    #[arg(
        long,
        value_name = "URI",
        conflicts_with = "pskc",
        required_unless_present = "pskc"
    )]
    pub uri: Option<String>,
    /// PSKC (RFC 6030) key container file.
    #[arg(long, value_name = "FILE", requires = "serial")]
    pub pskc: Option<PathBuf>,
    /// Serial number of the token (selects the key in a PSKC file; spoken by `status`).
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// Pre-shared key (hex) that decrypts an encrypted PSKC file.
    #[arg(long, value_name = "HEX", requires = "pskc")]
    pub pskc_key: Option<String>,
    /// Overwrite an enrolled token.
    #[arg(long)]
    pub replace: bool,
    /// Accept secrets shorter than 128 bits (some old tokens have 80-bit secrets).
    #[arg(long)]
    pub allow_short_secret: bool,
}

/// `code` options.
#[derive(Debug, Args)]
pub struct CodeArgs {
    /// Use this time (seconds since 1970, any from 0) instead of the clock, like `oathtool
    /// --now`: the clock's checks do not apply and its record is left alone.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub at: Option<u64>,
    /// Print the code in large block digits, grouped as spoken, with the seconds it stays
    /// valid (bright white on black on a terminal).
    #[arg(long)]
    pub large: bool,
    /// Also put the code on the desktop's clipboard (X11 or Wayland) until it expires (a
    /// counter-based code for two minutes), unless something else is copied meanwhile.
    #[arg(long)]
    pub copy: bool,
}

/// `speak` options.
#[derive(Debug, Args)]
pub struct SpeakArgs {
    /// Write the speech to this WAV file (mono, 16-bit, 22 050 Hz) instead of playing it.
    #[arg(long, value_name = "FILE")]
    pub wav: Option<PathBuf>,
    /// Language (a voice pack tag such as da or en) for this time only.
    #[arg(long, value_name = "TAG")]
    pub lang: Option<String>,
    /// Rate step for this time only (-3 slowest .. 3 fastest).
    #[arg(long, value_name = "STEP", allow_negative_numbers = true)]
    pub rate: Option<i8>,
    /// Volume step for this time only (-8 quietest .. 0 loudest, 3 dB each).
    #[arg(long, value_name = "STEP", allow_negative_numbers = true)]
    pub volume: Option<i8>,
    /// Voice for this time only (a voice of the language; `settings --list-voices`).
    #[arg(long, value_name = "NAME")]
    pub voice: Option<String>,
    /// Use this time (seconds since 1970, any from 0) instead of the clock, like `oathtool
    /// --now`: the clock's checks do not apply and its record is left alone.
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub at: Option<u64>,
    /// Outputs for this time only, instead of the config's `outputs`: speech (the sound
    /// card), speechd (Speech Dispatcher, the desktop's voice), braille (BRLTTY).
    /// Repeatable or comma-separated.
    #[arg(long, value_name = "OUTPUT")]
    pub output: Vec<String>,
    /// Also put the code on the desktop's clipboard until it expires (as `code --copy`;
    /// `[desktop] copy = true` in the config does it every time).
    #[arg(long)]
    pub copy: bool,
}

/// `settings` options; without any, the settings are shown.
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// Language (voice pack tag).
    #[arg(long, visible_alias = "language", value_name = "TAG")]
    pub lang: Option<String>,
    /// Voice of the language (the one --lang sets, else the current one), by its name in
    /// the voice pack; --list-voices lists them.
    #[arg(long, value_name = "NAME")]
    pub voice: Option<String>,
    /// List the voices of every language (the one speaking marked *), changing nothing.
    #[arg(
        long,
        conflicts_with_all = ["lang", "voice", "volume", "rate", "bind", "evdev_bind", "reset"]
    )]
    pub list_voices: bool,
    /// Volume step (-8 quietest .. 0 loudest).
    #[arg(long, value_name = "STEP", allow_negative_numbers = true)]
    pub volume: Option<i8>,
    /// Rate step (-3 slowest .. 3 fastest).
    #[arg(long, value_name = "STEP", allow_negative_numbers = true)]
    pub rate: Option<i8>,
    /// Bind terminal keys: ACTION=KEY[,KEY...] (e.g. speak=space,s). Repeatable.
    #[arg(long, value_name = "ACTION=KEYS")]
    pub bind: Vec<String>,
    /// Bind evdev keys: ACTION=KEY[,KEY...] (e.g. speak=KEY_KPENTER). Repeatable.
    #[arg(long, value_name = "ACTION=KEYS")]
    pub evdev_bind: Vec<String>,
    /// Forget every change (back to the config's values).
    #[arg(long)]
    pub reset: bool,
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Use this fixed time (seconds since 1970) instead of the clock (headless tests).
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub at: Option<u64>,
    /// Do not read keys from the terminal even if the config says so.
    #[arg(long)]
    pub no_terminal: bool,
}

/// `clock` options.
#[derive(Debug, Args)]
pub struct ClockArgs {
    /// The clock was checked and is right: give codes again although it moved backwards.
    #[arg(long)]
    pub accept: bool,
}

/// The state directory from `--state`/`CODEREADER_STATE`, or the XDG default.
///
/// # Errors
/// When neither `XDG_STATE_HOME` nor `HOME` is set.
pub fn state_dir(explicit: Option<&Path>) -> anyhow::Result<StateDir> {
    match codereader_atomicfile::state_dir(explicit) {
        Some(dir) => Ok(StateDir::new(dir)),
        None => bail!(
            "no state directory: give --state DIR or set CODEREADER_STATE, XDG_STATE_HOME or HOME"
        ),
    }
}

/// Runs the program; `main` is this plus the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_command(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("codereader: error: {:#}", failure.error);
            ExitCode::from(failure.exit as u8)
        }
    }
}

fn run_command(cli: Cli) -> Result<(), Failure> {
    let state = state_dir(cli.state.as_deref())?;
    match cli.command {
        Command::Enroll(args) => enroll(&state, args),
        Command::Code(args) => code(&state, cli.config.as_deref(), cli.voices.as_deref(), &args),
        Command::ClipboardHold(args) => crate::clipboard::hold(args.seconds).map_err(Failure::from),
        Command::Speak(args) => {
            speak::speak(&state, cli.config.as_deref(), cli.voices.as_deref(), &args)
        }
        Command::Settings(args) => {
            settings::settings(&state, cli.config.as_deref(), cli.voices.as_deref(), &args)
        }
        Command::Run(args) => {
            // A mistake in the config never stops the device: it starts on the defaults for
            // what is wrong and says so (`run_loop::run`).
            let (config, mistakes) = Config::find_lenient(cli.config.as_deref());
            run_loop::run(
                &state,
                &config,
                cli.voices.as_deref(),
                &run_loop::RunOptions {
                    at: args.at,
                    terminal: config.input.terminal && !args.no_terminal,
                    mistakes: mistakes.iter().map(ToString::to_string).collect(),
                },
            )
        }
        Command::Clock(args) => clock(&state, cli.config.as_deref(), args.accept),
        Command::Status => status(&state),
        Command::Audio(args) => audio(cli.config.as_deref(), &args),
    }
}

/// `audio [--list]`: the configured output device, and the ones there are.
fn audio(config_path: Option<&Path>, args: &AudioArgs) -> Result<(), Failure> {
    let config = Config::find(config_path)?;
    let configured = config.audio.device.as_deref().unwrap_or("default");
    let mut out = format!("audio device: {configured}\n");
    if args.list {
        let devices = codereader_speech::output_devices().map_err(|e| Failure {
            exit: Exit::Audio,
            error: anyhow!(e),
        })?;
        out.push_str("output devices ([audio] device = \"NAME\" in the config; * in use):\n");
        for device in &devices {
            let mark = if device.name == configured { "*" } else { " " };
            out.push_str(&format!(
                "{mark} {}\n      {}\n",
                device.name, device.description
            ));
        }
    }
    io::stdout()
        .write_all(out.as_bytes())
        .context("cannot write to standard output")?;
    Ok(())
}

fn enroll(state: &StateDir, args: EnrollArgs) -> Result<(), Failure> {
    let policy = if args.allow_short_secret {
        KeyPolicy::AllowLegacyShort
    } else {
        KeyPolicy::Rfc4226
    };
    let token = if let Some(uri) = args.uri {
        let uri = Zeroizing::new(if uri == "-" {
            let mut text = Zeroizing::new(String::new());
            io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the URI from standard input")?;
            text.trim().to_owned()
        } else {
            uri
        });
        let parsed = KeyUri::parse(&uri, policy).context("the otpauth URI is not valid")?;
        Token::from_uri(&parsed, args.serial)
    } else if let Some(path) = &args.pskc {
        pskc_token(
            path,
            args.serial.as_deref(),
            args.pskc_key.as_deref(),
            policy,
        )?
    } else {
        return Err(anyhow!("give --uri or --pskc").into());
    };
    state.enroll(&token, args.replace)?;
    let who = match &token.label.issuer {
        Some(issuer) => format!("{issuer}:{}", token.label.account),
        None => token.label.account.clone(),
    };
    println!(
        "enrolled {} token {who} ({} digits, {}) in {}",
        token.kind_name(),
        token.digits(),
        token.algorithm(),
        state.token_path().display()
    );
    Ok(())
}

/// Reads the key with `serial` (its serial number, or its key id) from a PSKC file.
fn pskc_token(
    path: &Path,
    serial: Option<&str>,
    psk_hex: Option<&str>,
    policy: KeyPolicy,
) -> anyhow::Result<Token> {
    let serial = serial.ok_or_else(|| anyhow!("--pskc needs --serial SERIAL"))?;
    let xml = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let psk = psk_hex
        .map(pskc::PreSharedKey::from_hex)
        .transpose()
        .context("bad --pskc-key")?;
    let entries = pskc::parse(&xml, psk.as_ref(), policy)
        .with_context(|| format!("{} cannot be used", path.display()))?;
    let names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.serial.clone().or_else(|| e.key_id.clone()))
        .collect();
    let entry = entries
        .into_iter()
        .find(|e| e.serial.as_deref() == Some(serial) || e.key_id.as_deref() == Some(serial))
        .ok_or_else(|| {
            anyhow!(
                "{} has no key with serial `{serial}`; it has: {}",
                path.display(),
                if names.is_empty() {
                    "no keys".to_owned()
                } else {
                    names.join(", ")
                }
            )
        })?;
    let key = entry.result.map_err(|e| {
        anyhow!(
            "{}: key number {} (serial `{serial}`) cannot be used: {e}",
            path.display(),
            entry.index
        )
    })?;
    let progress = match key.kind {
        OtpKind::Totp { period } => Progress::Totp {
            period,
            t0: UnixTime(0),
            last_step: None,
        },
        OtpKind::Hotp { counter } => Progress::Hotp { next: counter },
    };
    let label = Label {
        issuer: key.issuer.clone(),
        account: key.name().to_owned(),
        serial: Some(serial.to_owned()),
    };
    Ok(Token::new(
        label,
        key.secret.clone(),
        key.algorithm,
        key.digits,
        progress,
    ))
}

/// The code to give now, or at the time the caller stated (`--at`, see
/// [`StateDir::code_at`]: no clock checks, the clock record untouched).
fn take_code(state: &StateDir, at: Option<u64>) -> Result<TakenCode, TakeError> {
    match at {
        Some(at) => state.code_at(UnixTime(at)),
        None => state.take_code(now(None), build_floor()),
    }
}

fn code(
    state: &StateDir,
    config_path: Option<&Path>,
    voices_dir: Option<&Path>,
    args: &CodeArgs,
) -> Result<(), Failure> {
    // The grouping comes from the voice pack; looked up before a counter is used.
    let grouping = args
        .large
        .then(|| Grouping::find(state, config_path, voices_dir));
    let taken = take_code(state, args.at)?;
    let code = taken.code.as_str();
    let mut out = io::stdout().lock();
    let text = match grouping {
        Some(grouping) => {
            use std::io::IsTerminal;
            let left = match taken.basis {
                Basis::Step { seconds_left, .. } => Some(seconds_left),
                Basis::Counter(_) => None,
            };
            let contrast = out.is_terminal();
            let size = crate::largeprint::terminal_size(&out);
            let sizes = grouping.sizes(code.len());
            crate::largeprint::block(code, &sizes, left, contrast, size, grouping.language())
        }
        None => format!("{code}\n"),
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")?;
    // After the code is printed: taking the clipboard takes up to half a second.
    if args.copy {
        let seconds = match taken.basis {
            Basis::Step { seconds_left, .. } => seconds_left,
            Basis::Counter(_) => crate::clipboard::COUNTER_CODE_SECONDS,
        };
        copy_to_clipboard(code, seconds);
    }
    Ok(())
}

/// How codes are grouped: as the user's language's voice pack speaks them.
#[derive(Debug, Clone)]
pub struct Grouping(Option<VoicePack>);

impl Grouping {
    /// The pack of the user's language; without packs, halves (`482 915`).
    pub fn find(state: &StateDir, config_path: Option<&Path>, voices_dir: Option<&Path>) -> Self {
        let pack = load_settings(state, config_path)
            .ok()
            .and_then(|(config, user, effective)| {
                let voices = voice::load_voices(state, &config, &user, voices_dir).ok()?;
                voices.pack_or_first(&effective.listening.language).cloned()
            });
        Grouping(pack)
    }

    /// The user's language (its pack's tag; empty without packs).
    pub fn language(&self) -> &str {
        self.0.as_ref().map_or("", VoicePack::tag)
    }

    /// Group sizes for a code of `len` digits.
    pub fn sizes(&self, len: usize) -> Vec<usize> {
        match &self.0 {
            Some(pack) => pack.grouping(len),
            None => vec![len / 2, len - len / 2],
        }
    }
}

/// Loads the config, the user's settings and their combination.
///
/// # Errors
/// [`ConfigError`]s.
pub fn load_settings(
    state: &StateDir,
    config: Option<&Path>,
) -> Result<(Config, UserSettings, Effective), ConfigError> {
    let config = Config::find(config)?;
    let user = UserSettings::load(state.path())?;
    let effective = Effective::new(&config, &user, state.path())?;
    Ok((config, user, effective))
}

/// A thread joined when this is dropped.
struct JoinOnDrop(Option<std::thread::JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

/// Puts `code` on the clipboard for `seconds`; a failure is logged (the code is still
/// printed or spoken).
fn copy_to_clipboard(code: &str, seconds: u64) {
    match crate::clipboard::copy(code, seconds) {
        Ok(()) => log(&format!(
            "the code is on the clipboard for {seconds} s (until it expires)"
        )),
        Err(e) => log(&format!("error: the code is not on the clipboard: {e}")),
    }
}

/// [`load_settings`] for the device itself: every mistake of the config and the settings
/// set aside (the default used for it) and returned as a message naming the file and key.
pub fn load_settings_lenient(
    state: &StateDir,
    config: Option<&Path>,
) -> (Config, UserSettings, Effective, Vec<String>) {
    let (config, mut mistakes) = Config::find_lenient(config);
    let (user, more) = UserSettings::load_lenient(state.path());
    mistakes.extend(more);
    let (effective, more) = Effective::lenient(&config, &user, state.path());
    mistakes.extend(more);
    let mistakes = mistakes.iter().map(ToString::to_string).collect();
    (config, user, effective, mistakes)
}

fn check_step(flag: &str, value: i8, range: &std::ops::RangeInclusive<i8>) -> anyhow::Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        bail!(
            "{flag} {value} is out of range; use {} to {}",
            range.start(),
            range.end()
        )
    }
}

fn clock(state: &StateDir, config_path: Option<&Path>, accept: bool) -> Result<(), Failure> {
    let token = state.load()?;
    let now = now(None);
    let floor = build_floor();
    if accept {
        match state.accept_clock()? {
            Some(step) => println!(
                "accepted the clock; codes are given again (the last one given was for step {step})"
            ),
            None => println!("nothing to accept: the clock has not moved backwards"),
        }
        return Ok(());
    }
    println!("{}", clock_state(&token, now, floor));
    // A bad config must not hide the clock's state (nor stop `--accept`, above).
    let config = Config::find(config_path).unwrap_or_else(|e| {
        log(&format!(
            "error: {e}; showing the built-in [clock] settings"
        ));
        Config::defaults()
    });
    let clock = &config.clock;
    let synced = match timesync::sync_state(&clock.sync_flag) {
        timesync::SyncState::Synchronised => "yes",
        timesync::SyncState::NotYet => "NO",
        timesync::SyncState::Unknown => "unknown (no time daemon writes the flag; not doubted)",
    };
    let unsynced = match clock.unsynced {
        crate::config::UnsyncedClock::Warn => "warn",
        crate::config::UnsyncedClock::Refuse => "refuse",
        crate::config::UnsyncedClock::Ignore => "ignore",
    };
    println!(
        "synchronised since boot: {synced} ({}; [clock] unsynced = \"{unsynced}\")",
        clock.sync_flag.display()
    );
    Ok(())
}

/// One line describing the clock for `token`, by the same rule that gives codes
/// ([`current_step`]: T0 counted).
pub fn clock_state(token: &Token, now: UnixTime, floor: UnixTime) -> String {
    let Progress::Totp {
        period,
        t0,
        last_step,
    } = token.progress
    else {
        return "clock: not used (HOTP token)".to_owned();
    };
    match current_step(period, t0, last_step, now, floor) {
        Ok(_) => format!("clock: ok ({})", utc_date(now.0)),
        Err(TakeError::ClockNotSet { .. }) if now < floor => format!(
            "clock: NOT SET (reads {}, before the build at {}); no code is given \
             until it is set: set the system clock (date, timedatectl or NTP)",
            utc_date(now.0),
            utc_date(floor.0)
        ),
        Err(TakeError::ClockNotSet { floor: start, .. }) => format!(
            "clock: NOT SET (reads {}, before the token's start time T0 at {}); no \
             code is given until it is set: set the system clock (date, timedatectl or NTP)",
            utc_date(now.0),
            utc_date(start)
        ),
        Err(TakeError::ClockBackwards {
            now: step,
            last_spoken,
        }) => format!(
            "clock: MOVED BACKWARDS (now step {step}, a code for step {last_spoken} was \
             given); check it, then run `codereader clock --accept`"
        ),
        Err(TakeError::State(e)) => format!("clock: unknown ({e})"),
    }
}

/// `secs` since 1970 as a UTC date and time, `2033-05-18 03:33:20 UTC` (ISO 8601 with a
/// space), so a helper compares it with a watch, not a count of seconds.
pub fn utc_date(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) =
        codereader_otp::calendar::civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn status(state: &StateDir) -> Result<(), Failure> {
    let token = match state.load() {
        Ok(token) => token,
        Err(e @ crate::token_file::StateError::NoToken { .. }) => {
            println!("token: none\n{}", run_loop::enroll_help(state));
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let label = &token.label;
    println!(
        "token: {} {}{}",
        token.kind_name(),
        label
            .issuer
            .as_ref()
            .map_or_else(String::new, |i| format!("{i}:")),
        label.account
    );
    if let Some(serial) = &label.serial {
        println!("serial: {serial}");
    }
    println!(
        "digits: {}, algorithm: {}",
        token.digits(),
        token.algorithm()
    );
    match token.progress {
        Progress::Hotp { next } => println!("next counter: {}", next.0),
        Progress::Totp {
            period, last_step, ..
        } => println!(
            "period: {} s, last step given: {}",
            period.seconds(),
            last_step.map_or_else(|| "none".to_owned(), |s| s.to_string())
        ),
    }
    println!("{}", clock_state(&token, now(None), build_floor()));
    if let Some(percent) = run_loop::battery_percent() {
        println!("battery: {percent} %");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use codereader_otp::{Algorithm, Digits, Period, Secret, TimeStep, Totp};

    #[test]
    fn dates_are_utc_iso_8601() {
        for (secs, date) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (2_000_000_000, "2033-05-18 03:33:20 UTC"),
            (4_107_542_399, "2100-02-28 23:59:59 UTC"),
            (4_107_542_400, "2100-03-01 00:00:00 UTC"),
        ] {
            assert_eq!(utc_date(secs), date);
        }
    }

    /// A TOTP token whose T0 is not 0 (PSKC can carry one; the URI cannot).
    fn token_with_t0(t0: u64) -> Token {
        let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
        Token::new(
            Label {
                issuer: None,
                account: "t0".into(),
                serial: None,
            },
            secret,
            Algorithm::Sha1,
            Digits::new(6).unwrap(),
            Progress::Totp {
                period: Period::new(30).unwrap(),
                t0: UnixTime(t0),
                last_step: None,
            },
        )
    }

    #[test]
    fn a_token_with_t0_gives_the_otp_crates_code_and_its_clock_counts_from_t0() {
        let t0 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let token = token_with_t0(t0);
        state.enroll(&token, false).unwrap();
        let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
        let totp = Totp::new(
            &secret,
            Algorithm::Sha1,
            Digits::new(6).unwrap(),
            Period::new(30).unwrap(),
            UnixTime(t0),
        );
        let at = UnixTime(1_800_000_010);
        let floor = UnixTime(1_700_000_000);

        // `code --at` and the clock's path both give the otp crate's code for that time.
        let stated = take_code(&state, Some(at.0)).unwrap();
        assert_eq!(stated.code, totp.code_at(at).unwrap());
        let taken = state.take_code(at, floor).unwrap();
        assert_eq!(taken.code, totp.code_at(at).unwrap());
        let step = totp.step_at(at).unwrap();
        assert_eq!(
            taken.basis,
            Basis::Step {
                step,
                seconds_left: 30 - (at.0 - t0) % 30
            }
        );

        // 100 s back is an earlier step counted from T0: `codereader clock` says so, as
        // `take_code` refuses. (Counting from 0, the old rule called this clock ok.)
        let token = state.load().unwrap();
        let back = UnixTime(at.0 - 100);
        assert!(TimeStep((back.0) / 30) > step);
        let line = clock_state(&token, back, floor);
        assert!(line.starts_with("clock: MOVED BACKWARDS"), "{line}");
        assert!(matches!(
            state.take_code(back, floor),
            Err(TakeError::ClockBackwards { .. })
        ));
        assert_eq!(
            clock_state(&token, UnixTime(at.0 + 30), floor),
            format!("clock: ok ({})", utc_date(at.0 + 30))
        );
        // Before T0 there is no step at all.
        let line = clock_state(&token, UnixTime(t0 - 1), UnixTime(0));
        assert!(line.starts_with("clock: NOT SET"), "{line}");
    }
}
