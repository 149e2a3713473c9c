//! Cross-check against an independent implementation: `oathtool` from Debian's `oathtool`
//! package, run as a real process for each of 1000 random cases (algorithm, digits, secret
//! length 16-64 bytes, HOTP counters up to 2^64-1, TOTP times up to the year 9999, periods
//! and T0 values). The generator is seeded so a failure can be reproduced; a missing
//! `oathtool` is a failure with install instructions, never a silent skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use codereader_otp::{Algorithm, Counter, Digits, Hotp, KeyPolicy, Period, Secret, Totp, UnixTime};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const CASES: usize = 1000;
const SEED: u64 = 0x00c0_dead_e4de;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn oathtool(args: &[String]) -> String {
    let out = Command::new("oathtool")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run oathtool ({e}); install it with: apt-get install oathtool")
        });
    assert!(
        out.status.success(),
        "oathtool {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn thousand_random_cases_agree_with_oathtool() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut past_2038 = 0;
    let mut hotp_cases = 0;
    for case in 0..CASES {
        let algorithm = Algorithm::ALL[rng.random_range(0..3)];
        let digits = Digits::new(rng.random_range(6..=8)).unwrap();
        let len = rng.random_range(16..=64);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let secret = Secret::new(bytes.clone(), KeyPolicy::Rfc4226).unwrap();
        let mode = algorithm.name().to_lowercase();
        let (ours, args) = if rng.random_bool(0.5) {
            hotp_cases += 1;
            // oathtool's --hotp is HMAC-SHA-1 only. For SHA-256/512 HOTP we ask for TOTP with
            // a 1 s step and T0 = 0, whose counter is the time itself; its time parser takes
            // values up to 2^62, so those counters stay below that.
            let max = if algorithm == Algorithm::Sha1 {
                u64::MAX
            } else {
                1 << 62
            };
            let counter = match rng.random_range(0..3) {
                0 => rng.random_range(0..1000),
                1 => u64::from(rng.random::<u32>()),
                _ => rng.random_range(0..=max),
            };
            let code = Hotp::new(&secret, algorithm, digits).code(Counter(counter));
            let mut args = if algorithm == Algorithm::Sha1 {
                vec!["--hotp".to_owned(), format!("--counter={counter}")]
            } else {
                vec![
                    format!("--totp={mode}"),
                    "--time-step-size=1s".to_owned(),
                    format!("--now=@{counter}"),
                ]
            };
            args.extend([format!("--digits={digits}"), hex(&bytes)]);
            (code, args)
        } else {
            let period = [30u64, 60, 15, rng.random_range(1..=300)][rng.random_range(0..4)];
            let t0 = if rng.random_bool(0.2) {
                rng.random_range(0..1_000_000_000)
            } else {
                0
            };
            // Up to 9999-12-31, past 2038 in about three cases out of four.
            let time = rng.random_range(t0..=253_402_300_799);
            if time > i32::MAX as u64 {
                past_2038 += 1;
            }
            let totp = Totp::new(
                &secret,
                algorithm,
                digits,
                Period::new(period).unwrap(),
                UnixTime(t0),
            );
            let code = totp.code_at(UnixTime(time)).unwrap();
            let args = vec![
                format!("--totp={mode}"),
                format!("--digits={digits}"),
                format!("--time-step-size={period}s"),
                format!("--start-time=@{t0}"),
                format!("--now=@{time}"),
                hex(&bytes),
            ];
            (code, args)
        };
        assert_eq!(
            ours.as_str(),
            oathtool(&args),
            "case {case} (seed {SEED:#x}): {args:?}"
        );
    }
    // The random mix really covered what the issue asks for.
    assert!(
        hotp_cases > 300 && hotp_cases < 700,
        "{hotp_cases} HOTP cases"
    );
    assert!(past_2038 > 200, "only {past_2038} cases past 2038");
}
