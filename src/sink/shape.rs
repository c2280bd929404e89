//! Pure functions that shape an agent's structured review for what GitHub accepts: which inline comments a
//! review may carry ([`diff_lines`], [`shape_review`]), a check run's annotations ([`annotations`]) and its
//! conclusion ([`check_conclusion`]). Everything here is agent-written or repository text: hostile.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::texts;
use crate::agent::result::{Conclusion, InlineComment, Review, Severity, Side};

/// The lines of one file's diff a review may comment on: RIGHT, added and context lines by their number in
/// the new file; LEFT, removed and context lines by their number in the old file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiffLines {
    right: HashSet<u64>,
    left: HashSet<u64>,
}

impl DiffLines {
    pub fn contains(&self, side: Side, line: u64) -> bool {
        match side {
            Side::Right => self.right.contains(&line),
            Side::Left => self.left.contains(&line),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.right.is_empty() && self.left.is_empty()
    }
}

/// `@@ -a[,b] +c[,d] @@ ...` → (a, b, c, d); None when the header is malformed.
fn hunk_header(line: &str) -> Option<(u64, u64, u64, u64)> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |r: &str| -> Option<(u64, u64)> {
        match r.split_once(',') {
            Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
            None => Some((r.parse().ok()?, 1)),
        }
    };
    let (a, b) = range(old)?;
    let (c, d) = range(new)?;
    Some((a, b, c, d))
}

/// The lines a review may comment on in a unified diff `patch`, as `GET /repos/{o}/{r}/pulls/{n}/files`
/// gives it (hunks without file headers). Malformed hunks are skipped up to the next good header, lines
/// past a hunk's counts are not taken as its own, `\ No newline at end of file` is no line. Linear in the
/// patch's length; never panics.
pub fn diff_lines(patch: &str) -> DiffLines {
    let mut lines = DiffLines::default();
    // The next old and new line numbers, and how many of each the hunk still has.
    let (mut old, mut new, mut old_left, mut new_left) = (0u64, 0u64, 0u64, 0u64);
    for line in patch.split('\n') {
        if line.starts_with("@@") {
            (old, old_left, new, new_left) = hunk_header(line).unwrap_or((0, 0, 0, 0));
            continue;
        }
        match line.as_bytes().first() {
            Some(b' ') if old_left > 0 && new_left > 0 => {
                lines.left.insert(old);
                lines.right.insert(new);
                old = old.saturating_add(1);
                new = new.saturating_add(1);
                old_left -= 1;
                new_left -= 1;
            }
            Some(b'+') if new_left > 0 => {
                lines.right.insert(new);
                new = new.saturating_add(1);
                new_left -= 1;
            }
            Some(b'-') if old_left > 0 => {
                lines.left.insert(old);
                old = old.saturating_add(1);
                old_left -= 1;
            }
            // `\ No newline at end of file`, an empty last line, or text outside any hunk.
            _ => {}
        }
    }
    // Line 0 is no line (a hunk of an empty file starts at 0).
    lines.left.remove(&0);
    lines.right.remove(&0);
    lines
}

/// A review shaped for GitHub: the inline comments it may carry, and a section for the review's body with
/// the ones it may not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShapedReview {
    /// To append to the review's body (empty when nothing was folded).
    pub body_extra: String,
    /// Inline comments on lines of the diff, with mentions neutralised.
    pub comments: Vec<InlineComment>,
    /// How many comments were on lines outside the diff and went into `body_extra`.
    pub folded: usize,
    /// How many comments repeated an earlier one (same path, line, side and text) and were dropped.
    pub dropped: usize,
}

/// Shapes `review` for the pull request whose changed files are `files` (path, and its patch when GitHub
/// gives one: none for binary or very large files). Comments on lines of the diff are kept; those outside
/// it (or on a file without a patch, or not changed at all) are folded into the body; repeats are dropped.
pub fn shape_review(review: &Review, files: &[(String, Option<String>)]) -> ShapedReview {
    let diffs: HashMap<&str, DiffLines> = files
        .iter()
        .map(|(path, patch)| {
            (
                path.as_str(),
                patch.as_deref().map(diff_lines).unwrap_or_default(),
            )
        })
        .collect();
    let mut seen: HashSet<(&str, u64, Side, &str)> = HashSet::new();
    let mut shaped = ShapedReview::default();
    let mut folded: Vec<&InlineComment> = Vec::new();
    for c in &review.comments {
        if !seen.insert((c.path.as_str(), c.line, c.side, c.body.trim())) {
            shaped.dropped += 1;
            continue;
        }
        let on_diff = diffs
            .get(c.path.as_str())
            .is_some_and(|d| d.contains(c.side, c.line));
        if on_diff {
            let mut kept = c.clone();
            kept.body = texts::inert(&kept.body).into_owned();
            shaped.comments.push(kept);
        } else {
            folded.push(c);
        }
    }
    shaped.folded = folded.len();
    shaped.body_extra = texts::folded_comments(&folded);
    shaped
}

