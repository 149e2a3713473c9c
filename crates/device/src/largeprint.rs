//! Large print: the code in block digits a partially sighted user can read at a distance.
//!
//! Each digit is a 3 x 5 pixel glyph drawn with full blocks, every pixel two columns wide and
//! two rows high (6 x 10 character cells), so an eight-digit code still fits an 80-column
//! terminal. Groups are split as the voice pack speaks them (`482 915`), with a wider gap
//! between groups than between digits. On a terminal the text is bright white on black (bold),
//! the highest contrast a terminal offers whatever its colour scheme; written to a file or a
//! pipe it is plain text, which is what the tests read.

use std::fmt::Write as _;

/// The glyphs of 0-9: five rows of three pixels, `#` set.
const GLYPHS: [[&str; 5]; 10] = [
    ["###", "#.#", "#.#", "#.#", "###"],
    [".#.", "##.", ".#.", ".#.", "###"],
    ["###", "..#", "###", "#..", "###"],
    ["###", "..#", ".##", "..#", "###"],
    ["#.#", "#.#", "###", "..#", "..#"],
    ["###", "#..", "###", "..#", "###"],
    ["###", "#..", "###", "#.#", "###"],
    ["###", "..#", ".#.", ".#.", ".#."],
    ["###", "#.#", "###", "#.#", "###"],
    ["###", "#.#", "###", "..#", "###"],
];

/// Character cells per pixel, across and down.
const PIXEL_COLUMNS: usize = 2;
const PIXEL_ROWS: usize = 2;
/// Blank columns between digits and between groups.
const DIGIT_GAP: usize = 2;
const GROUP_GAP: usize = 6;

/// Bright white on black, bold; and back to normal.
const HIGH_CONTRAST: &str = "\x1b[1;97;40m";
const NORMAL: &str = "\x1b[0m";

