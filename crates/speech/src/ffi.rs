//! The espeak-ng C API, wrapped: the only module of this crate that contains `unsafe`.
//!
//! espeak-ng keeps global, non-thread-safe state. Every function here takes an
//! [`EspeakToken`], which only [`initialize`] creates and which is neither `Send` nor `Sync`:
//! the thread that initialised espeak-ng is therefore the only thread that can call it, which
//! is how [`crate::synth::Espeak`]'s owner thread serialises all calls.
//!
//! The library is opened with `dlopen` when espeak-ng is first needed, not linked: a device
//! speaking pre-rendered clips never maps libespeak-ng and the libraries it pulls in (audio
//! servers, their clients, ~35 in all on Debian), whose loading and relocation were the
//! largest part of a one-shot `codereader speak`.
//!
//! The few types, constants and signatures of `speak_lib.h` this module uses are declared
//! here by hand (no bindgen, so no libclang and no `-lespeak-ng` at build time);
//! `declarations_match_the_header` compiles a C file against the installed header with the
//! system C compiler to check every one of them (values, sizes, field offsets, prototypes).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_short, c_uchar, c_uint, c_void};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::OnceLock;

/// The shared library, by its soname (Debian's `libespeak-ng1`).
const LIBRARY: &str = "libespeak-ng.so.1";

// `speak_lib.h`'s enums, as the C compiler lays them out: an `int`-sized integer (unsigned
// where every value is non-negative, as GCC and Clang choose).

/// `espeak_AUDIO_OUTPUT`.
type AudioOutput = c_uint;
/// `AUDIO_OUTPUT_SYNCHRONOUS`: samples go to the callback, `espeak_Synth` returns after it.
const AUDIO_OUTPUT_SYNCHRONOUS: AudioOutput = 2;
/// `espeak_ERROR` (signed: `EE_INTERNAL_ERROR` is -1).
type EspeakError = c_int;
/// `EE_OK`.
const EE_OK: EspeakError = 0;
/// `espeak_PARAMETER`.
type Parameter = c_uint;
/// `espeakRATE`: words per minute.
const RATE: Parameter = 1;
/// `espeakVOLUME`: amplitude, 0..=200.
const VOLUME: Parameter = 2;
/// `espeak_POSITION_TYPE`.
type PositionType = c_uint;
/// `POS_CHARACTER`.
const POS_CHARACTER: PositionType = 1;
/// `espeakINITIALIZE_DONT_EXIT`: return an error instead of calling `exit()`.
const INITIALIZE_DONT_EXIT: c_int = 0x8000;
/// `espeakCHARS_UTF8`: the text is UTF-8.
const CHARS_UTF8: c_uint = 1;

/// `espeak_EVENT`: only ever passed to us behind a pointer we do not follow.
#[repr(C)]
struct Event {
    _opaque: [u8; 0],
}

/// `espeak_VOICE`, an entry of `espeak_ListVoices`.
#[repr(C)]
struct Voice {
    name: *const c_char,
    languages: *const c_char,
    identifier: *const c_char,
    gender: c_uchar,
    age: c_uchar,
    variant: c_uchar,
    xx1: c_uchar,
    score: c_int,
    spare: *mut c_void,
}

/// `t_espeak_callback *`: `int (short *wav, int numsamples, espeak_EVENT *events)`.
type SynthCallback = Option<unsafe extern "C" fn(*mut c_short, c_int, *mut Event) -> c_int>;

// The functions looked up, each with the prototype the test checks against the header.

/// `int espeak_Initialize(espeak_AUDIO_OUTPUT, int buflength, const char *path, int options)`
type InitializeFn = unsafe extern "C" fn(AudioOutput, c_int, *const c_char, c_int) -> c_int;
/// `void espeak_SetSynthCallback(t_espeak_callback *)`
type SetSynthCallbackFn = unsafe extern "C" fn(SynthCallback);
/// `espeak_ERROR espeak_SetVoiceByName(const char *name)`
type SetVoiceByNameFn = unsafe extern "C" fn(*const c_char) -> EspeakError;
/// `const espeak_VOICE **espeak_ListVoices(espeak_VOICE *voice_spec)`
type ListVoicesFn = unsafe extern "C" fn(*mut Voice) -> *mut *const Voice;
/// `espeak_ERROR espeak_SetParameter(espeak_PARAMETER, int value, int relative)`
type SetParameterFn = unsafe extern "C" fn(Parameter, c_int, c_int) -> EspeakError;
/// `espeak_ERROR espeak_Synth(const void *text, size_t size, unsigned int position,
/// espeak_POSITION_TYPE, unsigned int end_position, unsigned int flags,
/// unsigned int *unique_identifier, void *user_data)`
type SynthFn = unsafe extern "C" fn(
    *const c_void,
    usize,
    c_uint,
    PositionType,
    c_uint,
    c_uint,
    *mut c_uint,
    *mut c_void,
) -> EspeakError;

