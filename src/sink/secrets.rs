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
//! meaning (`\b`, `\w`, `\d`, `\s` are ASCII in Go). Every rule must compile: a test fails otherwise. Each
//! rule compiles once per process, on first use ([`warm`] compiles them all; `serve` does not call it: all
//! of them hold about 15 MB).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

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
    DETECTOR.compile_all().unwrap_or_else(|errors| {
        panic!(
            "gitleaks' rules do not compile (the tests say which):\n{}",
            errors.join("\n")
        )
    });
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
    keyed: bool,
    secret_group: usize,
    entropy: f64,
    raw: RawRule,
    /// Compiled on first use (or by [`warm`]): a process that scans only short bodies compiles only the
    /// rules their keywords select.
    compiled: OnceLock<Compiled>,
}

struct Compiled {
    regex: Option<Regex>,
    /// The pattern has capture groups of its own (beyond the whole match).
    groups: bool,
    path: Option<Regex>,
    allowlists: Vec<Allowlist>,
}

impl Rule {
    fn compile(&self) -> Result<Compiled, Vec<String>> {
        let mut errors = Vec::new();
        let id = self.id;
        let regex = self
            .raw
            .regex
            .as_deref()
            .and_then(|p| compile_one(p, &format!("rule {id}"), &mut errors));
        let groups = regex.as_ref().map_or(0, |re| {
            re.group_info().group_len(regex_automata::PatternID::ZERO)
        });
        if regex.is_some() && self.secret_group > 0 && self.secret_group >= groups {
            errors.push(format!(
                "rule {id}: secretGroup {} but the regex has fewer groups",
                self.secret_group
            ));
        }
        let compiled = Compiled {
            regex,
            groups: groups >= 2,
            path: self
                .raw
                .path
                .as_deref()
                .and_then(|p| compile_one(p, &format!("rule {id} path"), &mut errors)),
            allowlists: self
                .raw
                .allowlists
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    compile_allowlist(a, &format!("rule {id} allowlist {i}"), &mut errors)
                })
                .collect(),
        };
        if errors.is_empty() {
            Ok(compiled)
        } else {
            Err(errors)
        }
    }

    fn compiled(&self) -> &Compiled {
        self.compiled.get_or_init(|| {
            self.compile().unwrap_or_else(|errors| {
                panic!(
                    "a gitleaks rule does not compile (the tests say which):\n{}",
                    errors.join("\n")
                )
            })
        })
    }
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
            let id: &'static str = Box::leak(r.id.clone().into_boxed_str());
            if r.regex.is_none() && r.path.is_none() {
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
                description: Box::leak(r.description.clone().into_boxed_str()),
                keyed: !r.keywords.is_empty(),
                secret_group: r.secret_group,
                entropy: r.entropy,
                raw: r,
                compiled: OnceLock::new(),
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

    /// Compiles every rule not compiled yet; every failure, not only the first.
    fn compile_all(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for rule in &self.rules {
            if rule.compiled.get().is_none() {
                match rule.compile() {
                    Ok(compiled) => {
                        let _ = rule.compiled.set(compiled);
                    }
                    Err(e) => errors.extend(e),
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
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
        let compiled = rule.compiled();
        if let Some(path) = path
            && path_allowed(&compiled.allowlists, path)
        {
            return None;
        }
        if let Some(rule_path) = &compiled.path {
            let on_path = path.is_some_and(|p| rule_path.is_match(p));
            if compiled.regex.is_none() {
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
        let regex = compiled.regex.as_ref()?;
        let mut lines = Lines::new(text);
        let mut caps = regex.create_captures();
        for m in regex.find_iter(text) {
            work.matches += 1;
            let matched = &text[m.range()];
            let trimmed = matched.trim_matches('\n');
            let mut secret = trimmed;
            if compiled.groups {
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
                || finding_allowed(&compiled.allowlists, &seen, &mut line_text)
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
            .and_then(|d| d.compile_all().map(|()| d))
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
            .filter(|r| r.compiled().regex.is_none())
            .map(|r| r.id)
            .collect();
        assert_eq!(pathless, ["pkcs12-file"]);
    }

    /// Characters from `alphabet`, deterministic and well mixed (an xorshift), so a fake token has the
    /// entropy of a real one. Tokens are built at run time so no scanner flags this file.
    fn random(alphabet: &str, len: usize, mut seed: u64) -> String {
        let chars: Vec<char> = alphabet.chars().collect();
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chars[(seed % chars.len() as u64) as usize]
            })
            .collect()
    }

    const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    fn rule(text: &str) -> Option<&'static str> {
        find(text).map(|f| f.rule_id)
    }

    #[test]
    fn real_formats_of_fake_tokens_are_found_by_their_rule() {
        let pem = format!(
            "-----BEGIN RSA {}-----\n{}\n{}\n-----END RSA PRIVATE KEY-----\n",
            "PRIVATE KEY",
            random(ALNUM, 64, 1),
            random(ALNUM, 64, 2)
        );
        let cases = [
            (
                format!("token: gh{}_{}", "p", random(ALNUM, 36, 3)),
                "github-pat",
            ),
            (
                format!(
                    "github_{}_{}",
                    "pat",
                    random(&(ALNUM.to_owned() + "_"), 82, 4)
                ),
                "github-fine-grained-pat",
            ),
            (
                format!(
                    "aws_access_key_id = AK{}{}",
                    "IA",
                    random("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 5)
                ),
                "aws-access-token",
            ),
            (
                format!("aws_secret_access_key = \"{}\"", random(ALNUM, 40, 6)),
                "generic-api-key",
            ),
            (
                format!(
                    "SLACK=xox{}-{}-{}-{}",
                    "b",
                    random("0123456789", 12, 7),
                    random("0123456789", 13, 8),
                    random(ALNUM, 24, 9)
                ),
                "slack-bot-token",
            ),
            (pem, "private-key"),
            (
                format!(
                    "OPENAI_API_KEY=sk-{}-{}T3Blbk{}{}",
                    "proj",
                    random(ALNUM, 74, 10),
                    "FJ",
                    random(ALNUM, 74, 11)
                ),
                "openai-api-key",
            ),
            (
                format!("key: sk-{}-api03-{}AA", "ant", random(ALNUM, 93, 12)),
                "anthropic-api-key",
            ),
        ];
        for (text, id) in &cases {
            let found = find(text).unwrap_or_else(|| panic!("not found: {text}"));
            assert_eq!(found.rule_id, *id, "{text}");
            assert_eq!(found.line, 1);
            assert!(!found.description.is_empty());
        }
        // An access key with its secret on the next line: the first line is reported.
        let both = format!("{}\n{}", cases[2].0, cases[3].0);
        assert_eq!(
            find(&both).map(|f| (f.rule_id, f.line)),
            Some(("aws-access-token", 1))
        );
        // The line is the one the secret starts on.
        let later = format!("Done.\n\nSee below.\n{}\n", cases[0].0);
        assert_eq!(find(&later).map(|f| f.line), Some(4));
    }

    #[test]
    fn gitleaks_allowlisted_examples_and_ordinary_text_are_not_found() {
        let image = {
            use base64::Engine as _;
            let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
            let mut seed = 42u64;
            for _ in 0..3000 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            format!(
                "![diagram](data:image/png;base64,{})",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        };
        for text in [
            // gitleaks' own allowlists: AWS's documentation key, Google's published keys, template variables like ${PASSWORD}.
            &format!("aws_access_key_id = AKIA{}", "IOSFODNN7EXAMPLE"),
            &format!(
                "const key = \"AIza{}\";",
                "Syabcdefghijklmnopqrstuvwxyz1234567"
            ),
            "password = \"${PASSWORD}\"",
            "token: ${{ secrets.GITHUB_TOKEN }}",
            "api_key = os.environ[\"API_KEY\"]",
            "secret: {{ .Values.secret }}",
            // Ordinary prose and code.
            "Fixed in 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39 (see #12).",
            "request id 123e4567-e89b-12d3-a456-426614174000 failed",
            "The access token is read from the environment; never commit it.",
            "fn authenticate(token: &str) -> Result<User, AuthError> {",
            "let key = cache_key(&request.path, request.user_id);",
            "Set `API_KEY=your-api-key-here` in `.env`; `auth_token: str` is unused.",
            "Authorization: Bearer ${GITHUB_TOKEN}",
            "sha256: e163e53b9e7e8a8511e77271e2b323ed057759542a6d988258afe3a1fa329caf",
            "\"integrity\": \"sha512-pV8M7L9GY23AybNvTmo2nyjmpmnt6+2sRE/tqr0ZLQcPS4lnw7u5eZGNmwRNkBC3D7gZXbFx5AHzLUVRBXGDhg==\"",
            &image,
        ] {
            assert_eq!(find(text), None, "{text}");
        }
    }

    #[test]
    fn a_gitleaks_allow_comment_does_not_hide_a_token() {
        // gitleaks skips a line holding `gitleaks:allow`; an agent could append it anywhere.
        let line = format!(
            "t = \"gh{}_{}\" # gitleaks:allow",
            "p",
            random(ALNUM, 36, 20)
        );
        assert_eq!(rule(&line), Some("github-pat"));
    }

    #[test]
    fn go_semantics_survive_translation() {
        // `\b` is ASCII in Go: a letter outside ASCII before the key is a word boundary there too.
        let key = format!(
            "AK{}{}",
            "IA",
            random("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 21)
        );
        assert_eq!(rule(&format!("é{key}")), Some("aws-access-token"));
        // `\d` is ASCII in Go: Arabic-Indic digits do not make a Slack token.
        assert_eq!(
            rule(&format!("xox{}-١٢٣٤٥٦٧٨٩٠١-١٢٣٤٥٦٧٨٩٠١-abc", "b")),
            None
        );
        // Go lowercases KELVIN SIGN to `k`: it still selects the rules keyed on "key".
        let kelvin = format!("api_\u{212A}ey = \"{}\"", random(ALNUM, 32, 22));
        assert_eq!(rule(&kelvin), Some("generic-api-key"));

        assert_eq!(
            translate(r"\bx\w[\w.-]\d\s\S").unwrap(),
            r"(?-u:\b)x[0-9A-Za-z_][0-9A-Za-z_.-][0-9][\t\n\f\r ][^\t\n\f\r ]"
        );
        assert_eq!(translate(r"[\S]").unwrap(), r"[[^\t\n\f\r ]]");
        assert_eq!(
            translate(r"^\${{x}}a{2,3}b{,2}").unwrap(),
            r"^\$\{\{x}}a{2,3}b\{,2}"
        );
        assert_eq!(translate(r"[[:alnum:][]]").unwrap(), r"[[:alnum:]\[]]");
        assert_eq!(translate(r"[]a]").unwrap(), r"[\]a]");
        for unsupported in [r"[a&&b]", r"[a--b]", r"\Qx\E", r"[\b]", "[a", r"a\"] {
            assert!(translate(unsupported).is_err(), "{unsupported}");
        }
    }

    #[test]
    fn a_rule_that_does_not_compile_or_an_unknown_field_is_an_error_not_a_skip() {
        let set = |rule: serde_json::Value| {
            serde_json::json!({
                "_source": {},
                "allowlist": {"condition": "OR", "regexTarget": "secret", "regexes": [],
                              "stopwords": [], "paths": [], "commits": []},
                "rules": [rule],
            })
            .to_string()
        };
        let rule = |regex: &str| {
            serde_json::json!({"id": "broken", "description": "d", "regex": regex, "secretGroup": 0,
                               "entropy": 0.0, "keywords": [], "path": null, "allowlists": []})
        };
        let errors = Detector::compile(&set(rule("a(b")))
            .and_then(|d| d.compile_all())
            .unwrap_err();
        assert!(errors[0].starts_with("rule broken:"), "{errors:?}");
        let errors = Detector::compile(&set(rule("[a&&b]")))
            .and_then(|d| d.compile_all())
            .unwrap_err();
        assert!(errors[0].contains("in a class"), "{errors:?}");
        let mut newer = rule("x");
        newer["required"] = serde_json::json!([{"id": "other"}]);
        assert!(Detector::compile(&set(newer)).is_err());
    }

    #[test]
    fn entropy_is_computed_as_gitleaks_does() {
        assert_eq!(shannon_entropy(""), 0.0);
        assert_eq!(shannon_entropy("aaaa"), 0.0);
        assert_eq!(shannon_entropy("abab"), 1.0);
        assert_eq!(shannon_entropy("abcd"), 2.0);
        // Characters counted, frequencies over bytes: "éé" is 4 bytes of one character.
        assert_eq!(shannon_entropy("éé"), 0.5);
    }

    #[test]
    fn files_get_path_rules_path_allowlists_and_their_own_line_numbers() {
        // A key block over several added lines, found at the file's line where it starts.
        let lines: Vec<(u64, String)> = [
            "# config".to_owned(),
            format!("-----BEGIN EC {}-----", "PRIVATE KEY"),
            random(ALNUM, 64, 30),
            random(ALNUM, 12, 31),
            "-----END EC PRIVATE KEY-----".to_owned(),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, l)| (40 + i as u64, l))
        .collect();
        let found = find_in_file("deploy/key.pem", &lines).unwrap();
        assert_eq!((found.rule_id, found.line), ("private-key", 41));

        // A rule with a path runs only on its files (and never on a body).
        let tf = vec![(
            3,
            "administrator_login_password = \"Xk9mP2vQ7rL4\"".to_owned(),
        )];
        assert_eq!(
            find_in_file("infra/main.tf", &tf).map(|f| f.rule_id),
            Some("hashicorp-tf-password")
        );
        // Elsewhere only the generic rule sees it.
        assert_eq!(
            find_in_file("notes/main.txt", &tf).map(|f| f.rule_id),
            Some("generic-api-key")
        );
        assert_eq!(find(&tf[0].1).map(|f| f.rule_id), Some("generic-api-key"));

        // A path-only rule finds the file itself, binary or not.
        let p12 = find_in_file("certs/Signing.P12", &[]).unwrap();
        assert_eq!((p12.rule_id, p12.line), ("pkcs12-file", 0));

        // gitleaks' global path allowlist (lock files, vendored trees, images) applies to a commit's
        // paths, as in gitleaks: a token there is not found. (A hostile agent can choose its path;
        // docs/security.md says what the detector is for.)
        let token = vec![(1, format!("gh{}_{}", "p", random(ALNUM, 36, 32)))];
        assert_eq!(
            find_in_file("src/a.rs", &token).map(|f| (f.rule_id, f.line)),
            Some(("github-pat", 1))
        );
        assert_eq!(find_in_file("web/package-lock.json", &token), None);
        assert_eq!(find_in_file("node_modules/x/index.js", &token), None);
    }

    /// Every keyword of every rule, over and over, on one line of `len` bytes.
    fn every_keyword(len: usize) -> String {
        let raw: RawSet = serde_json::from_str(RULES_JSON).unwrap();
        let unit: String = raw
            .rules
            .iter()
            .flat_map(|r| r.keywords.iter())
            .map(|k| format!("{k}= "))
            .collect();
        let mut all = unit.repeat(len / unit.len());
        all.push_str(&unit[..len - all.len()]);
        all
    }

    #[test]
    fn hostile_input_stays_linear_every_rule_at_most_one_pass() {
        let detector = &*DETECTOR;
        // Every keyword on one line: every rule is selected, and runs once over the text (gitleaks'
        // worst case too: the cost is rules × bytes, never more).
        let all = every_keyword(1_000_000);
        let mut work = Work::default();
        assert_eq!(detector.scan_counting(&all, None, &mut work), None);
        assert_eq!(work.rules_run, detector.rules.len());
        println!("every keyword over 1 MB: {work:?}");

        // 10 MB on one line of near-misses: a candidate at every token that fails late; only the rules
        // its keyword selects run.
        let near = format!("gh{}_{} ", "p", "a".repeat(35)).repeat(250_000);
        assert!(near.len() >= 10_000_000);
        let mut work = Work::default();
        assert_eq!(detector.scan_counting(&near, None, &mut work), None);
        assert_eq!(work.matches, 0);
        assert!(work.rules_run <= 2, "{work:?}");

        // Many matches that allowlists drop, each examined once: AWS's example key, 100,000 times.
        let examples = format!("AKIA{} ", "IOSFODNN7EXAMPLE").repeat(100_000);
        let mut work = Work::default();
        assert_eq!(detector.scan_counting(&examples, None, &mut work), None);
        assert_eq!(work.matches, 100_000);
    }

    /// The figures for docs and the report: `cargo nextest run --lib sink::secrets::tests::measure
    /// --run-ignored only --no-capture` (in release for real figures).
    #[test]
    #[ignore = "a measurement, not a test"]
    fn measure_compiling_and_scanning_a_1_mb_body() {
        let started = std::time::Instant::now();
        warm();
        println!("compile: {:?}", started.elapsed());
        let prose = "The build failed because the cache key was computed before the lockfile \
                     changed; this fixes it by hashing the lockfile. No token or password is involved.\n";
        let body = prose.repeat(1_000_000 / prose.len());
        for (what, text) in [("prose", body), ("every keyword", every_keyword(1_000_000))] {
            let started = std::time::Instant::now();
            let mut work = Work::default();
            let found = DETECTOR.scan_counting(&text, None, &mut work);
            println!(
                "{what}, {} bytes: {:?} ({work:?}, found {:?})",
                text.len(),
                started.elapsed(),
                found.map(|f| f.rule_id)
            );
        }
    }
}