/// `code` split into groups of `sizes` (the voice pack's grouping); digits beyond the sizes
/// form one last group, so nothing is ever dropped.
pub fn groups<'a>(code: &'a str, sizes: &[usize]) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    for &size in sizes {
        if rest.is_empty() {
            break;
        }
        let (group, tail) = rest.split_at(size.min(rest.len()));
        if !group.is_empty() {
            out.push(group);
        }
        rest = tail;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// The code as one line of text, groups separated by a space: `482 915`.
pub fn grouped(code: &str, sizes: &[usize]) -> String {
    groups(code, sizes).join(" ")
}

/// The block-digit rendering of `code` grouped by `sizes`: ten lines, no trailing spaces.
/// Characters other than digits are left out (a code is only digits).
pub fn render(code: &str, sizes: &[usize]) -> String {
    let groups = groups(code, sizes);
    let mut lines = vec![String::new(); 5 * PIXEL_ROWS];
    for (g, group) in groups.iter().enumerate() {
        for (d, digit) in group.bytes().filter(u8::is_ascii_digit).enumerate() {
            let gap = match (g, d) {
                (0, 0) => 0,
                (_, 0) => GROUP_GAP,
                _ => DIGIT_GAP,
            };
            let glyph = &GLYPHS[usize::from(digit - b'0')];
            for (row, pixels) in glyph.iter().enumerate() {
                let mut cells = " ".repeat(gap);
                for pixel in pixels.chars() {
                    let cell = if pixel == '#' { '█' } else { ' ' };
                    cells.extend(std::iter::repeat_n(cell, PIXEL_COLUMNS));
                }
                for r in 0..PIXEL_ROWS {
                    if let Some(line) = lines.get_mut(row * PIXEL_ROWS + r) {
                        line.push_str(&cells);
                    }
                }
            }
        }
    }
    let mut text = String::new();
    for line in lines {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The line under the digits: how long the code stays valid.
pub fn validity(seconds_left: Option<u64>) -> String {
    match seconds_left {
        Some(1) => "valid for 1 more second".to_owned(),
        Some(s) => format!("valid for {s} more seconds"),
        None => "valid until it is used (counter-based token)".to_owned(),
    }
}

/// The whole large-print block: digits, a blank line, the validity line. With `contrast`,
/// each line is wrapped in bright-white-on-black escapes (for a terminal).
pub fn block(code: &str, sizes: &[usize], seconds_left: Option<u64>, contrast: bool) -> String {
    let mut text = render(code, sizes);
    text.push('\n');
    text.push_str(&validity(seconds_left));
    text.push('\n');
    if !contrast {
        return text;
    }
    let width = text.lines().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for line in text.lines() {
        let pad = width - line.chars().count();
        let _ = writeln!(out, "{HIGH_CONTRAST} {line}{}{NORMAL}", " ".repeat(pad - 1));
    }
    out
}

/// Escapes that clear a terminal and put the cursor home.
pub const CLEAR_SCREEN: &str = "\x1b[2J\x1b[H";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_split_into_the_spoken_groups() {
        assert_eq!(groups("482915", &[3, 3]), ["482", "915"]);
        assert_eq!(grouped("48291577", &[4, 4]), "4829 1577");
        assert_eq!(grouped("4829157", &[2, 2, 3]), "48 29 157");
        // Sizes that do not cover the code never drop digits.
        assert_eq!(grouped("48291577", &[3, 3]), "482 915 77");
        assert_eq!(grouped("482915", &[]), "482915");
    }

    #[test]
    fn each_glyph_is_three_by_five_and_all_differ() {
        for (d, glyph) in GLYPHS.iter().enumerate() {
            for row in glyph {
                assert_eq!(row.len(), 3, "digit {d}");
            }
        }
        for (a, first) in GLYPHS.iter().enumerate() {
            for (b, second) in GLYPHS.iter().enumerate().skip(a + 1) {
                assert_ne!(first, second, "{a} and {b}");
            }
        }
    }

    /// Reads the rendering back: each 6 x 10 cell block is matched against the glyphs.
    fn read_back(text: &str) -> String {
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        assert_eq!(lines.len(), 10);
        let width = lines.iter().map(Vec::len).max().unwrap();
        let at = |row: usize, col: usize| lines[row].get(col).copied().unwrap_or(' ');
        let mut out = String::new();
        let mut col = 0;
        while col < width {
            if (0..10).all(|r| at(r, col) == ' ') {
                // A gap; a group gap is as wide as GROUP_GAP.
                let start = col;
                while col < width && (0..10).all(|r| at(r, col) == ' ') {
                    col += 1;
                }
                if col - start >= GROUP_GAP && !out.is_empty() {
                    out.push(' ');
                }
                continue;
            }
            let pixels: Vec<String> = (0..5)
                .map(|row| {
                    (0..3)
                        .map(|p| {
                            if at(row * 2, col + p * 2) == '█' {
                                '#'
                            } else {
                                '.'
                            }
                        })
                        .collect()
                })
                .collect();
            let digit = GLYPHS
                .iter()
                .position(|g| g.iter().zip(&pixels).all(|(a, b)| *a == b))
                .unwrap();
            out.push(char::from(b'0' + u8::try_from(digit).unwrap()));
            col += 3 * PIXEL_COLUMNS;
        }
        out
    }

    #[test]
    fn the_rendering_reads_back_as_the_grouped_code() {
        for (code, sizes, expect) in [
            ("482915", vec![3, 3], "482 915"),
            ("01234567", vec![4, 4], "0123 4567"),
            ("8888888", vec![3, 4], "888 8888"),
            ("1111111", vec![2, 2, 3], "11 11 111"),
        ] {
            let text = render(code, &sizes);
            assert_eq!(read_back(&text), expect, "\n{text}");
            assert!(text.lines().all(|l| l.chars().count() <= 80), "\n{text}");
        }
    }

    #[test]
    fn the_block_says_how_long_the_code_is_valid_and_contrasts_on_a_terminal() {
        let plain = block("482915", &[3, 3], Some(17), false);
        assert!(plain.ends_with("\nvalid for 17 more seconds\n"), "{plain}");
        assert!(!plain.contains('\x1b'));
        assert!(block("482915", &[3, 3], None, false).contains("counter-based"));
        let shown = block("482915", &[3, 3], Some(1), true);
        assert!(shown.contains("valid for 1 more second"));
        for line in shown.lines() {
            assert!(
                line.starts_with(HIGH_CONTRAST) && line.ends_with(NORMAL),
                "{line:?}"
            );
        }
        // Every line is padded to the same width, so the black background is one block.
        let widths: Vec<usize> = shown.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
    }
}