/// The espeak-ng functions this module calls, looked up once.
#[derive(Debug)]
struct Api {
    initialize: InitializeFn,
    set_synth_callback: SetSynthCallbackFn,
    set_voice_by_name: SetVoiceByNameFn,
    list_voices: ListVoicesFn,
    set_parameter: SetParameterFn,
    synth: SynthFn,
    /// Never unloaded: the pointers above point into it, and it lives in a `static`.
    _library: libloading::Library,
}

static API: OnceLock<Result<Api, String>> = OnceLock::new();

/// The loaded library, opening it on first use; a failure is kept and reported every time.
fn api() -> Result<&'static Api, FfiError> {
    API.get_or_init(load)
        .as_ref()
        .map_err(|reason| FfiError::Load(reason.clone()))
}

fn load() -> Result<Api, String> {
    // SAFETY: opening libespeak-ng runs its ELF initialisers (and those of its dependencies),
    // which set up their own static data only; no other code of ours runs meanwhile.
    let library = unsafe { libloading::Library::new(LIBRARY) }
        .map_err(|e| format!("cannot load {LIBRARY}: {e}"))?;
    let missing = |name: &str, e: libloading::Error| format!("{LIBRARY} has no {name}: {e}");
    // SAFETY: each symbol is read with the prototype of espeak-ng's own header
    // (`declarations_match_the_header` below checks that with the C compiler); the pointers are
    // copied out and stay valid because the library is kept with them and never unloaded.
    unsafe {
        Ok(Api {
            initialize: *library
                .get::<InitializeFn>(b"espeak_Initialize\0")
                .map_err(|e| missing("espeak_Initialize", e))?,
            set_synth_callback: *library
                .get::<SetSynthCallbackFn>(b"espeak_SetSynthCallback\0")
                .map_err(|e| missing("espeak_SetSynthCallback", e))?,
            set_voice_by_name: *library
                .get::<SetVoiceByNameFn>(b"espeak_SetVoiceByName\0")
                .map_err(|e| missing("espeak_SetVoiceByName", e))?,
            list_voices: *library
                .get::<ListVoicesFn>(b"espeak_ListVoices\0")
                .map_err(|e| missing("espeak_ListVoices", e))?,
            set_parameter: *library
                .get::<SetParameterFn>(b"espeak_SetParameter\0")
                .map_err(|e| missing("espeak_SetParameter", e))?,
            synth: *library
                .get::<SynthFn>(b"espeak_Synth\0")
                .map_err(|e| missing("espeak_Synth", e))?,
            _library: library,
        })
    }
}

/// What a synthesis callback tells espeak-ng after receiving a chunk.
pub(crate) type ChunkFn<'a> = dyn FnMut(&[i16]) -> bool + 'a;

thread_local! {
    /// The chunk consumer of the `synth` call running on this thread, or null between calls.
    /// A fat raw pointer because it lives only for the duration of one `espeak_Synth` call,
    /// during which espeak-ng calls [`synth_callback`] synchronously on this same thread.
    static CURRENT: Cell<Option<*mut ChunkFn<'static>>> = const { Cell::new(None) };
}

/// Proof that espeak-ng was initialised on the current thread; deliberately `!Send + !Sync`.
#[derive(Debug)]
pub(crate) struct EspeakToken {
    api: &'static Api,
    sample_rate: u32,
    _not_send: PhantomData<*const ()>,
}

impl EspeakToken {
    /// Output sample rate espeak-ng reported at initialisation (22 050 Hz for espeak-ng 1.51).
    pub(crate) fn sample_rate(&self) -> u32 {
        self.sample_rate
    }
}

