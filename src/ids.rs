//! Newtypes for identifiers that are easy to mix up.

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
}
