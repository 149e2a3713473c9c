//! Large print: the code in block digits a partially sighted user can read at a distance.
//!
//! Each digit is a 3 x 5 pixel glyph drawn with full blocks, every pixel N columns wide and N
//! rows high, N as large as the terminal fits (2 on an unsized terminal or in a file: 6 x 10
//! character cells, so an eight-digit code still fits 80 columns; 6 on a 160 x 40 one). Groups are split as the voice pack speaks them (`482 915`), with a wider gap
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

/// How big the block digits are drawn: character cells per pixel (across, down) and the
/// blank columns between digits and between groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Scale {
    pixel_columns: usize,
    pixel_rows: usize,
    digit_gap: usize,
    group_gap: usize,
}

/// The full size: each pixel two cells wide and two high (an 8-digit code is 66 columns).
const LARGE: Scale = Scale {
    pixel_columns: 2,
    pixel_rows: 2,
    digit_gap: 2,
    group_gap: 6,
};
/// The largest pixel size tried on a terminal that gives its size.
const LARGEST: usize = 12;

/// Each pixel `n` cells wide and high, with gaps in proportion (`n` = 2 is [`LARGE`]).
fn scaled(n: usize) -> Scale {
    Scale {
        pixel_columns: n,
        pixel_rows: n,
        digit_gap: n,
        group_gap: 3 * n,
    }
}

/// For a narrow terminal: one cell per pixel (an 8-digit code is 33 columns, 5 rows).
const SMALL: Scale = Scale {
    pixel_columns: 1,
    pixel_rows: 1,
    digit_gap: 1,
    group_gap: 3,
};
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
    render_at(code, sizes, LARGE)
}

