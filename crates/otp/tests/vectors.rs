//! The RFC test vectors, read from `tests/data/` and checked table by table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use codereader_otp::{
    Algorithm, Code, Counter, Digits, Hotp, KeyPolicy, Period, Secret, TimeStep, Totp, UnixTime,
};

/// Non-comment lines of a data file, split on white space.
fn rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
}

/// RFC 6238's seed for an algorithm: "1234567890" repeated to the hash's output length.
fn rfc6238_seed(algorithm: Algorithm) -> Secret {
    let len = match algorithm {
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    };
    let bytes: Vec<u8> = b"1234567890".iter().copied().cycle().take(len).collect();
    Secret::new(bytes, KeyPolicy::Rfc4226).unwrap()
}

#[test]
fn rfc4226_appendix_d() {
    let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
    let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::SIX);
    let mut checked = 0;
    for row in rows(include_str!("data/rfc4226.txt")) {
        let counter: u64 = row[0].parse().unwrap();
        let expected = Code::parse(row[1]).unwrap();
        assert_eq!(
            hotp.code(Counter(counter)).as_str(),
            expected.as_str(),
            "counter {counter}"
        );
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn rfc6238_appendix_b_all_algorithms() {
    let mut checked = [0; 3];
    for row in rows(include_str!("data/rfc6238.txt")) {
        let time: u64 = row[0].parse().unwrap();
        let algorithm: Algorithm = row[1].parse().unwrap();
        let totp = Totp::new(
            &rfc6238_seed(algorithm),
            algorithm,
            Digits::EIGHT,
            Period::DEFAULT,
            UnixTime(0),
        );
        let code = totp.code_at(UnixTime(time)).unwrap();
        assert_eq!(code.as_str(), row[2], "{algorithm} at {time}");
        assert_eq!(code, Code::parse(row[2]).unwrap());
        // The same code through the step API.
        assert_eq!(totp.code_for_step(TimeStep(time / 30)).as_str(), row[2]);
        checked[Algorithm::ALL.iter().position(|a| *a == algorithm).unwrap()] += 1;
    }
    assert_eq!(checked, [6, 6, 6]);
}

#[test]
fn rfc4226_appendix_d_as_windows() {
    let secret = Secret::new(b"12345678901234567890".to_vec(), KeyPolicy::Rfc4226).unwrap();
    let hotp = Hotp::new(&secret, Algorithm::Sha1, Digits::SIX);
    let expected: Vec<(u64, String)> = rows(include_str!("data/rfc4226.txt"))
        .map(|row| (row[0].parse().unwrap(), row[1].to_owned()))
        .collect();
    for first in 0..10 {
        for last in first..10 {
            let got: Vec<(u64, String)> = hotp
                .codes(Counter(first), Counter(last))
                .map(|(counter, code)| (counter.0, code.as_str().to_owned()))
                .collect();
            assert_eq!(got, expected[first as usize..=last as usize]);
        }
    }
}

#[test]
fn rfc6238_appendix_b_in_verifier_windows() {
    // Each vector's step in the middle of a ±1 and at every place of a ±4 window, as a
    // verifier scans them.
    let mut checked = 0;
    for row in rows(include_str!("data/rfc6238.txt")) {
        let step: u64 = row[0].parse::<u64>().unwrap() / 30;
        let algorithm: Algorithm = row[1].parse().unwrap();
        let hotp = Hotp::new(&rfc6238_seed(algorithm), algorithm, Digits::EIGHT);
        let window: Vec<_> = hotp.codes(Counter(step - 1), Counter(step + 1)).collect();
        assert_eq!(window.len(), 3);
        assert_eq!(window[1].0, Counter(step));
        assert_eq!(window[1].1.as_str(), row[2], "{algorithm} step {step}");
        // (The first vector is step 1: windows there start at 0.)
        for offset in 0..9 {
            let first = step.saturating_sub(offset);
            let (counter, code) = hotp
                .codes(Counter(first), Counter(first + 8))
                .nth((step - first) as usize)
                .unwrap();
            assert_eq!((counter, code.as_str()), (Counter(step), row[2]));
        }
        checked += 1;
    }
    assert_eq!(checked, 18);
}

#[test]
fn six_digit_code_is_the_low_digits_of_the_eight_digit_one() {
    let secret = rfc6238_seed(Algorithm::Sha1);
    let six = Totp::new(
        &secret,
        Algorithm::Sha1,
        Digits::SIX,
        Period::DEFAULT,
        UnixTime(0),
    );
    // 1111111109 -> 07081804 in eight digits: leading zero kept in six as "081804".
    assert_eq!(
        six.code_at(UnixTime(1_111_111_109)).unwrap().as_str(),
        "081804"
    );
}

#[test]
fn t0_shifts_the_steps() {
    let secret = rfc6238_seed(Algorithm::Sha1);
    let shifted = Totp::new(
        &secret,
        Algorithm::Sha1,
        Digits::EIGHT,
        Period::DEFAULT,
        UnixTime(1000),
    );
    let plain = Totp::new(
        &secret,
        Algorithm::Sha1,
        Digits::EIGHT,
        Period::DEFAULT,
        UnixTime(0),
    );
    assert_eq!(
        shifted.code_at(UnixTime(1059)).unwrap(),
        plain.code_at(UnixTime(59)).unwrap()
    );
    assert!(shifted.code_at(UnixTime(999)).is_err());
}
