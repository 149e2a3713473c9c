//! HMAC-SHA-1 of up to four counters at once with the x86 SHA extensions, their SHA-1
//! compressions interleaved: the only module of this crate that contains `unsafe`.
//!
//! Why interleave: with SHA-NI, a SHA-1 compression is one dependency chain of 20
//! `sha1rnds4` instructions (four rounds each), every one waiting for the previous one's
//! result, so a single HMAC is bound by the instruction's latency and leaves the SHA unit idle
//! most of the time. Compressions of different counters are independent, so issuing them
//! step by step side by side lets the core overlap them. Measured on the development machine
//! (AMD EPYC, Zen 4, KVM, one core) with a stand-alone loop of this code, per compression:
//! 49-62 ns alone, 26-32 ns with two in flight, 23-24 ns with three, 19-23 ns with four
//! (16 SSE registers hold about two lanes' state; more spill, which is why four gain
//! little over three). A verifier's TOTP window of ±1 step is three codes, six
//! compressions: a whole window (HMACs, truncation, formatting) takes about 60% of the time
//! of three single codes, e.g. 206 ns against 316-383 ns (the `codes` benchmark of this
//! crate and the verifier's `verify` benchmark print both rates from the same run).
//!
//! Soundness: the intrinsics may only run on a CPU that has them. [`ShaNi`] is the proof:
//! only [`ShaNi::detect`] makes one, after checking the CPU at run time, and the single
//! `unsafe` block relies on it. The arithmetic itself is all safe intrinsics on register
//! values (no pointers), checked against the `sha1` crate and the `hmac` crate in the tests
//! of [`crate::hotp`].
//!
//! Like the `sha1` crate, this leaves key-derived intermediate values in registers and on
//! the stack after use; the prepared key states themselves are owned and wiped by the caller.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_extract_epi32, _mm_or_si128, _mm_set_epi32, _mm_setzero_si128,
    _mm_sha1msg1_epu32, _mm_sha1msg2_epu32, _mm_sha1nexte_epu32, _mm_sha1rnds4_epu32,
    _mm_xor_si128,
};

/// Proof that this CPU has the SHA extensions and SSE4.1 (SSE2 is part of x86-64); only
/// [`ShaNi::detect`] constructs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ShaNi(());

