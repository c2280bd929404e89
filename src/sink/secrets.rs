//! Secrets in what nightshift would post, found with gitleaks' rule set.
//!
//! The rules are gitleaks' own default configuration (`config/gitleaks.toml` of gitleaks v8.30.1, 222
//! rules with keywords, entropy thresholds and allowlists), vendored under `src/sink/secrets/` with its
//! license and provenance and converted to JSON by a committed script; see `secrets/SOURCE.md`. This module
//! is a reimplementation of gitleaks' detection over those rules, step for step (`detect/detect.go`):
//!
//! 1. a file whose path the global allowlist names (lock files, images, `node_modules/`, ...) is skipped;
//! 2. keywords prefilter the rules, case-insensitively, with one Aho-Corasick automaton; a rule runs only
//!    when one of its keywords is in the text (or it has none);
//! 3. a rule with a `path` runs only on a file whose path matches (never on a body); a rule with only a
//!    `path` finds the file itself (`*.p12`);
//! 4. each match's secret is its `secretGroup` (or first non-empty group), re-matched on the match's text
//!    as gitleaks does; a rule's `entropy` must be exceeded (Shannon, computed as gitleaks computes it);
//! 5. the global and the rule's allowlists (regexes on the secret, the match or the line; stopwords; paths;
//!    `AND`/`OR`) drop what they allow.
//!
//! Two departures, both for hostile input: gitleaks' `gitleaks:allow` comment is **not** honoured (an agent
//! could append it to any line), and invisible characters (zero-width spaces, soft hyphens, bidi controls)
//! are taken out before scanning, so a token split by them is still found. gitleaks' decoding passes
//! (base64, hex, percent-encoding) are not done.
//!
//! Patterns are RE2 syntax; they compile to `regex-automata` automata (no backtracking: linear in the
//! input), after [`translate`] gives the few constructs whose meaning differs in Rust's syntax their Go
//! meaning (`\b`, `\w`, `\d`, `\s` are ASCII in Go). Every rule must compile: a test fails otherwise, and
//! the detector is compiled once per process ([`warm`] at `serve` start).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use serde::Deserialize;

/// gitleaks' rule set, converted from `secrets/gitleaks.toml` by `secrets/convert.py`.
const RULES_JSON: &str = include_str!("secrets/rules.json");

/// The gitleaks release the rules come from.
pub const GITLEAKS_VERSION: &str = "v8.30.1";

/// What was found: which rule, and where. Never the secret itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finding {
    /// gitleaks' rule id (`github-pat`, `aws-access-token`, `generic-api-key`, ...).
    pub rule_id: &'static str,
    /// gitleaks' description of the rule, a sentence.
    pub description: &'static str,
    /// 1-based: the line of the text (for [`find`]) or of the file (for [`find_in_file`]) the match
    /// starts on; 0 when a rule finds the file itself by its path (a `.p12` key store).
    pub line: usize,
}

/// The first secret in `text` (a body nightshift would post): the finding on the lowest line, a specific
/// rule before gitleaks' generic one on the same line. Linear in `text` (times the rules its keywords
/// select).
pub fn find(text: &str) -> Option<Finding> {
    let text = visible(text);
    DETECTOR.scan(&text, None, &|line| line)
}

/// The first secret in the lines a commit adds to `path` (`(line number in the new file, text)`, in
/// order): the lines are scanned as one text, as gitleaks scans a diff, so a key block spanning lines is
/// found, and the finding's line is the file's. Path rules and path allowlists apply.
pub fn find_in_file(path: &str, added_lines: &[(u64, String)]) -> Option<Finding> {
    let mut text = String::new();
    for (i, (_, line)) in added_lines.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(&visible(line));
    }
    DETECTOR.scan(&text, Some(path), &|line| {
        added_lines
            .get(line.wrapping_sub(1))
            .map_or(line, |(n, _)| usize::try_from(*n).unwrap_or(usize::MAX))
    })
}

/// Compiles the rules now (once per process), so the first job does not wait for it.
pub fn warm() {
    LazyLock::force(&DETECTOR);
}

