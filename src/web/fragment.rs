//! What the deliveries, triggers and budgets pages share: one minijinja environment in which every
//! `{{ value }}` is HTML-escaped (`& < > " '`) after its control and invisible format characters are
//! made visible (`\u{1b}`: an ANSI escape or a bidi override in a trigger's name shows as text), with no
//! `safe` filter to opt out; and the links, built here from relative paths and percent-encoded values.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;

/// The pages' templates, by name.
const TEMPLATES: [(&str, &str); 4] = [
    ("deliveries", include_str!("templates/deliveries.html")),
    ("delivery", include_str!("templates/delivery.html")),
    ("triggers", include_str!("templates/triggers.html")),
    ("budgets", include_str!("templates/budgets.html")),
];

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // No way to write a value unescaped, nor escaped without its controls made visible.
        for filter in ["safe", "escape", "e"] {
            env.remove_filter(filter);
        }
        // A safe value here is only one minijinja built with this formatter (`join`'s result).
        env.set_formatter(|out, _state, value| {
            let text = if value.is_safe() {
                value.as_str().unwrap_or_default().to_owned()
            } else if value.is_undefined() || value.is_none() {
                String::new()
            } else {
                match value.as_str() {
                    Some(s) => escape(s),
                    None => escape(&value.to_string()),
                }
            };
            out.write_str(&text).map_err(|e| {
                minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "writing the page")
                    .with_source(e)
            })
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("the `{name}` template does not compile: {e:#}"));
        }
        env
    })
}

/// A value for a template's context, from its serde form.
pub(crate) fn data(value: impl Serialize) -> Value {
    Value::from(minijinja::value::Serde(value))
}

/// Renders one of the pages' templates with `context` (built with `minijinja::context!`).
pub(crate) fn render(name: &str, context: Value) -> Result<String> {
    environment()
        .get_template(name)
        .and_then(|t| t.render(context))
        .with_context(|| format!("rendering the {name} page"))
}

/// `s` as text in HTML (an element's content or a quoted attribute), as every template value is written:
/// its control and invisible format characters made visible (`\u{1b}`), then `& < > " '` escaped.
pub fn escape(s: &str) -> String {
    super::html::escape(&crate::text::safe(s, false))
}

/// Characters kept as they are in a path segment or query value: the unreserved ones of RFC 3986.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `prefix` followed by `value` as one percent-encoded path segment (`/deliveries/` + an id); `None` when
/// the value is empty or only dots, which a browser would take as `.` or `..` and leave `prefix` by.
pub(crate) fn path(prefix: &str, value: &str) -> Option<String> {
    if value.chars().all(|c| c == '.') {
        return None;
    }
    Some(format!("{prefix}{}", utf8_percent_encode(value, KEPT)))
}

/// `path` with a query string of the pairs whose value is not empty, each percent-encoded.
pub(crate) fn with_query(path: &str, pairs: &[(&str, &str)]) -> String {
    let query: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, KEPT)))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC), and as the `datetime` of a `<time>`.
pub(crate) fn utc(ms: i64) -> (String, String) {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => (
            t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
            t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ),
        Err(_) => (ms.to_string(), String::new()),
    }
}

/// Dollars: cents from a dollar up, tenths of a cent below (agent runs often cost less than a cent).
pub(crate) fn dollars(usd: f64) -> String {
    if usd.abs() >= 1.0 || usd == 0.0 {
        format!("${usd:.2}")
    } else {
        format!("${usd:.4}")
    }
}

/// A value that is empty, or only spaces, is no value (a form sends empty fields).
pub(crate) fn given(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Hostile text as strangers send it: markup, an attribute break-out, an ANSI escape, a bidi override.
    pub(crate) const HOSTILE: [&str; 4] = [
        "<script>alert(1)</script>",
        "\"'><img src=x onerror=alert(1)>",
        "\x1b[2J\x1b]0;pwned\x07",
        "a\u{202E}gnp.exe",
    ];

    /// What no page may contain, whatever it shows: markup from the text, or a control character sent.
    pub(crate) fn assert_inert(html: &str) {
        for bad in [
            "<script",
            "<img",
            "onerror=alert(1)>",
            "\x1b",
            "\x07",
            "\u{202E}",
        ] {
            assert!(!html.contains(bad), "{bad:?} reached the page:\n{html}");
        }
        // Every link is a path on this site (never `//host`, `javascript:` or another scheme).
        for href in html.split("href=\"").skip(1) {
            let href = &href[..href.find('"').expect("a quoted href")];
            assert!(
                href.starts_with('/') && !href.starts_with("//"),
                "a link that leaves the site: {href}"
            );
        }
    }

    #[test]
    fn every_value_is_escaped_and_shown_visibly() {
        assert_eq!(
            escape("<b a=\"x\">'&'</b>"),
            "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
        );
        assert_eq!(escape("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(escape("a\u{202E}b"), "a\\u{202e}b");
        for text in HOSTILE {
            assert_inert(&escape(text));
        }
        // There is no way around it in a template.
        for filter in ["safe", "e", "escape"] {
            let raw = environment().render_str(
                &format!("{{{{ s|{filter} }}}}"),
                minijinja::context! { s => "<i>\x1b" },
            );
            assert!(raw.is_err(), "{filter}: {raw:?}");
        }
        let joined = environment().render_str(
            "{{ l|join(\", \") }}",
            minijinja::context! { l => ["<i>", "\x1b"] },
        );
        assert_eq!(joined.unwrap(), "&lt;i&gt;, \\u{1b}");
    }

    #[test]
    fn links_are_relative_and_encoded() {
        assert_eq!(
            path("/deliveries/", "a/../b?c#d").as_deref(),
            Some("/deliveries/a%2F..%2Fb%3Fc%23d")
        );
        assert_eq!(path("/deliveries/", ".."), None);
        assert_eq!(path("/deliveries/", ""), None);
        assert_eq!(
            with_query(
                "/deliveries",
                &[("repo", "o/r"), ("event", ""), ("x", "a&b=c")]
            ),
            "/deliveries?repo=o%2Fr&x=a%26b%3Dc"
        );
    }
}
