//! `codereader settings`: shows the user's settings, or changes them (each option checked,
//! the whole combination checked before anything is saved), or lists the voices.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, anyhow};

use crate::config::{Config, Effective, RATE_RANGE, UserSettings, VOLUME_RANGE};
use crate::keys::{Action, EvKey, TermKey};
use crate::process::Failure;
use crate::token_file::StateDir;
use crate::voice::{self, VoiceError, Voices};

use super::{SettingsArgs, check_step};

/// Parses `ACTION=KEY[,KEY...]`, checking each key with `K`'s parser.
fn parse_bind<K: std::str::FromStr>(text: &str) -> anyhow::Result<(Action, Vec<String>)>
where
    K::Err: std::error::Error + Send + Sync + 'static,
{
    let (action, keys) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("`{text}`: expected ACTION=KEY[,KEY...]"))?;
    let action: Action = action.trim().parse()?;
    let keys: Vec<String> = keys
        .split(',')
        .map(|k| match k {
            " " => k.to_owned(),
            _ => k.trim().to_owned(),
        })
        .filter(|k| !k.is_empty())
        .collect();
    for key in &keys {
        key.parse::<K>()?;
    }
    Ok((action, keys))
}

pub(super) fn settings(
    state: &StateDir,
    config_path: Option<&Path>,
    voices_dir: Option<&Path>,
    args: &SettingsArgs,
) -> Result<(), Failure> {
    let config = Config::find(config_path)?;
    let mut user = if args.reset {
        UserSettings::default()
    } else {
        UserSettings::load(state.path())?
    };
    let changing = args.reset
        || args.lang.is_some()
        || args.voice.is_some()
        || args.volume.is_some()
        || args.rate.is_some()
        || !args.bind.is_empty()
        || !args.evdev_bind.is_empty();
    // The packs are needed to check a language or voice and to list the voices; for showing
    // the settings only, a pack problem is shown instead of failing.
    let needs_voices = args.list_voices || args.lang.is_some() || args.voice.is_some();
    let mut voices = match voice::load_voices(state, &config, &user, voices_dir) {
        Ok(voices) => Ok(voices),
        Err(e) if needs_voices => return Err(e.into()),
        Err(e) => Err(e),
    };
    if let (true, Ok(voices)) = (args.list_voices, &voices) {
        io::stdout()
            .lock()
            .write_all(voices.listing().as_bytes())
            .context("cannot write to standard output")?;
        return Ok(());
    }
    change_settings(&mut user, args, &config, voices.as_mut().ok())?;
    // Validate the combination (e.g. a key bound twice) before saving anything.
    let effective = Effective::new(&config, &user, state.path())?;
    if changing {
        user.save(state.path())?;
    }
    let text = settings_text(state, &config, &effective, &voices);
    io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("cannot write to standard output")?;
    Ok(())
}

/// Applies `settings`' options to `user`, checking each (a language or voice against the
/// packs, when they load).
fn change_settings(
    user: &mut UserSettings,
    args: &SettingsArgs,
    config: &Config,
    mut voices: Option<&mut Voices>,
) -> Result<(), Failure> {
    if let (Some(lang), Some(voices)) = (&args.lang, &voices) {
        voices.pack(lang)?;
        user.language = Some(lang.clone());
    }
    if let (Some(name), Some(voices)) = (&args.voice, &mut voices) {
        // The language this voice is for: the one set in this command, else the current one.
        let tag = user
            .language
            .clone()
            .unwrap_or_else(|| config.defaults.language.clone());
        voices.choose(&tag, name)?;
        user.voice.insert(tag, name.clone());
    }
    if let Some(volume) = args.volume {
        check_step("--volume", volume, &VOLUME_RANGE)?;
        user.volume = Some(i64::from(volume));
    }
    if let Some(rate) = args.rate {
        check_step("--rate", rate, &RATE_RANGE)?;
        user.rate = Some(i64::from(rate));
    }
    for bind in &args.bind {
        let (action, keys) = parse_bind::<TermKey>(bind)?;
        user.keys.insert(action.name().to_owned(), keys);
    }
    for bind in &args.evdev_bind {
        let (action, keys) = parse_bind::<EvKey>(bind)?;
        user.evdev_keys.insert(action.name().to_owned(), keys);
    }
    Ok(())
}

/// The settings as `settings` shows them: where they come from, listening, the voice per
/// language (or why the packs cannot be used) and both key maps.
fn settings_text(
    state: &StateDir,
    config: &Config,
    effective: &Effective,
    voices: &Result<Voices, VoiceError>,
) -> String {
    let l = &effective.listening;
    let source = config.source.as_ref().map_or_else(
        || "built-in defaults".to_owned(),
        |p| p.display().to_string(),
    );
    let mut text = format!(
        "config: {source}\nsettings: {}\nlanguage = {}\nvolume = {} (of {}..{}, {} dB)\nrate = {} (of {}..{})\n",
        state.path().join(crate::config::SETTINGS_FILE).display(),
        l.language,
        l.volume,
        VOLUME_RANGE.start(),
        VOLUME_RANGE.end(),
        f32::from(l.volume) * codereader_speech::Volume::STEP_DB,
        l.rate,
        RATE_RANGE.start(),
        RATE_RANGE.end(),
    );
    text.push_str("[voice]\n");
    match voices {
        Ok(voices) => {
            for tag in voices.languages() {
                if let Ok((names, now)) = voices.voice_names(&tag) {
                    text.push_str(&format!("{tag} = {now} (of {})\n", names.join(", ")));
                }
            }
        }
        Err(e) => text.push_str(&format!("# the voice packs cannot be used: {e}\n")),
    }
    text.push_str("[keys]\n");
    for (action, keys) in effective.keys.bindings() {
        let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
        text.push_str(&format!("{action} = {}\n", names.join(", ")));
    }
    text.push_str("[evdev_keys]\n");
    for (action, keys) in effective.evdev_keys.bindings() {
        let names: Vec<String> = keys.iter().map(ToString::to_string).collect();
        text.push_str(&format!("{action} = {}\n", names.join(", ")));
    }
    text
}