/// How many rules are in force.
pub fn rule_count() -> usize {
    DETECTOR.rules.len()
}

static DETECTOR: LazyLock<Detector> = LazyLock::new(|| {
    Detector::compile(RULES_JSON).unwrap_or_else(|errors| {
        panic!(
            "gitleaks' rules do not compile (the tests say which):\n{}",
            errors.join("\n")
        )
    })
});

/// Characters that render as nothing: a token split by them still reads (and copies) as the token.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn visible(text: &str) -> Cow<'_, str> {
    if text.chars().any(invisible) {
        text.chars()
            .filter(|c| !invisible(*c))
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

// The JSON `convert.py` writes. Unknown fields are refused: a feature of a newer rule set is never ignored.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSet {
    #[serde(rename = "_source")]
    _source: serde_json::Value,
    allowlist: RawAllowlist,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    id: String,
    description: String,
    regex: Option<String>,
    secret_group: usize,
    entropy: f64,
    keywords: Vec<String>,
    path: Option<String>,
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAllowlist {
    condition: String,
    regex_target: String,
    regexes: Vec<String>,
    stopwords: Vec<String>,
    paths: Vec<String>,
    commits: Vec<String>,
}

struct Rule {
    id: &'static str,
    description: &'static str,
    regex: Option<Regex>,
    /// The pattern has capture groups of its own (beyond the whole match).
    groups: bool,
    secret_group: usize,
    entropy: f64,
    keyed: bool,
    path: Option<Regex>,
    allowlists: Vec<Allowlist>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Secret,
    Match,
    Line,
}

struct Allowlist {
    all: bool,
    target: Target,
    regexes: Option<Regex>,
    stopwords: Option<AhoCorasick>,
    paths: Option<Regex>,
    /// Commit allowlists never allow here: what is checked is not a commit yet.
    commits: bool,
}

struct Detector {
    rules: Vec<Rule>,
    global: Allowlist,
    keywords: AhoCorasick,
    /// For each keyword (by pattern id), the rules it selects.
    keyword_rules: Vec<Vec<usize>>,
}

/// The work one scan did, for the tests that show hostile input stays linear.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Rules whose keywords selected them (each is one pass over the text).
    pub rules_run: usize,
    /// Regex matches examined (secret group, entropy, allowlists).
    pub matches: usize,
}

