//! Newtypes for identifiers that are easy to mix up, and the hidden marker that names a job in what it posts.

use std::fmt;

use serde::{Deserialize, Serialize};

/// GitHub's `X-GitHub-Delivery` GUID. A redelivery carries the same value as the original.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(pub String);

/// Our own job id (a row in the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

/// A GitHub App installation id, from the event's `installation.id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstallationId(pub u64);

/// A repository's `owner/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName {
    owner: String,
    name: String,
}

impl RepoName {
    /// Parses `owner/name`; both parts must be non-empty and free of further slashes.
    pub fn parse(full_name: &str) -> Option<Self> {
        let (owner, name) = full_name.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(owner) && valid(name)).then(|| RepoName {
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

impl TryFrom<String> for RepoName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        RepoName::parse(&value).ok_or_else(|| format!("`{value}` is not an owner/name repository"))
    }
}

impl From<RepoName> for String {
    fn from(value: RepoName) -> Self {
        value.to_string()
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The start of the hidden marker in everything nightshift posts: it tells nightshift's own comments from
/// people's (so they never set off triggers) and lets a retried job find what it already posted.
pub const MARKER_PREFIX: &str = "<!-- nightshift:job:";

/// The hidden marker that identifies a job's comment.
pub fn marker(job: JobId) -> String {
    format!("{MARKER_PREFIX}{job} -->")
}

/// The jobs whose markers are in `text`: every whole `<!-- nightshift:job:N -->`, and a text that is only
/// `nightshift:job:N` (a check run's `external_id`). Linear in the text's length.
pub fn marked_jobs(text: &str) -> Vec<JobId> {
    let number = |digits: &str| -> Option<JobId> {
        (!digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok().map(JobId))
            .flatten()
    };
    if let Some(n) = text.strip_prefix("nightshift:job:").and_then(number) {
        return vec![n];
    }
    let mut found = Vec::new();
    for (at, _) in text.match_indices(MARKER_PREFIX) {
        let rest = &text[at + MARKER_PREFIX.len()..];
        let digits = &rest[..rest.bytes().take_while(u8::is_ascii_digit).count()];
        if rest[digits.len()..].starts_with(" -->")
            && let Some(n) = number(digits)
        {
            found.push(n);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_parse_owner_and_name() {
        let repo = RepoName::parse("Codertocat/Hello-World").unwrap();
        assert_eq!((repo.owner(), repo.name()), ("Codertocat", "Hello-World"));
        assert_eq!(repo.to_string(), "Codertocat/Hello-World");
        for bad in ["", "a", "a/", "/b", "a/b/c", "a/..", "a b/c"] {
            assert!(RepoName::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn markers_name_jobs_only_whole() {
        assert_eq!(
            marked_jobs("x <!-- nightshift:job:12 --> y <!-- nightshift:job:3 -->"),
            [JobId(12), JobId(3)]
        );
        assert_eq!(marked_jobs("nightshift:job:7"), [JobId(7)]);
        assert!(marked_jobs("<!-- nightshift:job:12 ->").is_empty());
        assert!(marked_jobs("<!-- nightshift:job: -->").is_empty());
        assert!(marked_jobs("<!-- nightshift:job:99999999999999999999999 -->").is_empty());
        assert!(marked_jobs("<!-- nightshift:job:1x -->").is_empty());
        assert!(marked_jobs("nightshift:job:7 and more").is_empty());
    }
}
