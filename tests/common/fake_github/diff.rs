//! The lines of a unified-diff `patch` (as GitHub gives per file of a pull request) a review comment may be on.

use std::collections::BTreeSet;

/// The lines a review comment may be placed on: `right` are lines of the new file shown in the diff (added or
/// context), `left` lines of the old file (removed or context). `positions` is how many lines the patch has
/// after its first hunk header (the deprecated `position` counts those).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffLines {
    pub left: BTreeSet<u64>,
    pub right: BTreeSet<u64>,
    pub positions: u64,
}

/// Parses a hunk header `@@ -a,b +c,d @@ ...` into the first old and new line numbers.
fn hunk_start(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("@@ -")?;
    let (old, rest) = rest.split_once(" +")?;
    let (new, _) = rest.split_once(" @@")?;
    let first = |range: &str| range.split(',').next()?.parse::<u64>().ok();
    Some((first(old)?, first(new)?))
}

/// The lines of `patch` a review comment may be on. A patch that is not a diff has none.
pub fn diff_lines(patch: &str) -> DiffLines {
    let mut lines = DiffLines::default();
    let (mut old, mut new) = (0u64, 0u64);
    let mut in_hunk = false;
    for (i, line) in patch.lines().enumerate() {
        if i > 0 {
            lines.positions += 1;
        }
        if let Some((o, n)) = hunk_start(line) {
            (old, new) = (o, n);
            in_hunk = true;
            continue;
        }
        if !in_hunk {
            continue;
        }
        match line.as_bytes().first() {
            Some(b'+') => {
                lines.right.insert(new);
                new += 1;
            }
            Some(b'-') => {
                lines.left.insert(old);
                old += 1;
            }
            Some(b'\\') => {} // "\ No newline at end of file"
            _ => {
                lines.left.insert(old);
                lines.right.insert(new);
                old += 1;
                new += 1;
            }
        }
    }
    lines
}
