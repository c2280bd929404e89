//! Reading our YAML files (service config, trigger files) into typed structs, with every problem reported
//! as a [`Diagnostic`] that names the file, line and column and, where one helps, a hint.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_saphyr::{Location, MessageFormatter};

/// One problem in one file, printed as `path:line:col: error: message` (plus `  hint: ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn new(path: &Path, line: u64, column: u64, message: impl Into<String>) -> Self {
        Diagnostic {
            path: path.to_owned(),
            line: line.max(1),
            column: column.max(1),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem at a YAML location (as recorded by `serde_saphyr::Spanned`).
    pub fn at(path: &Path, location: Location, message: impl Into<String>) -> Self {
        Diagnostic::new(path, location.line(), location.column(), message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown relative to the working directory when it is below it, as editors and terminals link it.
        let cwd = std::env::current_dir().unwrap_or_default();
        let path = self.path.strip_prefix(&cwd).unwrap_or(&self.path);
        write!(
            f,
            "{}:{}:{}: error: {}",
            path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// A list of diagnostics that is itself an error (start-up refuses to go on with any).
#[derive(Debug)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Deserializes `text` (the contents of `path`) into `T`. Serde stops at the first problem, so this returns
/// one diagnostic; callers check the typed result further and collect the rest.
pub fn from_str<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, Diagnostic> {
    serde_saphyr::from_str(text).map_err(|err| {
        let message = serde_saphyr::DefaultMessageFormatter
            .format_message(&err)
            .into_owned();
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let hint = hint_for(&message);
        let mut diagnostic = Diagnostic::new(path, line, column, message);
        diagnostic.hint = hint;
        diagnostic
    })
}

/// Suggests the closest known name for serde's "unknown field `x`, expected one of `a`, `b`" (and the same
/// shape for unknown variants).
fn hint_for(message: &str) -> Option<String> {
    let unknown = message.split('`').nth(1)?;
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    let expected = message.split_once("expected")?.1;
    let candidates: Vec<&str> = expected
        .split([',', ' ', '`'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "one" && *s != "of" && *s != "or")
        .collect();
    did_you_mean(unknown, candidates.iter().copied())
}

/// `did you mean `x`?` for the candidate closest to `input`, when one is close enough to be a typo.
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(input, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        branches: Vec<String>,
    }

    #[test]
    fn unknown_field_names_line_column_and_a_hint() {
        let err = from_str::<Sample>(Path::new("t.yml"), "\nbranchs: [main]\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        assert!(err.message.contains("unknown field `branchs`"), "{err}");
        assert_eq!(err.hint.as_deref(), Some("did you mean `branches`?"));
        assert!(
            err.to_string()
                .starts_with("t.yml:2:1: error: unknown field `branchs`")
        );
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let err = from_str::<Sample>(Path::new("t.yml"), "branches: main: x\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.column > 1, "{err}");
    }
}
