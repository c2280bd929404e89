//! Text from strangers (an issue's title, a label, a repository's or trigger's name, an agent's output)
//! shown to an operator, on a terminal (`cli`) or a web page (`web`): control characters and invisible
//! format characters are shown as visible escapes, never sent.

use std::borrow::Cow;

/// Characters that reorder or hide text on a terminal without being control characters (Unicode's bidi
/// embeddings, overrides and isolates, zero-width marks): an attacker's U+202E makes `exe.txt` read `txt.exe`.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// `s` with every control character (escape, bell, carriage return, newline, C1 controls; tab too unless
/// `keep_tab`) and every invisible format character shown as `\u{…}`, so nothing in it acts on the terminal.
pub fn safe(s: &str, keep_tab: bool) -> Cow<'_, str> {
    let bad = |c: char| (c.is_control() && !(keep_tab && c == '\t')) || is_invisible_format(c);
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `text` for HTML, in an element's content or a quoted attribute: `& < > " '` escaped.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Cookie `name` as it is named behind https (`secure`): with the `__Host-` prefix, which a browser takes
/// only from this very host, over https, for every path and with no `Domain`, so a sibling subdomain cannot
/// plant one. Behind plain http the prefix cannot be had.
pub fn host_cookie_name(name: &str, secure: bool) -> Cow<'_, str> {
    if secure {
        Cow::Owned(format!("__Host-{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, and `Secure` when `secure`.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The value of cookie `name`; none when the browser sends two of that name (one was planted: a browser
/// that takes a cookie with an empty name and a value of `__Host-name=x` sends it as `__Host-name=x`, beside
/// the real one, and which comes first is not ours to trust).
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, value)| value.to_owned());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue, header};

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn a_cookie_is_found_by_its_whole_name_and_one_sent_twice_is_none() {
        let h = headers(&["a=1; __Host-s=2", "s=3"]);
        assert_eq!(cookie(&h, "__Host-s").as_deref(), Some("2"));
        assert_eq!(cookie(&h, "s").as_deref(), Some("3"));
        assert_eq!(cookie(&h, "Host-s"), None);
        // A planted second one (a nameless cookie whose value reads `__Host-s=9`), in either order.
        for planted in [["__Host-s=9; __Host-s=2"], ["__Host-s=2; __Host-s=9"]] {
            assert_eq!(cookie(&headers(&planted), "__Host-s"), None);
        }
        assert_eq!(
            cookie(&headers(&["__Host-s=2", "__Host-s=9"]), "__Host-s"),
            None
        );
    }
}
