"""Offline intelligibility check of spoken codes: which digits does a recognizer hear?

Reads DIR/codes.txt ("NNNN.wav CODE" lines, written by `codereader-speak codes`) for each
DIR given, and prints per directory the share of codes heard exactly. `--speed STEP` first
says the codes were spoken at that rate step (default 0).

Method (the same for every voice):
1. Each WAV (mono 16-bit, 16 kHz, rendered through codereader's pipeline: start earcon,
   intro, six digit words with pauses, end earcon) is segmented by energy exactly as the
   speech crate's WAV analysis does: 10 ms frames with RMS above -40 dBFS are sound, runs
   separated by at most 120 ms of quiet are merged, runs shorter than 40 ms dropped. At
   another rate step every duration, pauses included, is scaled by 1.15^-STEP (the speech
   crate's `Speed`), and so are the 120 ms here and the 150 ms of step 3: at step 2 the
   pause around an earcon is 113 ms, and a fixed 120 ms would merge the last digit with the
   end earcon; at step -3 words are half as long again, and so are their quiet edges.
2. The code must segment into start earcon, intro (one or more segments: flite's "your
   code is" has a gap), N digit segments, end earcon; the digit segments are the N before
   the end earcon. Fewer than N + 3 segments is a miss (a digit was lost or merged).
3. Each digit segment is widened by up to 150 ms on each side (never past the midpoint of
   the gap to its neighbour), because the -40 dBFS gate cuts quiet fricatives and
   bursts (the f of "five", the s of "six", the t of "eight"); then, padded with 200 ms of silence both sides, is decoded by PocketSphinx
   (PyPI `pocketsphinx`, its bundled en-us acoustic model and CMU dictionary; no download)
   against a JSGF grammar of exactly one of the ten digit words (dither on, with a fixed
   seed so that runs repeat exactly). An empty
   hypothesis is a miss.
4. A code counts as heard exactly only if every digit is right.

Needs only `pocketsphinx` (pip) and the Python standard library.
"""
import array
import math
import os
import sys

from pocketsphinx import Decoder, get_model_path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RATE = 16000


def decoder():
    model = get_model_path()
    dec = Decoder(
        hmm=os.path.join(model, "en-us", "en-us"),
        dict=os.path.join(model, "en-us", "cmudict-en-us.dict"),
        lm=None,
        samprate=RATE,
        dither=True,
        seed=1,
        loglevel="FATAL",
    )
    dec.add_jsgf_string(
        "digit", "#JSGF V1.0; grammar digit; public <d> = (" + " | ".join(WORDS) + ");"
    )
    dec.activate_search("digit")
    return dec


def read_wav(path):
    import wave

    with wave.open(path, "rb") as w:
        if w.getnchannels() != 1 or w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise SystemExit(f"{path}: expected mono 16-bit {RATE} Hz")
        data = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder != "little":
        data.byteswap()
    return data


def segments(x, merge_ms):
    frame = RATE // 100
    spans = []
    for i in range(0, len(x), frame):
        chunk = x[i : i + frame]
        rms = math.sqrt(sum(s * s for s in chunk) / len(chunk)) / 32768.0
        if rms <= 0.01:
            continue
        start, end = i, min(i + frame, len(x))
        if spans and start - spans[-1][1] <= merge_ms // 10 * frame:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [s for s in spans if s[1] - s[0] >= RATE * 40 // 1000]


def widen(found, spans, margin):
    out = []
    for s, e in spans:
        i = found.index([s, e])
        lo = (found[i - 1][1] + s) // 2 if i > 0 else 0
        hi = (e + found[i + 1][0]) // 2 if i + 1 < len(found) else e
        out.append((max(lo, s - margin), min(hi, e + margin)))
    return out


def hear(dec, samples):
    pad = array.array("h", [0] * (RATE // 5))
    raw = (pad + samples + pad).tobytes()
    dec.start_utt()
    dec.process_raw(raw, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
    word = hyp.hypstr.strip() if hyp else ""
    return str(WORDS.index(word)) if word in WORDS else "?"


def main(args):
    speed = 0
    if args[:1] == ["--speed"]:
        speed = int(args[1])
        args = args[2:]
    merge_ms = round(120 / 1.15**speed)
    margin = round(RATE * 0.150 / 1.15**speed)
    dirs = args
    dec = decoder()
    for d in dirs:
        exact = total = digits_ok = digits = 0
        misses = []
        with open(os.path.join(d, "codes.txt")) as f:
            lines = [l.split() for l in f if l.strip()]
        for name, code in lines:
            x = read_wav(os.path.join(d, name))
            found = segments(x, merge_ms)
            spans = found[-len(code) - 1 : -1] if len(found) >= len(code) + 3 else []
            if len(spans) != len(code):
                heard = f"<{len(found)} segments>"
            else:
                heard = "".join(hear(dec, x[s:e]) for s, e in widen(found, spans, margin))
                digits_ok += sum(a == b for a, b in zip(heard, code))
            digits += len(code)
            total += 1
            if heard == code:
                exact += 1
            else:
                misses.append(f"{code}->{heard}")
        share = 100.0 * exact / total if total else 0.0
        print(
            f"RESULT {os.path.basename(d.rstrip('/'))} exact={exact} n={total} "
            f"share={share:.1f}% digits={digits_ok}/{digits} misses={' '.join(misses[:8])}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
