//! Secret redaction: every secret value nightshift knows (webhook secrets, the GitHub token, the App's private
//! key, every installation token it minted, the model keys agents are given, and the values of `env:`
//! pass-through variables whose names say they are secret) is replaced by `[redacted]` in every job-log line
//! and in everything posted to GitHub.
//!
//! One registry per process ([`global`]): the service registers its configuration's secrets at start
//! (`Config::register_secrets`), and the GitHub client registers each token it mints (forgotten a while after it
//! expires). Redaction is one pass of an Aho-Corasick matcher over all values, the longest match first, so a
//! secret that contains another is replaced whole.

use std::borrow::Cow;
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret is replaced by.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not redacted: a secret that short would turn common words into
/// `[redacted]` and is not worth hiding anyway.
pub const MIN_LEN: usize = 8;

/// The known secret values, and one matcher for all of them.
#[derive(Default)]
pub struct Secrets {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each value, and when it stops mattering (a token's expiry; None: never).
    values: Vec<(String, Option<Instant>)>,
    /// Finds every value in one pass, the longest where they overlap; None when there are none.
    matcher: Option<AhoCorasick>,
}

/// How long past its expiry a token is still redacted (clocks differ).
const EXPIRED_GRACE: Duration = Duration::from_secs(15 * 60);

/// The process's registry.
pub fn global() -> &'static Secrets {
    static SECRETS: OnceLock<Secrets> = OnceLock::new();
    SECRETS.get_or_init(Secrets::default)
}

/// Redacts every known secret in `text` (the process registry).
pub fn redact(text: &str) -> Cow<'_, str> {
    global().redact(text)
}

/// Whether a variable's name says it holds a secret (`OPENAI_API_KEY`, `NPM_TOKEN`, `DB_PASSWORD`,
/// `GH_AUTH`, `APIKEY`): one of its `_`-separated words is, or ends with, a word for a secret.
pub fn secret_name(name: &str) -> bool {
    const WORDS: [&str; 7] = [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIALS",
        "AUTH",
    ];
    name.to_ascii_uppercase()
        .split('_')
        .any(|word| WORDS.iter().any(|w| word.ends_with(w)) || word == "CREDENTIAL")
}

impl Secrets {
    /// Adds a secret value for good. Surrounding whitespace is ignored; values shorter than [`MIN_LEN`] are
    /// not kept. A multi-line value (a PEM key) is also kept line by line, so a part of it is redacted too.
    pub fn add(&self, value: &str) {
        self.add_until(value, None);
    }

    /// Adds a secret that stops mattering at `expires` (an installation token): it is forgotten a while
    /// after, so a service that mints a token per job does not collect them forever.
    pub fn add_until(&self, value: &str, expires: Option<Instant>) {
        let mut new: Vec<&str> = vec![value.trim()];
        if value.trim().contains('\n') {
            // The armour lines of a PEM key are no secret.
            new.extend(
                value
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with("-----")),
            );
        }
        let until = expires.map(|t| t + EXPIRED_GRACE);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let before = inner.values.len();
        inner
            .values
            .retain(|(_, until)| until.is_none_or(|t| t > now));
        let mut changed = inner.values.len() != before;
        for v in new {
            if v.len() >= MIN_LEN && !inner.values.iter().any(|(k, _)| k == v) {
                inner.values.push((v.to_owned(), until));
                changed = true;
            }
        }
        if changed {
            inner.matcher = if inner.values.is_empty() {
                None
            } else {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(inner.values.iter().map(|(v, _)| v.as_str()))
                    .ok()
            };
        }
    }

    /// How many values are known.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values
            .len()
    }

    /// Whether no value is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `text` with every known secret replaced by [`REDACTED`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        match &inner.matcher {
            Some(m) if m.is_match(text) => {
                Cow::Owned(m.replace_all(text, &vec![REDACTED; inner.values.len()]))
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// Every string in a JSON value, redacted in place (a body posted to GitHub).
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(clean) = self.redact(s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }
}

/// `line` with every control character but tab shown as a visible escape (`\x1b` as `\u{1b}`), so an
/// agent's ANSI or OSC sequences never reach the terminal of an operator reading the log (`nightshift jobs`).
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent_to_the_terminal() {
        assert_eq!(
            printable("\x1b]0;pwned\x07red\x1b[31m\tok é"),
            "\\u{1b}]0;pwned\\u{7}red\\u{1b}[31m\tok é"
        );
        assert!(matches!(
            printable("plain\tline"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn known_values_are_redacted_longest_first() {
        let s = Secrets::default();
        s.add("short");
        s.add("  ghs_abcdefgh  ");
        s.add("ghs_abcdefgh_longer");
        assert_eq!(
            s.redact("a ghs_abcdefgh_longer and ghs_abcdefgh, short"),
            "a [redacted] and [redacted], short"
        );
        assert!(matches!(s.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn expired_tokens_are_forgotten_and_do_not_pile_up() {
        let s = Secrets::default();
        s.add("webhook-secret");
        let past = Instant::now() - EXPIRED_GRACE - Duration::from_secs(1);
        for i in 0..1000 {
            s.add_until(&format!("ghs_token_{i:04}"), Some(past));
        }
        s.add_until(
            "ghs_live_token",
            Some(Instant::now() + Duration::from_secs(3600)),
        );
        assert_eq!(s.len(), 2, "only the secret and the live token are left");
        assert_eq!(
            s.redact("webhook-secret ghs_live_token"),
            "[redacted] [redacted]"
        );
    }

    #[test]
    fn a_pem_key_is_redacted_whole_and_line_by_line() {
        let s = Secrets::default();
        s.add("-----BEGIN KEY-----\nMIIEowIBAAKCAQEAx\nZZZZZZZZZZZZZZZZ\n-----END KEY-----\n");
        assert_eq!(s.redact("leak: MIIEowIBAAKCAQEAx"), "leak: [redacted]");
        assert_eq!(
            s.redact("-----BEGIN KEY-----\nMIIEowIBAAKCAQEAx\nZZZZZZZZZZZZZZZZ\n-----END KEY-----"),
            "[redacted]"
        );
    }

    #[test]
    fn json_bodies_are_redacted_everywhere() {
        let s = Secrets::default();
        s.add("sk-live-123456");
        let mut body = serde_json::json!({
            "title": "key sk-live-123456",
            "comments": [{"path": "a", "line": 1, "body": "sk-live-123456"}],
        });
        s.redact_json(&mut body);
        assert_eq!(body["title"], "key [redacted]");
        assert_eq!(body["comments"][0]["body"], "[redacted]");
    }

    #[test]
    fn secret_names() {
        for yes in [
            "OPENAI_API_KEY",
            "NPM_TOKEN",
            "db_password",
            "GH_AUTH",
            "APIKEY",
            "CLIENT_SECRET",
        ] {
            assert!(secret_name(yes), "{yes}");
        }
        for no in [
            "PATH",
            "LANG",
            "RUST_LOG",
            "AUTHOR_NAME",
            "KEYBOARD",
            "TOKENIZERS_PARALLELISM",
        ] {
            assert!(!secret_name(no), "{no}");
        }
    }
}
