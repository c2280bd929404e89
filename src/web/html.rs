//! HTML for the dashboard: escaping (every value on a page came from a stranger: a trigger's name, a
//! repository, a log line, a prompt, an error) and the page around it.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Text for HTML, in an element or a quoted attribute.
pub use crate::text::escape_html as escape;

/// `text` with control characters (ANSI escapes, carriage returns, NUL…) and bidirectional overrides shown
/// as `\u{…}` escapes, so nothing can restyle, reorder or hide what is around it; tabs and newlines stay.
pub fn visible(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden =
            (c.is_control() && c != '\n' && c != '\t') || crate::text::is_invisible_format(c);
        if hidden {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`visible`], then [`escape`]: how every stranger's text goes onto a page.
pub fn text(s: &str) -> String {
    escape(&visible(s))
}

/// A link target, if `url` is one a page may carry: `http://` or `https://` only (never `javascript:`,
/// `data:`…), without whitespace or control characters.
pub fn safe_url(url: &str) -> Option<&str> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let ok = (lower.starts_with("https://") || lower.starts_with("http://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(url)
}

/// The origin (`scheme://host[:port]`) of an http(s) URL.
pub fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => url[..after_scheme + i].to_owned(),
        None => url.to_owned(),
    }
}

/// The headers every dashboard answer carries: not cached, script only from this service (no inline
/// script), no framing, no sniffing, no `Referer` to other sites (same-origin: a browser sends no `Origin` on a form post under no-referrer).
pub fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

/// Who a page is shown to, for its header.
pub struct Viewer<'a> {
    pub login: &'a str,
    pub admin: bool,
    /// The session's CSRF token (for the sign-out form); none for a bearer token.
    pub csrf: Option<&'a str>,
}

/// A whole page: `title` (escaped here), `body` (already HTML), and the navigation when someone is signed
/// in.
pub fn page(status: StatusCode, title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> Response {
    let nav = match viewer {
        Some(v) => {
            let out = match v.csrf {
                Some(csrf) => format!(
                    "<form method=\"post\" action=\"/auth/logout\" class=\"inline\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button type=\"submit\" id=\"sign-out\">Sign out</button></form>",
                    escape(csrf)
                ),
                None => String::new(),
            };
            format!(
                "<nav><a href=\"/\"><strong>nightshift</strong></a> <a href=\"/\">Jobs</a> \
                 <a href=\"/deliveries\">Deliveries</a> <a href=\"/triggers\">Triggers</a> \
                 <a href=\"/budgets\">Budgets</a> <span class=\"who\" id=\"who\">{login}{role}</span> {out}</nav>",
                login = escape(v.login),
                role = if v.admin { " (admin)" } else { "" },
            )
        }
        None => "<nav><strong>nightshift</strong></nav>".to_owned(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title} · nightshift</title>\
         <link rel=\"stylesheet\" href=\"/static/dashboard.css\">\
         <script src=\"/static/dashboard.js\" defer></script></head>\
         <body>{nav}<main><h1>{title}</h1>\n{body}\n</main></body></html>\n",
        title = escape(title),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_becomes_inert_text() {
        assert_eq!(
            text("<script>alert(1)</script></textarea>\"'&"),
            "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/textarea&gt;&quot;&#39;&amp;"
        );
        assert_eq!(text("\u{1b}[31mred\r"), "\\u{1b}[31mred\\u{d}");
        assert_eq!(text("a\u{202e}b\tc"), "a\\u{202e}b\tc");
    }

    #[test]
    fn only_http_links() {
        assert!(safe_url("https://github.com/o/r/pull/1").is_some());
        assert!(safe_url("HTTP://x").is_some());
        assert!(safe_url("javascript:alert(1)").is_none());
        assert!(safe_url("data:text/html,x").is_none());
        assert!(safe_url("https://x/\n").is_none());
        assert_eq!(
            origin("https://h.example:8443/a/b"),
            "https://h.example:8443"
        );
    }
}