impl ShaNi {
    /// `Some` if the CPU running this has SHA-NI and SSE4.1. The standard library caches the
    /// CPUID answer, so this is a load and a bit test after the first call.
    pub(crate) fn detect() -> Option<ShaNi> {
        (std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse4.1"))
        .then_some(ShaNi(()))
    }

    /// HMAC-SHA-1 of each counter (as 8 big-endian bytes), from the states after the inner
    /// and outer key blocks: the five digest words of each.
    pub(crate) fn hmac<const N: usize>(
        self,
        inner: &[u32; 5],
        outer: &[u32; 5],
        counters: &[u64; N],
    ) -> [[u32; 5]; N] {
        // SAFETY: `hmac` needs the `sha`, `sse2` and `sse4.1` target features; `self` exists
        // only if `detect` found `sha` and `sse4.1` on this CPU, and x86-64 always has SSE2.
        unsafe { hmac(inner, outer, counters) }
    }
}

/// A SHA-1 state in SHA-NI's layout: A in the highest 32-bit lane of `abcd` down to D in the
/// lowest; E in the highest lane of `e`, whose other lanes are zero.
#[derive(Clone, Copy)]
struct State {
    abcd: __m128i,
    e: __m128i,
}

/// `_mm_set_epi32` takes signed lanes; SHA-1 words are unsigned bit patterns.
#[target_feature(enable = "sse2")]
fn words(w0: u32, w1: u32, w2: u32, w3: u32) -> __m128i {
    _mm_set_epi32(w0 as i32, w1 as i32, w2 as i32, w3 as i32)
}

#[target_feature(enable = "sse2")]
fn load(h: &[u32; 5]) -> State {
    State {
        abcd: words(h[0], h[1], h[2], h[3]),
        e: words(h[4], 0, 0, 0),
    }
}

#[target_feature(enable = "sse2,sse4.1")]
fn store(s: &State) -> [u32; 5] {
    [
        _mm_extract_epi32::<3>(s.abcd) as u32,
        _mm_extract_epi32::<2>(s.abcd) as u32,
        _mm_extract_epi32::<1>(s.abcd) as u32,
        _mm_extract_epi32::<0>(s.abcd) as u32,
        _mm_extract_epi32::<3>(s.e) as u32,
    ]
}

/// One SHA-1 compression per lane, of the 16-word block given as four registers of four
/// words (first word in the highest lane), all lanes advanced step by step together so that
/// their independent chains overlap.
#[target_feature(enable = "sha,sse2")]
fn compress<const N: usize>(states: &mut [State; N], blocks: [[__m128i; 4]; N]) {
    // `w[lane][k]` holds message words 4i..4i+4 when step i (`k = i % 4`) uses them: the
    // schedule overwrites words 4(i-4).. with 4i.. computed from the four previous groups.
    let mut w = blocks;
    let mut abcd = [_mm_setzero_si128(); N];
    for lane in 0..N {
        abcd[lane] = states[lane].abcd;
    }
    // ABCD before the latest four rounds: `sha1nexte` derives the next E from its A.
    let mut before = abcd;
    // Four rounds (`i` = rounds 4i..4i+4) in every lane; `f` selects the round function and
    // constant (one per 20 rounds) and must be a literal for `sha1rnds4`.
    macro_rules! step {
        ($i:literal, $f:literal) => {
            for lane in 0..N {
                let w = &mut w[lane];
                if $i >= 4 {
                    w[$i % 4] = _mm_sha1msg2_epu32(
                        _mm_xor_si128(
                            _mm_sha1msg1_epu32(w[$i % 4], w[($i + 1) % 4]),
                            w[($i + 2) % 4],
                        ),
                        w[($i + 3) % 4],
                    );
                }
                let e = if $i == 0 {
                    _mm_add_epi32(states[lane].e, w[0])
                } else {
                    _mm_sha1nexte_epu32(before[lane], w[$i % 4])
                };
                before[lane] = abcd[lane];
                abcd[lane] = _mm_sha1rnds4_epu32::<$f>(abcd[lane], e);
            }
        };
    }
    step!(0, 0);
    step!(1, 0);
    step!(2, 0);
    step!(3, 0);
    step!(4, 0);
    step!(5, 1);
    step!(6, 1);
    step!(7, 1);
    step!(8, 1);
    step!(9, 1);
    step!(10, 2);
    step!(11, 2);
    step!(12, 2);
    step!(13, 2);
    step!(14, 2);
    step!(15, 3);
    step!(16, 3);
    step!(17, 3);
    step!(18, 3);
    step!(19, 3);
    for lane in 0..N {
        let s = &mut states[lane];
        // The final E is rotl(A before the last four rounds, 30), added to the old E; the
        // zero lower lanes of the old E stay zero.
        s.e = _mm_sha1nexte_epu32(before[lane], s.e);
        s.abcd = _mm_add_epi32(s.abcd, abcd[lane]);
    }
}

/// SHA-1 block length in bits, for the length field of the padding.
const BLOCK_BITS: i32 = 512;

#[target_feature(enable = "sha,sse2,sse4.1")]
fn hmac<const N: usize>(inner: &[u32; 5], outer: &[u32; 5], counters: &[u64; N]) -> [[u32; 5]; N] {
    let zero = _mm_setzero_si128();
    // The padding marker: a 1 bit after the message.
    let one = 0x8000_0000;
    // Inner hash: the key block is absorbed; this block is the 8-byte counter, padding, and
    // the length of key block + counter in bits.
    let mut states = [load(inner); N];
    let mut blocks = [[zero; 4]; N];
    for lane in 0..N {
        let c = counters[lane];
        blocks[lane] = [
            words((c >> 32) as u32, c as u32, one, 0),
            zero,
            zero,
            words(0, 0, 0, (BLOCK_BITS + 8 * 8) as u32),
        ];
    }
    compress(&mut states, blocks);
    // Outer hash: the inner digest (A..D and E, already in message order in the registers),
    // padding, and the length of key block + digest in bits.
    for lane in 0..N {
        let s = &states[lane];
        blocks[lane] = [
            s.abcd,
            _mm_or_si128(s.e, words(0, one, 0, 0)),
            zero,
            words(0, 0, 0, (BLOCK_BITS + 20 * 8) as u32),
        ];
    }
    let mut states = [load(outer); N];
    compress(&mut states, blocks);
    let mut out = [[0u32; 5]; N];
    for lane in 0..N {
        out[lane] = store(&states[lane]);
    }
    out
}