/// Why an espeak-ng call failed.
#[derive(Debug)]
pub(crate) enum FfiError {
    /// The shared library could not be opened, or lacks a function (the reason).
    Load(String),
    /// `espeak_Initialize` returned an error (no data directory, usually).
    Initialize(c_int),
    /// A call returned an `espeak_ERROR` other than `EE_OK`.
    Call(&'static str, c_int),
}

/// Initialises espeak-ng in synchronous mode with our synthesis callback.
///
/// `buffer_ms` is the length of the chunks espeak-ng hands to the callback; small chunks
/// give an early first sample.
pub(crate) fn initialize(buffer_ms: u16) -> Result<EspeakToken, FfiError> {
    let api = api()?;
    // SAFETY: espeak_Initialize takes plain integers and a null path (use the compiled-in
    // data directory); DONT_EXIT stops it from calling exit() when the data is missing.
    // It is called once, from the owner thread, before any other espeak call.
    let rate = unsafe {
        (api.initialize)(
            AUDIO_OUTPUT_SYNCHRONOUS,
            c_int::from(buffer_ms),
            ptr::null(),
            INITIALIZE_DONT_EXIT,
        )
    };
    let Ok(sample_rate) = u32::try_from(rate) else {
        return Err(FfiError::Initialize(rate));
    };
    if sample_rate == 0 {
        return Err(FfiError::Initialize(rate));
    }
    // SAFETY: `synth_callback` has exactly the `t_espeak_callback` signature and never
    // unwinds (it catches panics); espeak-ng stores the pointer for later synchronous calls.
    unsafe { (api.set_synth_callback)(Some(synth_callback)) };
    Ok(EspeakToken {
        api,
        sample_rate,
        _not_send: PhantomData,
    })
}

fn check(call: &'static str, code: EspeakError) -> Result<(), FfiError> {
    if code == EE_OK {
        Ok(())
    } else {
        Err(FfiError::Call(call, code))
    }
}

/// Selects a voice by name (e.g. `"da"`, `"en-gb"`).
pub(crate) fn set_voice(token: &EspeakToken, name: &CStr) -> Result<(), FfiError> {
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call; espeak-ng
    // copies it. The token proves we are on the initialised owner thread.
    let code = unsafe { (token.api.set_voice_by_name)(name.as_ptr()) };
    check("espeak_SetVoiceByName", code)
}

/// Whether espeak-ng has a voice called `name`: the last part of a voice's identifier
/// (`gmw/da` is `da`, `gmw/en-US` is `en-us`) or its name, ignoring case and a `+variant`.
/// (`espeak_SetVoiceByName` accepts an unknown name and speaks some other voice instead.)
pub(crate) fn has_voice(token: &EspeakToken, name: &str) -> bool {
    let wanted = name.split('+').next().unwrap_or(name);
    // SAFETY: a null spec asks for every voice; espeak-ng returns a null-terminated array of
    // pointers to voices it owns, valid until the next `espeak_ListVoices` call, which
    // cannot happen before this function returns (owner thread, token).
    let list = unsafe { (token.api.list_voices)(ptr::null_mut()) };
    if list.is_null() {
        return false;
    }
    for i in 0.. {
        // SAFETY: the array ends with a null pointer, and the loop stops there.
        let voice = unsafe { *list.add(i) };
        if voice.is_null() {
            return false;
        }
        // SAFETY: a non-null entry points to a valid `espeak_VOICE` owned by espeak-ng.
        let (identifier, voice_name) = unsafe { ((*voice).identifier, (*voice).name) };
        let identifier = c_text(identifier);
        let base = identifier.rsplit('/').next().unwrap_or(&identifier);
        if base.eq_ignore_ascii_case(wanted) || c_text(voice_name).eq_ignore_ascii_case(wanted) {
            return true;
        }
    }
    false
}

/// A C string of espeak-ng's as text ("" for null).
fn c_text(text: *const std::ffi::c_char) -> String {
    if text.is_null() {
        return String::new();
    }
    // SAFETY: espeak-ng's voice strings are NUL-terminated and live as long as its voice
    // list, which outlives this call.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// Sets the speaking rate in words per minute (espeak-ng clamps to 80..=450).
pub(crate) fn set_rate(token: &EspeakToken, words_per_minute: u16) -> Result<(), FfiError> {
    // SAFETY: plain integer arguments; owner thread (token).
    let code = unsafe { (token.api.set_parameter)(RATE, c_int::from(words_per_minute), 0) };
    check("espeak_SetParameter(rate)", code)
}

/// Sets espeak-ng's own amplitude (0..=200, 100 is its default).
pub(crate) fn set_volume(token: &EspeakToken, volume: u8) -> Result<(), FfiError> {
    // SAFETY: plain integer arguments; owner thread (token).
    let code = unsafe { (token.api.set_parameter)(VOLUME, c_int::from(volume), 0) };
    check("espeak_SetParameter(volume)", code)
}

/// Synthesises `text` (UTF-8) and hands each chunk of 16-bit mono samples to `on_chunk` as
/// soon as espeak-ng produces it. `on_chunk` returns `false` to abort the synthesis.
pub(crate) fn synth(
    token: &EspeakToken,
    text: &CStr,
    on_chunk: &mut ChunkFn<'_>,
) -> Result<(), FfiError> {
    let raw: *mut ChunkFn<'_> = on_chunk;
    // SAFETY: only erases the lifetime of the trait object pointer. The pointer is stored in
    // CURRENT for the duration of the espeak_Synth call below and cleared right after it, so
    // it is never used after `on_chunk`'s borrow ends.
    let raw: *mut ChunkFn<'static> = unsafe { std::mem::transmute(raw) };
    CURRENT.with(|c| c.set(Some(raw)));
    let bytes = text.to_bytes_with_nul();
    // SAFETY: `text` is NUL-terminated UTF-8 that outlives the call and `size` covers it with
    // its terminator; the position arguments are zero, as the header documents for "from the
    // start"; null identifier and user data are allowed. In synchronous mode espeak_Synth
    // returns only after the last callback, all on this thread.
    let code = unsafe {
        (token.api.synth)(
            bytes.as_ptr().cast::<c_void>(),
            bytes.len(),
            0,
            POS_CHARACTER,
            0,
            CHARS_UTF8,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    CURRENT.with(|c| c.set(None));
    check("espeak_Synth", code)
}

/// espeak-ng's synthesis callback: forwards samples to the consumer in `CURRENT`.
///
/// Returns 0 to continue, 1 to abort (consumer asked to stop, is missing, or panicked).
unsafe extern "C" fn synth_callback(
    wav: *mut c_short,
    numsamples: c_int,
    _events: *mut Event,
) -> c_int {
    let Some(consumer) = CURRENT.with(Cell::get) else {
        return 1;
    };
    let len = usize::try_from(numsamples).unwrap_or(0);
    if wav.is_null() || len == 0 {
        // A null buffer marks the end of synthesis; an empty one carries only events.
        return 0;
    }
    // SAFETY: espeak-ng passes `numsamples` valid, initialised i16 samples at `wav`, which
    // stay valid until this callback returns; we only read them.
    let samples: &[i16] = unsafe { std::slice::from_raw_parts(wav, len) };
    // SAFETY: `consumer` was set by `synth` from a live `&mut` borrow on this thread and is
    // cleared before that borrow ends; espeak-ng calls us synchronously inside that call, and
    // never re-entrantly, so this is the only live reference.
    let consumer: &mut ChunkFn<'static> = unsafe { &mut *consumer };
    match catch_unwind(AssertUnwindSafe(|| consumer(samples))) {
        Ok(true) => 0,
        Ok(false) | Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::mem::{offset_of, size_of};
    use std::process::Command;

    /// The size of the field `field` picks out of a `T`.
    fn field_size<T, F>(_field: impl Fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    /// The installed header (Debian's `libespeak-ng-dev`, in xtask's `TEST` packages).
    const HEADER: &str = "/usr/include/espeak-ng/speak_lib.h";

    /// The declarations above, checked by the C compiler against espeak-ng's header: enum
    /// and macro values, type sizes, `espeak_VOICE`'s layout, and each function's prototype
    /// (a pointer of the prototype written beside its Rust type, initialised with the
    /// header's function: `-Werror` turns a mismatch into an error).
    #[test]
    fn declarations_match_the_header() {
        assert!(
            std::path::Path::new(HEADER).is_file(),
            "{HEADER} is missing: install libespeak-ng-dev"
        );
        let checks = [
            (
                "AUDIO_OUTPUT_SYNCHRONOUS",
                AUDIO_OUTPUT_SYNCHRONOUS.to_string(),
            ),
            ("EE_OK", EE_OK.to_string()),
            ("espeakRATE", RATE.to_string()),
            ("espeakVOLUME", VOLUME.to_string()),
            ("POS_CHARACTER", POS_CHARACTER.to_string()),
            (
                "espeakINITIALIZE_DONT_EXIT",
                INITIALIZE_DONT_EXIT.to_string(),
            ),
            ("espeakCHARS_UTF8", CHARS_UTF8.to_string()),
            (
                "sizeof(espeak_AUDIO_OUTPUT)",
                size_of::<AudioOutput>().to_string(),
            ),
            ("sizeof(espeak_ERROR)", size_of::<EspeakError>().to_string()),
            (
                "sizeof(espeak_PARAMETER)",
                size_of::<Parameter>().to_string(),
            ),
            (
                "sizeof(espeak_POSITION_TYPE)",
                size_of::<PositionType>().to_string(),
            ),
            // Signedness, as the Rust types above have it.
            ("((espeak_ERROR)-1 < 0)", "1".to_owned()),
            ("((espeak_AUDIO_OUTPUT)-1 > 0)", "1".to_owned()),
            ("((espeak_PARAMETER)-1 > 0)", "1".to_owned()),
            ("((espeak_POSITION_TYPE)-1 > 0)", "1".to_owned()),
            ("sizeof(espeak_VOICE)", size_of::<Voice>().to_string()),
        ];
        let mut checks: Vec<(String, String)> = checks
            .into_iter()
            .map(|(expression, value)| (expression.to_owned(), value))
            .collect();
        // Every field of `espeak_VOICE`: where it is and how big.
        for (field, offset, size) in [
            (
                "name",
                offset_of!(Voice, name),
                field_size(|v: &Voice| &v.name),
            ),
            (
                "languages",
                offset_of!(Voice, languages),
                field_size(|v: &Voice| &v.languages),
            ),
            (
                "identifier",
                offset_of!(Voice, identifier),
                field_size(|v: &Voice| &v.identifier),
            ),
            (
                "gender",
                offset_of!(Voice, gender),
                field_size(|v: &Voice| &v.gender),
            ),
            (
                "age",
                offset_of!(Voice, age),
                field_size(|v: &Voice| &v.age),
            ),
            (
                "variant",
                offset_of!(Voice, variant),
                field_size(|v: &Voice| &v.variant),
            ),
            (
                "xx1",
                offset_of!(Voice, xx1),
                field_size(|v: &Voice| &v.xx1),
            ),
            (
                "score",
                offset_of!(Voice, score),
                field_size(|v: &Voice| &v.score),
            ),
            (
                "spare",
                offset_of!(Voice, spare),
                field_size(|v: &Voice| &v.spare),
            ),
        ] {
            checks.push((
                format!("offsetof(espeak_VOICE, {field})"),
                offset.to_string(),
            ));
            checks.push((
                format!("sizeof(((espeak_VOICE *)0)->{field})"),
                size.to_string(),
            ));
        }
        let mut c = String::from("#include <stddef.h>\n#include <espeak-ng/speak_lib.h>\n");
        for (expression, value) in &checks {
            c.push_str(&format!(
                "_Static_assert({expression} == {value}, \"{expression} is not {value}\");\n"
            ));
        }
        // The prototypes of the Rust function types above, spelled in C.
        c.push_str(
            "int (*initialize)(espeak_AUDIO_OUTPUT, int, const char *, int) = espeak_Initialize;\n\
             void (*set_synth_callback)(int (*)(short *, int, espeak_EVENT *)) = espeak_SetSynthCallback;\n\
             espeak_ERROR (*set_voice_by_name)(const char *) = espeak_SetVoiceByName;\n\
             const espeak_VOICE **(*list_voices)(espeak_VOICE *) = espeak_ListVoices;\n\
             espeak_ERROR (*set_parameter)(espeak_PARAMETER, int, int) = espeak_SetParameter;\n\
             espeak_ERROR (*synth)(const void *, size_t, unsigned int, espeak_POSITION_TYPE, \
             unsigned int, unsigned int, unsigned int *, void *) = espeak_Synth;\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("check.c");
        std::fs::write(&file, &c).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        let out = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only"])
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}`: {e}"));
        assert!(
            out.status.success(),
            "the declarations in ffi.rs do not match {HEADER}:\n{}\n{c}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn the_library_loads_with_every_function() {
        assert!(api().is_ok(), "{:?}", api().err());
    }
}