impl Detector {
    fn compile(json: &str) -> Result<Detector, Vec<String>> {
        let raw: RawSet = serde_json::from_str(json).map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        let global = compile_allowlist(&raw.allowlist, "the global allowlist", &mut errors);
        let mut rules = Vec::with_capacity(raw.rules.len());
        let mut by_keyword: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, r) in raw.rules.into_iter().enumerate() {
            let id: &'static str = Box::leak(r.id.into_boxed_str());
            let regex = r
                .regex
                .as_deref()
                .and_then(|p| compile_one(p, &format!("rule {id}"), &mut errors));
            let groups = regex
                .as_ref()
                .is_some_and(|re| re.group_info().group_len(regex_automata::PatternID::ZERO) >= 2);
            if let Some(re) = &regex
                && r.secret_group >= re.group_info().group_len(regex_automata::PatternID::ZERO)
                && r.secret_group > 0
            {
                errors.push(format!(
                    "rule {id}: secretGroup {} but the regex has fewer groups",
                    r.secret_group
                ));
            }
            if regex.is_none() && r.path.is_none() && r.regex.is_none() {
                errors.push(format!("rule {id}: neither a regex nor a path"));
            }
            for keyword in &r.keywords {
                let entry = by_keyword.entry(keyword.to_lowercase()).or_default();
                if entry.last() != Some(&index) {
                    entry.push(index);
                }
            }
            rules.push(Rule {
                id,
                description: Box::leak(r.description.into_boxed_str()),
                regex,
                groups,
                secret_group: r.secret_group,
                entropy: r.entropy,
                keyed: !r.keywords.is_empty(),
                path: r
                    .path
                    .as_deref()
                    .and_then(|p| compile_one(p, &format!("rule {id} path"), &mut errors)),
                allowlists: r
                    .allowlists
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        compile_allowlist(a, &format!("rule {id} allowlist {i}"), &mut errors)
                    })
                    .collect(),
            });
        }
        let mut keywords: Vec<(String, Vec<usize>)> = by_keyword.into_iter().collect();
        keywords.sort();
        let built = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(keywords.iter().map(|(k, _)| k));
        let keywords_ac = match built {
            Ok(ac) => ac,
            Err(e) => {
                errors.push(format!("keywords: {e}"));
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Detector {
            rules,
            global,
            keywords: keywords_ac,
            keyword_rules: keywords.into_iter().map(|(_, r)| r).collect(),
        })
    }

    fn scan(
        &self,
        text: &str,
        path: Option<&str>,
        line_of: &dyn Fn(usize) -> usize,
    ) -> Option<Finding> {
        self.scan_counting(text, path, &mut Work::default())
            .map(|f| Finding {
                line: if f.line == 0 { 0 } else { line_of(f.line) },
                ..f
            })
    }

    fn scan_counting(&self, text: &str, path: Option<&str>, work: &mut Work) -> Option<Finding> {
        if let Some(path) = path
            && path_allowed(std::slice::from_ref(&self.global), path)
        {
            return None;
        }
        let selected = self.selected(text);
        let mut best: Option<(usize, Finding)> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.keyed && !selected[index] {
                continue;
            }
            work.rules_run += 1;
            let Some(found) = self.detect_rule(rule, text, path, work) else {
                continue;
            };
            // The lowest line; on one line, a specific rule before the generic one (gitleaks too drops a
            // generic finding another rule also made); then gitleaks' rule order.
            let key = |f: &Finding, i: usize| (f.line, f.rule_id.contains("generic"), i);
            if best
                .as_ref()
                .is_none_or(|(i, b)| key(&found, index) < key(b, *i))
            {
                best = Some((index, found));
            }
        }
        best.map(|(_, f)| f)
    }

    /// Which rules the keywords in `text` select. gitleaks lowercases the text (Go's `strings.ToLower`)
    /// and looks for the lowercase keywords; the automaton folds ASCII case, and the two characters Go
    /// lowercases to ASCII (KELVIN SIGN to `k`, DOTTED CAPITAL I to `i`) are folded first.
    fn selected(&self, text: &str) -> Vec<bool> {
        let mut selected = vec![false; self.rules.len()];
        let folded: Cow<'_, str> = if text.contains(['\u{212A}', '\u{0130}']) {
            text.replace('\u{212A}', "k")
                .replace('\u{0130}', "i")
                .into()
        } else {
            text.into()
        };
        for m in self.keywords.find_overlapping_iter(folded.as_ref()) {
            for &rule in &self.keyword_rules[m.pattern().as_usize()] {
                selected[rule] = true;
            }
        }
        selected
    }

    fn detect_rule(
        &self,
        rule: &Rule,
        text: &str,
        path: Option<&str>,
        work: &mut Work,
    ) -> Option<Finding> {
        if let Some(path) = path
            && path_allowed(&rule.allowlists, path)
        {
            return None;
        }
        if let Some(rule_path) = &rule.path {
            let on_path = path.is_some_and(|p| rule_path.is_match(p));
            if rule.regex.is_none() {
                return on_path.then_some(Finding {
                    rule_id: rule.id,
                    description: rule.description,
                    line: 0,
                });
            }
            if !on_path {
                return None;
            }
        }
        let regex = rule.regex.as_ref()?;
        let mut lines = Lines::new(text);
        let mut caps = regex.create_captures();
        for m in regex.find_iter(text) {
            work.matches += 1;
            let matched = &text[m.range()];
            let trimmed = matched.trim_matches('\n');
            let mut secret = trimmed;
            if rule.groups {
                regex.captures(trimmed, &mut caps);
                if caps.is_match() {
                    if rule.secret_group > 0 {
                        // A group that took no part is gitleaks' empty string.
                        secret = caps
                            .get_group(rule.secret_group)
                            .map_or("", |span| &trimmed[span.range()]);
                    } else if let Some(span) = (1..caps.group_len())
                        .filter_map(|g| caps.get_group(g))
                        .find(|span| !span.is_empty())
                    {
                        secret = &trimmed[span.range()];
                    }
                }
            }
            if rule.entropy != 0.0 && shannon_entropy(secret) <= rule.entropy {
                continue;
            }
            let line = lines.line_of(m.start());
            let mut current = None;
            let mut line_text = || {
                *current
                    .get_or_insert_with(|| lines.text_around(m.start(), m.start() + trimmed.len()))
            };
            let seen = Seen {
                secret,
                matched: trimmed,
                path,
            };
            if finding_allowed(std::slice::from_ref(&self.global), &seen, &mut line_text)
                || finding_allowed(&rule.allowlists, &seen, &mut line_text)
            {
                continue;
            }
            return Some(Finding {
                rule_id: rule.id,
                description: rule.description,
                line,
            });
        }
        None
    }
}