/// An inline comment as GitHub's "create a review" takes it (`severity` is nightshift's, not GitHub's).
pub fn review_comment_json(c: &InlineComment) -> Value {
    json!({
        "path": c.path,
        "line": c.line,
        "side": match c.side { Side::Right => "RIGHT", Side::Left => "LEFT" },
        "body": texts::inert(&c.body),
    })
}

/// The longest annotation message kept (GitHub allows 64 KiB).
const ANNOTATION_MAX_CHARS: usize = 4_000;

/// A check run's `output.annotations` from the review's inline comments on the new version (RIGHT; a LEFT
/// line is of a file the checked commit does not have), repeats dropped, in order. GitHub takes at most 50
/// per request: the sink sends them in batches.
pub fn annotations(review: &Review) -> Vec<Value> {
    let mut seen = HashSet::new();
    review
        .comments
        .iter()
        .filter(|c| c.side == Side::Right)
        .filter(|c| seen.insert((c.path.as_str(), c.line, c.body.trim())))
        .map(|c| {
            let level = match c.severity.unwrap_or(Severity::Warning) {
                Severity::Failure => "failure",
                Severity::Warning => "warning",
                Severity::Notice => "notice",
            };
            let message = texts::inert(c.body.trim());
            let message = match message.char_indices().nth(ANNOTATION_MAX_CHARS) {
                Some((end, _)) => format!("{}…", &message[..end]),
                None => message.into_owned(),
            };
            json!({
                "path": c.path,
                "start_line": c.line,
                "end_line": c.line,
                "annotation_level": level,
                "message": message,
            })
        })
        .collect()
}

