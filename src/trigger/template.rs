//! Prompt templates: minijinja with undefined values as errors, so a typo in `{{ event.isue.title }}` is
//! reported instead of silently rendering nothing.

use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, Value};

use crate::source::event::Event;

/// The template environment every trigger renders with.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default syntax with trailing newlines kept is valid");
    env.set_syntax(syntax);
    env
}

/// The context a template sees: `event` (the webhook payload) and `repo` (`owner/name`).
pub fn context(event: &Event) -> Value {
    let repo = event
        .repository
        .as_ref()
        .map(|r| r.full_name.to_string())
        .unwrap_or_default();
    minijinja::context! {
        event => Value::from(Serde(&event.payload)),
        repo => repo,
    }
}

/// Checks that `source` compiles; on error returns (line within the template, message).
pub fn check(env: &Environment<'static>, source: &str) -> Result<(), (usize, String)> {
    env.template_from_str(source)
        .map(|_| ())
        .map_err(|e| (e.line().unwrap_or(1), describe(&e)))
}

/// Renders `source` against `ctx`.
pub fn render(env: &Environment<'static>, source: &str, ctx: &Value) -> Result<String, String> {
    env.render_str(source, ctx).map_err(|e| describe(&e))
}

fn describe(e: &minijinja::Error) -> String {
    let mut text = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}