struct Seen<'a> {
    secret: &'a str,
    matched: &'a str,
    path: Option<&'a str>,
}

/// gitleaks' `checkCommitOrPathAllowed`, for a file's path (bodies have none).
fn path_allowed(allowlists: &[Allowlist], path: &str) -> bool {
    allowlists.iter().any(|a| {
        let on_path = a.paths.as_ref().is_some_and(|p| p.is_match(path));
        if a.all {
            if a.regexes.is_some() || a.stopwords.is_some() {
                return false;
            }
            let mut checks = Vec::new();
            if a.commits {
                checks.push(false);
            }
            if a.paths.is_some() {
                checks.push(on_path);
            }
            checks.into_iter().all(|c| c)
        } else {
            on_path
        }
    })
}

/// gitleaks' `checkFindingAllowed`.
fn finding_allowed<'t>(
    allowlists: &[Allowlist],
    seen: &Seen<'_>,
    line_text: &mut dyn FnMut() -> &'t str,
) -> bool {
    allowlists.iter().any(|a| {
        let mut regex_allowed = || {
            a.regexes.as_ref().is_some_and(|re| {
                let target = match a.target {
                    Target::Secret => seen.secret,
                    Target::Match => seen.matched,
                    Target::Line => line_text(),
                };
                !target.is_empty() && re.is_match(target)
            })
        };
        let stopword = || {
            a.stopwords.as_ref().is_some_and(|ac| {
                !seen.secret.is_empty() && ac.is_match(seen.secret.to_lowercase().as_str())
            })
        };
        if a.all {
            (!a.commits)
                && a.paths
                    .as_ref()
                    .is_none_or(|p| seen.path.is_some_and(|path| p.is_match(path)))
                && (a.regexes.is_none() || regex_allowed())
                && (a.stopwords.is_none() || stopword())
        } else {
            regex_allowed() || stopword()
        }
    })
}

/// gitleaks' `shannonEntropy`, quirk included: characters are counted, but frequencies are over the
/// length in bytes (the same for ASCII).
pub fn shannon_entropy(data: &str) -> f64 {
    if data.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<char, usize> = HashMap::new();
    for c in data.chars() {
        *counts.entry(c).or_default() += 1;
    }
    let inv = 1.0 / data.len() as f64;
    counts
        .values()
        .map(|&n| {
            let freq = n as f64 * inv;
            -freq * freq.log2()
        })
        .sum()
}