/// A check run's conclusion: `failure` when the job failed or the agent says so, `success` only when the
/// job succeeded and the agent says so, `neutral` otherwise. Never green for a job that did not succeed.
pub fn check_conclusion(job_succeeded: bool, review: Option<&Review>) -> &'static str {
    match (job_succeeded, review.and_then(|r| r.conclusion)) {
        (false, _) | (true, Some(Conclusion::Failure)) => "failure",
        (true, Some(Conclusion::Success)) => "success",
        (true, Some(Conclusion::Neutral) | None) => "neutral",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comment(path: &str, line: u64, side: Side, body: &str) -> InlineComment {
        InlineComment {
            path: path.into(),
            line,
            side,
            body: body.into(),
            severity: None,
        }
    }

    fn review(comments: Vec<InlineComment>) -> Review {
        Review {
            summary: "s".into(),
            comments,
            conclusion: None,
        }
    }

    const PATCH: &str = "@@ -1,4 +1,5 @@\n a\n-b\n+B\n+B2\n c\n d\n\\ No newline at end of file\n@@ -10,2 +11,2 @@ fn f() {\n x\n-y\n+Y";

    #[test]
    fn diff_lines_has_added_and_context_lines_right_and_removed_and_context_left() {
        let d = diff_lines(PATCH);
        let right: Vec<u64> = (1..=20).filter(|l| d.contains(Side::Right, *l)).collect();
        let left: Vec<u64> = (1..=20).filter(|l| d.contains(Side::Left, *l)).collect();
        assert_eq!(right, [1, 2, 3, 4, 5, 11, 12]);
        assert_eq!(left, [1, 2, 3, 4, 10, 11]);
    }

    #[test]
    fn malformed_and_hostile_patches_never_panic_and_take_only_real_hunk_lines() {
        for patch in [
            "",
            "@@",
            "@@ -x +y @@\n+a",
            "@@ -1 +1\n+a",
            "@@ -18446744073709551615,2 +18446744073709551615,2 @@\n a\n a\n+b",
            "@@ -1,99999999999999999999 +1,1 @@\n+a",
            "+no hunk\n-at all\n context",
            "\\ No newline at end of file",
            "@@ -0,0 +0,0 @@\n+a",
        ] {
            let _ = diff_lines(patch);
        }
        assert!(diff_lines("@@ -x +y @@\n+a\n b").is_empty());
        assert!(diff_lines("+no hunk\n b").is_empty());
        // Lines past the hunk's counts are not its own.
        let d = diff_lines("@@ -1,1 +1,1 @@\n-a\n+b\n+c\n d");
        assert!(d.contains(Side::Right, 1) && !d.contains(Side::Right, 2));
        assert!(d.contains(Side::Left, 1) && !d.contains(Side::Left, 2));
        // A hunk claiming a billion lines costs what its text costs.
        let d = diff_lines("@@ -1,1000000000 +1,1000000000 @@\n+a");
        assert!(d.contains(Side::Right, 1) && !d.contains(Side::Right, 2));
        // A line number at the top of u64 saturates instead of overflowing.
        let d = diff_lines("@@ -18446744073709551615,3 +18446744073709551615,3 @@\n a\n a");
        assert!(d.contains(Side::Right, u64::MAX));
    }

    #[test]
    fn a_huge_patch_is_read_in_linear_time() {
        // 200k hunk headers and lines; quadratic work would not finish in a test run.
        let patch = "@@ -1,1 +1,1 @@\n-a\n+b\n".repeat(200_000);
        let d = diff_lines(&patch);
        assert!(d.contains(Side::Right, 1) && !d.contains(Side::Right, 2));
    }

    #[test]
    fn comments_outside_the_diff_are_folded_and_repeats_dropped() {
        let files = vec![
            ("src/a.rs".to_owned(), Some(PATCH.to_owned())),
            ("logo.png".to_owned(), None),
        ];
        let r = review(vec![
            comment("src/a.rs", 3, Side::Right, "on an added line, @alice"),
            comment("src/a.rs", 3, Side::Right, "on an added line, @alice "),
            comment("src/a.rs", 2, Side::Left, "on a removed line"),
            comment("src/a.rs", 7, Side::Right, "outside the hunks"),
            comment("logo.png", 1, Side::Right, "binary"),
            comment("src/other.rs", 1, Side::Right, "not changed"),
            comment("src/a.rs", 7, Side::Right, "outside the hunks"),
        ]);
        let shaped = shape_review(&r, &files);
        assert_eq!((shaped.folded, shaped.dropped), (3, 2));
        assert_eq!(
            shaped
                .comments
                .iter()
                .map(|c| (c.line, c.side, c.body.as_str()))
                .collect::<Vec<_>>(),
            [
                (3, Side::Right, "on an added line, @\u{200D}alice"),
                (2, Side::Left, "on a removed line"),
            ]
        );
        assert!(
            shaped.body_extra.contains("`src/a.rs:7`"),
            "{}",
            shaped.body_extra
        );
        assert!(shaped.body_extra.contains("`logo.png:1`"));
        assert!(shaped.body_extra.contains("`src/other.rs:1`"));
        let nothing_folded = shape_review(&review(vec![]), &files);
        assert_eq!(nothing_folded, ShapedReview::default());
    }

    #[test]
    fn annotations_take_levels_from_severity_and_skip_left_lines() {
        let mut failing = comment("src/a.rs", 3, Side::Right, "breaks @org/team");
        failing.severity = Some(Severity::Failure);
        let r = review(vec![
            failing,
            comment("src/a.rs", 4, Side::Right, "style"),
            comment("src/a.rs", 4, Side::Right, "style"),
            comment("src/a.rs", 2, Side::Left, "old line"),
        ]);
        assert_eq!(
            serde_json::Value::from(annotations(&r)),
            json!([
                {"path": "src/a.rs", "start_line": 3, "end_line": 3, "annotation_level": "failure",
                 "message": "breaks @\u{200D}org/team"},
                {"path": "src/a.rs", "start_line": 4, "end_line": 4, "annotation_level": "warning",
                 "message": "style"},
            ])
        );
        let long = review(vec![comment("a", 1, Side::Right, &"x".repeat(10_000))]);
        let message = annotations(&long)[0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(message.chars().count(), ANNOTATION_MAX_CHARS + 1);
    }

    #[test]
    fn a_check_is_green_only_when_the_job_succeeded_and_the_agent_says_success() {
        let says = |c: Option<Conclusion>| Review {
            conclusion: c,
            ..review(vec![])
        };
        let success = says(Some(Conclusion::Success));
        assert_eq!(check_conclusion(false, Some(&success)), "failure");
        assert_eq!(check_conclusion(false, None), "failure");
        assert_eq!(check_conclusion(true, Some(&success)), "success");
        assert_eq!(
            check_conclusion(true, Some(&says(Some(Conclusion::Failure)))),
            "failure"
        );
        assert_eq!(
            check_conclusion(true, Some(&says(Some(Conclusion::Neutral)))),
            "neutral"
        );
        assert_eq!(check_conclusion(true, Some(&says(None))), "neutral");
        assert_eq!(check_conclusion(true, None), "neutral");
    }

    #[test]
    fn review_comments_for_github_carry_no_severity_and_no_mentions() {
        let mut c = comment("a.rs", 2, Side::Left, "cc @bob");
        c.severity = Some(Severity::Notice);
        assert_eq!(
            review_comment_json(&c),
            json!({"path": "a.rs", "line": 2, "side": "LEFT", "body": "cc @\u{200D}bob"})
        );
    }
}
