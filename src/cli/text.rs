//! Text for an operator's terminal: everything printed here may come from an attacker (an issue's title, a
//! label, a repository's name, an agent's output), so control characters and bidirectional overrides are
//! shown as visible escapes, never sent; and columns are cut to a width so one long value cannot push a
//! table apart.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

pub use nightshift::text::safe;

/// A table cell's text: made safe, then cut to `width` terminal columns (ending with `…` when cut).
pub fn cut(s: &str, width: usize) -> String {
    let s = safe(s, false);
    if s.width() <= width {
        return s.into_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// How a column is laid out.
#[derive(Clone, Copy)]
pub struct Column {
    pub title: &'static str,
    /// The widest the column gets; longer values are cut.
    pub max: usize,
    /// Numbers align right.
    pub right: bool,
}

impl Column {
    pub const fn left(title: &'static str, max: usize) -> Column {
        Column {
            title,
            max,
            right: false,
        }
    }

    pub const fn right(title: &'static str, max: usize) -> Column {
        Column {
            title,
            max,
            right: true,
        }
    }
}

/// An aligned table: each column as wide as its widest (cut) value, two spaces apart; the last column is
/// not padded.
pub fn table(columns: &[Column], rows: &[Vec<String>]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .zip(row)
                .map(|(c, v)| cut(v, c.max))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].width())
                .chain([c.title.width()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let titles: Vec<String> = columns.iter().map(|c| c.title.to_owned()).collect();
    for row in std::iter::once(&titles).chain(&cells) {
        let mut line = String::new();
        for (i, (value, column)) in row.iter().zip(columns).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i] - value.width());
            let last = i + 1 == columns.len();
            if column.right {
                line.push_str(&pad);
                line.push_str(value);
            } else {
                line.push_str(value);
                if !last {
                    line.push_str(&pad);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn escapes_reach_the_terminal_only_as_text() {
        assert_eq!(
            safe("\x1b]0;pwned\x07 \x1b[2J\r\nok\u{9b}", false),
            "\\u{1b}]0;pwned\\u{7} \\u{1b}[2J\\u{d}\\u{a}ok\\u{9b}"
        );
        assert_eq!(safe("a\u{202E}gnp.exe", false), "a\\u{202e}gnp.exe");
        assert_eq!(safe("a\tb", true), "a\tb");
        assert_eq!(safe("a\tb", false), "a\\u{9}b");
        assert!(matches!(safe("plain é 漢字", false), Cow::Borrowed(_)));
    }

    #[test]
    fn cells_are_cut_to_their_width_in_terminal_columns() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("a very long value", 8), "a very …");
        // Wide characters take two columns each.
        assert_eq!(cut("漢字漢字漢字", 7), "漢字漢…");
        assert_eq!(cut("漢字漢字漢字", 7).width(), 7);
        // The escape is cut too, never half of it sent.
        assert_eq!(cut("\x1b[31mred", 6), "\\u{1b…");
    }

    #[test]
    fn columns_line_up_whatever_the_widths() {
        let columns = [
            Column::right("ID", 8),
            Column::left("NAME", 6),
            Column::left("NOTE", 10),
        ];
        let rows = vec![
            vec!["7".into(), "a".into(), "x".into()],
            vec!["12345".into(), "much too long".into(), "y".into()],
        ];
        assert_eq!(
            table(&columns, &rows),
            "   ID  NAME    NOTE\n    7  a       x\n12345  much …  y\n"
        );
    }
}
