//! The result contract between an agent and nightshift (documented in docs/agents.md):
//!
//! - the **final message**: `$NIGHTSHIFT_OUTPUT_DIR/message.md` when the agent writes it, otherwise its stdout;
//! - an optional **structured review**, `$NIGHTSHIFT_OUTPUT_DIR/review.json`: a summary and inline comments by
//!   path, line and side, posted as a pull request review with `output: review`;
//! - the **worktree's changes**, for `output: pull_request`.

use std::path::Path;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::safe_fs::read_beneath;

/// What the agent left behind, besides its changes.
#[derive(Debug)]
pub struct AgentResult {
    pub message: String,
    /// The message was longer than the profile's `max_output` and was cut.
    pub truncated: bool,
    pub review: Option<Review>,
}

/// `review.json`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// The review's body.
    pub summary: String,
    /// Inline comments on the pull request's diff.
    #[serde(default)]
    pub comments: Vec<InlineComment>,
    /// The agent's verdict, for a check run: `success`, `failure` or `neutral`. A check is green only when
    /// the agent says `success` and the job succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conclusion: Option<Conclusion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conclusion {
    Success,
    Failure,
    Neutral,
}

/// How grave an inline comment is: a check run's annotation level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Failure,
    Warning,
    Notice,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InlineComment {
    /// The file, relative to the repository root.
    pub path: String,
    /// The line in the file (in the pull request's head for RIGHT, its base for LEFT).
    pub line: u64,
    /// RIGHT (the new version, the default) or LEFT (the old one).
    #[serde(default = "right")]
    pub side: Side,
    pub body: String,
    /// `failure`, `warning` (the default for an annotation) or `notice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Side {
    Left,
    Right,
}

fn right() -> Side {
    Side::Right
}

/// The most of `review.json` nightshift reads.
pub const REVIEW_MAX: usize = 1024 * 1024;

/// Reads the agent's result from `output_dir`, falling back to its stdout for the message. A malformed
/// review file is an error that says what is wrong with it. The files are read the safe way
/// ([`crate::safe_fs::read_beneath`]): a symlink, a FIFO or a device, in the files' place or the folder's, is
/// an error, never read; a file longer than its cap is read only up to it.
pub fn read(
    output_dir: &Path,
    stdout: String,
    stdout_truncated: bool,
    max_output: usize,
) -> Result<AgentResult> {
    let (message, truncated) = match read_beneath(output_dir, "message.md", max_output)? {
        Some(file) if !file.bytes.is_empty() => (
            String::from_utf8_lossy(&file.bytes).into_owned(),
            file.truncated,
        ),
        _ => (stdout, stdout_truncated),
    };
    let review = match read_beneath(output_dir, "review.json", REVIEW_MAX)? {
        None => None,
        Some(file) if file.truncated => {
            bail!("the agent's review.json is longer than {REVIEW_MAX} bytes")
        }
        Some(file) => Some(parse_review(&String::from_utf8_lossy(&file.bytes))?),
    };
    Ok(AgentResult {
        message,
        truncated,
        review,
    })
}

/// Parses and checks `review.json`.
pub fn parse_review(text: &str) -> Result<Review> {
    let review: Review = match serde_json::from_str(text) {
        Ok(review) => review,
        Err(e) => bail!(
            "the agent's review.json is not valid: {e} (expected {{\"summary\": \"...\", \"conclusion\": \"success|failure|neutral\", \"comments\": [{{\"path\": \"src/lib.rs\", \"line\": 12, \"side\": \"RIGHT\", \"severity\": \"failure|warning|notice\", \"body\": \"...\"}}]}})"
        ),
    };
    for (i, c) in review.comments.iter().enumerate() {
        if c.path.trim().is_empty() || c.path.starts_with('/') {
            bail!(
                "the agent's review.json: comment {} has no repository-relative path",
                i + 1
            );
        }
        if c.line == 0 {
            bail!(
                "the agent's review.json: comment {} on {} has line 0; lines start at 1",
                i + 1,
                c.path
            );
        }
        if c.body.trim().is_empty() {
            bail!(
                "the agent's review.json: comment {} on {}:{} is empty",
                i + 1,
                c.path,
                c.line
            );
        }
    }
    Ok(review)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_file_wins_over_stdout_and_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        let r = read(dir.path(), "from stdout".into(), false, 100).unwrap();
        assert_eq!(
            (r.message.as_str(), r.truncated, r.review),
            ("from stdout", false, None)
        );
        std::fs::write(dir.path().join("message.md"), "x".repeat(150)).unwrap();
        let r = read(dir.path(), "from stdout".into(), false, 100).unwrap();
        assert_eq!((r.message.len(), r.truncated), (100, true));
    }

    #[test]
    fn links_fifos_and_devices_in_the_output_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("output");
        std::fs::create_dir(&output).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", output.join("message.md")).unwrap();
        let e = read(&output, String::new(), false, 100).unwrap_err();
        assert_eq!(
            e.to_string(),
            "message.md is a symlink; nightshift reads only regular files"
        );
        std::fs::remove_file(output.join("message.md")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", output.join("review.json")).unwrap();
        let e = read(&output, String::new(), false, 100).unwrap_err();
        assert!(e.to_string().starts_with("review.json is a symlink"), "{e}");
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &linked).unwrap();
        let e = read(&linked, String::new(), false, 100).unwrap_err();
        assert!(e.to_string().contains("folder is a symlink"), "{e}");
    }

    #[test]
    fn reviews_parse_with_right_as_the_default_side() {
        let review = parse_review(
            r#"{"summary": "ok", "comments": [{"path": "src/a.rs", "line": 3, "body": "typo"}]}"#,
        )
        .unwrap();
        assert_eq!(review.comments[0].side, Side::Right);
    }

    #[test]
    fn malformed_reviews_are_explained() {
        let e = parse_review(
            r#"{"summary": "ok", "comments": [{"path": "a", "line": "x", "body": "b"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("review.json is not valid: invalid type: string \"x\", expected u64"),
            "{e}"
        );
        let e = parse_review(
            r#"{"summary": "ok", "comments": [{"path": "a", "line": 0, "body": "b"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 0"), "{e}");
        let e = parse_review(r#"{"summary": "ok", "verdict": "approve"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `verdict`"), "{e}");
        let e = parse_review(r#"{"summary": "ok", "conclusion": "approve"}"#).unwrap_err();
        assert!(
            e.to_string().contains(
                "unknown variant `approve`, expected one of `success`, `failure`, `neutral`"
            ),
            "{e}"
        );
        let e = parse_review(
            r#"{"summary": "ok", "comments": [{"path": "a", "line": 1, "body": "b", "severity": "error"}]}"#,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "unknown variant `error`, expected one of `failure`, `warning`, `notice`"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_conclusion_and_severities_are_read_when_given() {
        let review = parse_review(
            r#"{"summary": "bad", "conclusion": "failure", "comments": [
                {"path": "a.rs", "line": 2, "body": "x", "severity": "notice"},
                {"path": "a.rs", "line": 3, "body": "y"}]}"#,
        )
        .unwrap();
        assert_eq!(review.conclusion, Some(Conclusion::Failure));
        assert_eq!(
            review
                .comments
                .iter()
                .map(|c| c.severity)
                .collect::<Vec<_>>(),
            [Some(Severity::Notice), None]
        );
        assert_eq!(
            parse_review(r#"{"summary": "ok"}"#).unwrap().conclusion,
            None
        );
    }
}