/// Line numbers and line texts for matches in increasing order, in one pass over the text however many
/// matches a long line holds.
struct Lines<'a> {
    text: &'a str,
    /// Counted up to `pos`: `line` is the 1-based line of `pos`, starting at `line_start`.
    pos: usize,
    line: usize,
    line_start: usize,
    /// The first newline at or after `searched_from`, if one was looked for.
    next_newline: Option<(usize, usize)>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            text,
            pos: 0,
            line: 1,
            line_start: 0,
            next_newline: None,
        }
    }

    fn line_of(&mut self, at: usize) -> usize {
        if at > self.pos {
            for (i, b) in self.text.as_bytes()[self.pos..at].iter().enumerate() {
                if *b == b'\n' {
                    self.line += 1;
                    self.line_start = self.pos + i + 1;
                }
            }
            self.pos = at;
        }
        self.line
    }

    /// The line(s) holding `start..end` (gitleaks' `Line`).
    fn text_around(&mut self, start: usize, end: usize) -> &'a str {
        self.line_of(start);
        let end = end.max(start);
        let stop = match self.next_newline {
            Some((from, nl)) if from <= end && end <= nl => nl,
            _ => {
                let nl = self.text[end..]
                    .find('\n')
                    .map_or(self.text.len(), |i| end + i);
                self.next_newline = Some((end, nl));
                nl
            }
        };
        &self.text[self.line_start..stop]
    }
}

fn compile_allowlist(raw: &RawAllowlist, what: &str, errors: &mut Vec<String>) -> Allowlist {
    let all = match raw.condition.as_str() {
        "AND" => true,
        "OR" => false,
        other => {
            errors.push(format!("{what}: condition {other:?}"));
            false
        }
    };
    let target = match raw.regex_target.as_str() {
        "secret" => Target::Secret,
        "match" => Target::Match,
        "line" => Target::Line,
        other => {
            errors.push(format!("{what}: regexTarget {other:?}"));
            Target::Secret
        }
    };
    let many = |patterns: &[String], which: &str, errors: &mut Vec<String>| {
        if patterns.is_empty() {
            return None;
        }
        let mut translated = Vec::new();
        for p in patterns {
            match translate(p) {
                Ok(t) => translated.push(t),
                Err(e) => errors.push(format!("{what} {which} {p:?}: {e}")),
            }
        }
        builder()
            .build_many(&translated)
            .map_err(|e| errors.push(format!("{what} {which}: {e}")))
            .ok()
    };
    let stopwords = if raw.stopwords.is_empty() {
        None
    } else {
        AhoCorasick::new(&raw.stopwords)
            .map_err(|e| errors.push(format!("{what} stopwords: {e}")))
            .ok()
    };
    Allowlist {
        all,
        target,
        regexes: many(&raw.regexes, "regexes", errors),
        stopwords,
        paths: many(&raw.paths, "paths", errors),
        commits: !raw.commits.is_empty(),
    }
}

fn builder() -> meta::Builder {
    let mut b = Regex::builder();
    b.syntax(syntax::Config::new())
        // A few rules are large once Unicode (`(?i)`, `.`) is spelled out; the default 10 MB limit on the
        // compiled program is not a safety limit here (the patterns are ours, not the input's).
        .configure(meta::Config::new().nfa_size_limit(Some(64 << 20)));
    b
}

fn compile_one(pattern: &str, what: &str, errors: &mut Vec<String>) -> Option<Regex> {
    let translated = translate(pattern)
        .map_err(|e| errors.push(format!("{what}: {e}: {pattern:?}")))
        .ok()?;
    builder()
        .build(&translated)
        .map_err(|e| errors.push(format!("{what}: {e}")))
        .ok()
}

/// Whether what follows a `{` makes it a repetition in Go: digits, optionally `,` and optionally digits, `}`.
fn is_repetition(mut rest: impl Iterator<Item = char>) -> bool {
    let mut digits = 0;
    let mut comma = false;
    for c in rest.by_ref() {
        match c {
            '0'..='9' => digits += 1,
            ',' if !comma && digits > 0 => comma = true,
            '}' => return digits > 0,
            _ => return false,
        }
    }
    false
}