fn render_at(code: &str, sizes: &[usize], scale: Scale) -> String {
    let groups = groups(code, sizes);
    let mut lines = vec![String::new(); 5 * scale.pixel_rows];
    for (g, group) in groups.iter().enumerate() {
        for (d, digit) in group.bytes().filter(u8::is_ascii_digit).enumerate() {
            let gap = match (g, d) {
                (0, 0) => 0,
                (_, 0) => scale.group_gap,
                _ => scale.digit_gap,
            };
            let glyph = &GLYPHS[usize::from(digit - b'0')];
            for (row, pixels) in glyph.iter().enumerate() {
                let mut cells = " ".repeat(gap);
                for pixel in pixels.chars() {
                    let cell = if pixel == '#' { '█' } else { ' ' };
                    cells.extend(std::iter::repeat_n(cell, scale.pixel_columns));
                }
                for r in 0..scale.pixel_rows {
                    if let Some(line) = lines.get_mut(row * scale.pixel_rows + r) {
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

/// The line under the digits: how long the code stays valid, in the user's `language` (a
/// voice pack's tag): Danish or English (the voice packs' languages; English for others).
pub fn validity(seconds_left: Option<u64>, language: &str) -> String {
    match (language, seconds_left) {
        ("da", Some(1)) => "gyldig i 1 sekund endnu".to_owned(),
        ("da", Some(s)) => format!("gyldig i {s} sekunder endnu"),
        ("da", None) => "gyldig, indtil den bruges (tællerbaseret nøgle)".to_owned(),
        (_, Some(1)) => "valid for 1 more second".to_owned(),
        (_, Some(s)) => format!("valid for {s} more seconds"),
        (_, None) => "valid until it is used (counter-based token)".to_owned(),
    }
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    /// Columns.
    pub columns: usize,
    /// Rows.
    pub rows: usize,
}

/// The whole large-print block: digits, a blank line, the validity line in `language`.
/// With `contrast`,
/// each line is wrapped in bright-white-on-black escapes (for a terminal).
///
/// On a terminal of `size`, the digits are drawn as large as fits: full size, else one cell
/// per pixel, else (a terminal too small for any block digits) the grouped code as plain
/// text, so that a line never wraps into a garbled picture. The validity line is wrapped
/// at word boundaries to the width. Without a size (a file, a pipe), full size.
pub fn block(
    code: &str,
    sizes: &[usize],
    seconds_left: Option<u64>,
    contrast: bool,
    size: Option<TermSize>,
    language: &str,
) -> String {
    // Each line is padded with a cell either side in contrast mode.
    let margin = if contrast { 2 } else { 0 };
    let validity = validity(seconds_left, language);
    let compose = |digits: String, width: usize| {
        let mut text = digits;
        text.push('\n');
        for line in wrap(&validity, width) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    };
    let text = match size {
        None => compose(render(code, sizes), usize::MAX),
        Some(size) => {
            let width = size.columns.saturating_sub(margin).max(1);
            // As large as fits: the digits grow with the terminal.
            (2..=LARGEST)
                .rev()
                .map(scaled)
                .chain([SMALL])
                .map(|scale| compose(render_at(code, sizes, scale), width))
                .find(|text| {
                    // A newline after the last line needs one more row, or the top scrolls off.
                    text.lines().count() < size.rows
                        && text.lines().all(|l| l.chars().count() <= width)
                })
                .unwrap_or_else(|| compose(format!("{}\n", grouped(code, sizes)), width))
        }
    };
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

/// A message (what the device says: an error, the status, the help) for the terminal: the
/// words, wrapped to its width, bright white on black like the code, so it is read where the
/// code was and no old code stays beside it.
pub fn message(text: &str, size: Option<TermSize>) -> String {
    let width = size.map_or(78, |s| s.columns.saturating_sub(2).max(1));
    let lines = wrap(text, width);
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for line in lines {
        let pad = widest - line.chars().count();
        let _ = writeln!(out, "{HIGH_CONTRAST} {line}{}{NORMAL}", " ".repeat(pad - 1));
    }
    out
}

/// `text` in lines of at most `width` characters, broken between words (a word longer than
/// the width is cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if !line.is_empty() && needed > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        while line.chars().count() > width {
            let head: String = line.chars().take(width).collect();
            line = line.chars().skip(width).collect();
            lines.push(head);
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The size of the terminal `fd` is, if it is one (and says its size).
pub fn terminal_size(fd: impl std::os::fd::AsFd) -> Option<TermSize> {
    let size = rustix::termios::tcgetwinsize(fd).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then(|| TermSize {
        columns: usize::from(size.ws_col),
        rows: usize::from(size.ws_row),
    })
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

    /// Reads the rendering back: each glyph's cell block is matched against the glyphs.
    fn read_back(text: &str, scale: Scale) -> String {
        let lines: Vec<Vec<char>> = text.lines().map(|l| l.chars().collect()).collect();
        assert_eq!(lines.len(), 5 * scale.pixel_rows);
        let width = lines.iter().map(Vec::len).max().unwrap();
        let at = |row: usize, col: usize| lines[row].get(col).copied().unwrap_or(' ');
        let blank = |col: usize| (0..lines.len()).all(|r| at(r, col) == ' ');
        let mut out = String::new();
        let mut col = 0;
        while col < width {
            if blank(col) {
                // A gap; a group gap is as wide as the scale's.
                let start = col;
                while col < width && blank(col) {
                    col += 1;
                }
                if col - start >= scale.group_gap && !out.is_empty() {
                    out.push(' ');
                }
                continue;
            }
            let pixels: Vec<String> = (0..5)
                .map(|row| {
                    (0..3)
                        .map(|p| {
                            let cell = at(row * scale.pixel_rows, col + p * scale.pixel_columns);
                            if cell == '█' { '#' } else { '.' }
                        })
                        .collect()
                })
                .collect();
            let digit = GLYPHS
                .iter()
                .position(|g| g.iter().zip(&pixels).all(|(a, b)| *a == b))
                .unwrap();
            out.push(char::from(b'0' + u8::try_from(digit).unwrap()));
            col += 3 * scale.pixel_columns;
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
            assert_eq!(read_back(&text, LARGE), expect, "\n{text}");
            let small = render_at(code, &sizes, SMALL);
            assert_eq!(read_back(&small, SMALL), expect, "\n{small}");
            assert!(text.lines().all(|l| l.chars().count() <= 80), "\n{text}");
        }
    }

    #[test]
    fn the_block_says_how_long_the_code_is_valid_and_contrasts_on_a_terminal() {
        let plain = block("482915", &[3, 3], Some(17), false, None, "en");
        assert!(plain.ends_with("\nvalid for 17 more seconds\n"), "{plain}");
        assert!(!plain.contains('\x1b'));
        assert!(block("482915", &[3, 3], None, false, None, "en").contains("counter-based"));
        let danish = block("482915", &[3, 3], Some(17), false, None, "da");
        assert!(
            danish.ends_with("\ngyldig i 17 sekunder endnu\n"),
            "{danish}"
        );
        let shown = block("482915", &[3, 3], Some(1), true, None, "en");
        assert!(shown.contains("valid for 1 more second"));
        for line in shown.lines() {
            assert!(
                line.starts_with(HIGH_CONTRAST) && line.ends_with(NORMAL),
                "{line:?}"
            );
        }
        // Every line is padded to the same width, so the black background is one block.
        // (Checked again below for each terminal size.)
        let widths: Vec<usize> = shown.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
    }

    /// What a terminal of `columns` x `rows` shows: the lines, escapes removed.
    fn on_terminal(code: &str, sizes: &[usize], columns: usize, rows: usize) -> Vec<String> {
        let size = TermSize { columns, rows };
        let text = block(code, sizes, Some(17), true, Some(size), "en");
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.replace(HIGH_CONTRAST, "").replace(NORMAL, ""))
            .collect();
        for line in &lines {
            assert!(
                line.chars().count() <= columns,
                "{columns} columns: {line:?}"
            );
        }
        assert!(lines.len() < rows, "{rows} rows: {} lines", lines.len());
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}");
        lines
    }

    /// The digit rows of a rendering on a terminal, without the margin and padding.
    fn digits_of(lines: &[String], rows: usize) -> String {
        let rows: Vec<&str> = lines[..rows].iter().map(|l| &l[1..]).collect();
        rows.join("\n")
    }

    #[test]
    fn the_digits_grow_with_the_terminal() {
        // 160 x 40: each pixel 6 cells (30 rows of digits).
        let lines = on_terminal("279037", &[3, 3], 160, 40);
        assert_eq!(read_back(&digits_of(&lines, 30), scaled(6)), "279 037");
        assert_eq!(lines[31].trim(), "valid for 17 more seconds");
        // 80 x 24, six digits: 3 cells.
        let lines = on_terminal("279037", &[3, 3], 80, 24);
        assert_eq!(read_back(&digits_of(&lines, 15), scaled(3)), "279 037");
    }

    #[test]
    fn messages_are_wrapped_in_high_contrast() {
        let size = TermSize {
            columns: 20,
            rows: 10,
        };
        let shown = message("The clock has moved backwards.", Some(size));
        let lines: Vec<String> = shown
            .lines()
            .map(|l| l.replace(HIGH_CONTRAST, "").replace(NORMAL, ""))
            .collect();
        assert_eq!(lines[0].trim(), "The clock has");
        assert_eq!(lines[1].trim(), "moved backwards.");
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
    }

    #[test]
    fn the_digits_shrink_to_fit_the_terminal_and_never_wrap() {
        // 80 x 24: full size, even for eight digits.
        let lines = on_terminal("48291577", &[4, 4], 80, 24);
        assert_eq!(read_back(&digits_of(&lines, 10), LARGE), "4829 1577");
        assert_eq!(lines[11].trim(), "valid for 17 more seconds");
        // 40 columns: one cell per pixel.
        let lines = on_terminal("48291577", &[4, 4], 40, 24);
        assert_eq!(read_back(&digits_of(&lines, 5), SMALL), "4829 1577");
        let lines = on_terminal("482915", &[3, 3], 40, 24);
        assert_eq!(read_back(&digits_of(&lines, 5), SMALL), "482 915");
        // Too short for full size (12 lines need 13 rows).
        let lines = on_terminal("482915", &[3, 3], 80, 12);
        assert_eq!(read_back(&digits_of(&lines, 5), SMALL), "482 915");
        // Too small for any block digit: the grouped code as text, the validity wrapped.
        let lines = on_terminal("48291577", &[4, 4], 20, 24);
        assert_eq!(lines[0].trim(), "4829 1577");
        assert_eq!(lines[2].trim(), "valid for 17 more");
        assert_eq!(lines[3].trim(), "seconds");
        let lines = on_terminal("482915", &[3, 3], 80, 6);
        assert_eq!(lines[0].trim(), "482 915");
    }
}