/// An RE2 (Go `regexp`) pattern in Rust `regex` syntax with the same meaning. The two agree but for:
/// `\b \B \w \W \d \D \s \S` are ASCII in Go (Unicode in Rust); inside a class, `[` is a literal in Go and
/// a nested class in Rust, and `&&`, `--`, `~~` are set operations in Rust only. A construct this does not
/// handle is an error, never a silent change of meaning.
pub fn translate(go: &str) -> Result<String, String> {
    const WORD: &str = "0-9A-Za-z_";
    const SPACE: &str = r"\t\n\f\r ";
    let mut out = String::with_capacity(go.len() + 16);
    let mut chars = go.chars().peekable();
    // Inside a class: how many characters of it were written (a `]` first is a literal).
    let mut class: Option<usize> = None;
    while let Some(c) = chars.next() {
        match (c, class) {
            ('\\', _) => {
                let Some(e) = chars.next() else {
                    return Err("a trailing backslash".into());
                };
                let inside = class.is_some();
                let replacement = match e {
                    'b' | 'B' if inside => return Err(format!("\\{e} in a class")),
                    'b' => "(?-u:\\b)".to_owned(),
                    'B' => "(?-u:\\B)".to_owned(),
                    'w' | 'd' | 's' | 'W' | 'D' | 'S' => {
                        let set = match e.to_ascii_lowercase() {
                            'w' => WORD,
                            'd' => "0-9",
                            _ => SPACE,
                        };
                        match (inside, e.is_ascii_uppercase()) {
                            (true, false) => set.to_owned(),
                            (true, true) | (false, true) => format!("[^{set}]"),
                            (false, false) => format!("[{set}]"),
                        }
                    }
                    'Q' => return Err("\\Q quoting".into()),
                    other => format!("\\{other}"),
                };
                out.push_str(&replacement);
                if let Some(n) = class.as_mut() {
                    *n += 1;
                }
            }
            ('[', None) => {
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().expect("peeked"));
                }
                class = Some(0);
            }
            ('[', Some(n)) => {
                if chars.peek() == Some(&':') {
                    // A POSIX class, `[:alnum:]`, the same in both.
                    out.push('[');
                    loop {
                        let Some(p) = chars.next() else {
                            return Err("an unclosed [: class".into());
                        };
                        out.push(p);
                        if p == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str("\\[");
                }
                class = Some(n + 1);
            }
            (']', Some(0)) => {
                out.push_str("\\]");
                class = Some(1);
            }
            (']', Some(_)) => {
                out.push(']');
                class = None;
            }
            ('&' | '~' | '-', Some(_)) if chars.peek() == Some(&c) => {
                return Err(format!("`{c}{c}` in a class"));
            }
            (_, Some(n)) => {
                out.push(c);
                class = Some(n + 1);
            }
            ('{', None) if !is_repetition(chars.clone()) => {
                // Go reads a `{` that does not open `{n}`, `{n,}` or `{n,m}` as a literal (`{{ var }}`,
                // `{,n}`); Rust refuses it or reads `{,n}` as a repetition.
                out.push_str("\\{");
            }
            (_, None) => out.push(c),
        }
    }
    if class.is_some() {
        return Err("an unclosed class".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule and allowlist compiles; a rule that does not is this test's failure, never a skip.
    /// Prints the time to compile them all (no assertion on it).
    #[test]
    fn every_gitleaks_rule_compiles_and_the_time_it_takes_is_shown() {
        let started = std::time::Instant::now();
        let detector = Detector::compile(RULES_JSON)
            .unwrap_or_else(|errors| panic!("{} failures:\n{}", errors.len(), errors.join("\n")));
        let took = started.elapsed();
        println!(
            "compiled {} gitleaks {GITLEAKS_VERSION} rules in {took:?}",
            detector.rules.len()
        );
        assert_eq!(detector.rules.len(), 222);
        let raw: RawSet = serde_json::from_str(RULES_JSON).unwrap();
        assert_eq!(
            raw._source["sha256"],
            "e163e53b9e7e8a8511e77271e2b323ed057759542a6d988258afe3a1fa329caf"
        );
        // Every rule that has a regex has it compiled; the one path-only rule has none.
        let pathless: Vec<_> = detector
            .rules
            .iter()
            .filter(|r| r.regex.is_none())
            .map(|r| r.id)
            .collect();
        assert_eq!(pathless, ["pkcs12-file"]);
    }
}
