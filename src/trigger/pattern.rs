//! GitHub's filter patterns for branches, tags and paths, as its cheat sheet defines them (not plain glob):
//! `*` any characters but `/`, `**` any characters, `?` zero or one of the preceding character, `+` one or
//! more of it, `[...]` one character of a set, `\` escapes, and a leading `!` negates. In a list, the last
//! matching pattern wins.
//!
//! Patterns can come from a repository's own triggers, so matching must not be exponential: each pattern
//! is compiled to a regular expression for `regex-automata`, whose engines match in time linear in the
//! text (times the pattern's size), never by backtracking.

use std::fmt;

use regex_automata::meta::Regex;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Atom {
    Char(char),
    Class(Vec<(char, char)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    One(Atom),
    ZeroOrOne(Atom),
    OneOrMore(Atom),
    /// `*`: any run of characters without `/`.
    Star,
    /// `**`: any run of characters.
    DoubleStar,
    /// `**/`: nothing, or any run of characters that ends with `/` (so `**/a` matches `a` at the root).
    AnyDirs,
}

/// One compiled pattern (without its `!`).
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    negated: bool,
    tokens: Vec<Token>,
    regex: Regex,
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// The regular expression of a class atom or a character.
fn atom_regex(atom: &Atom, out: &mut String) {
    match atom {
        Atom::Char(c) => out.push_str(&regex_escape(*c)),
        Atom::Class(ranges) => {
            out.push('[');
            for (lo, hi) in ranges {
                out.push_str(&regex_escape(*lo));
                if lo != hi {
                    out.push('-');
                    out.push_str(&regex_escape(*hi));
                }
            }
            out.push(']');
        }
    }
}

fn regex_escape(c: char) -> String {
    if c.is_alphanumeric() || c == '/' {
        c.to_string()
    } else {
        // A code point escape is a literal whatever the character means to the regex syntax.
        format!("\\x{{{:X}}}", c as u32)
    }
}

/// The whole-text regular expression of a token list.
fn to_regex(tokens: &[Token]) -> String {
    let mut out = String::from("(?s)\\A(?:");
    for token in tokens {
        match token {
            Token::One(atom) => atom_regex(atom, &mut out),
            Token::ZeroOrOne(atom) => {
                out.push_str("(?:");
                atom_regex(atom, &mut out);
                out.push_str(")?");
            }
            Token::OneOrMore(atom) => {
                out.push_str("(?:");
                atom_regex(atom, &mut out);
                out.push_str(")+");
            }
            Token::Star => out.push_str("[^/]*"),
            Token::DoubleStar => out.push_str(".*"),
            Token::AnyDirs => out.push_str("(?:.*/)?"),
        }
    }
    out.push_str(")\\z");
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Pattern {
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        let err = |message: String, hint: Option<&str>| PatternError {
            message,
            hint: hint.map(str::to_owned),
        };
        let (negated, body) = match source.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, source),
        };
        if body.is_empty() {
            return Err(err(
                format!("empty pattern `{source}`"),
                Some("write a branch name or a pattern such as `main` or `release/**`"),
            ));
        }
        let chars: Vec<char> = body.chars().collect();
        let mut tokens: Vec<Token> = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    if chars.get(i + 2) == Some(&'/') {
                        tokens.push(Token::AnyDirs);
                        i += 3;
                    } else {
                        tokens.push(Token::DoubleStar);
                        i += 2;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                c @ ('?' | '+') => {
                    let atom = match tokens.pop() {
                        Some(Token::One(atom)) => atom,
                        _ => {
                            return Err(err(
                                format!("`{c}` in `{source}` has no character before it to repeat"),
                                Some(
                                    "`?` and `+` apply to the preceding character; escape it as `\\?` to match it literally",
                                ),
                            ));
                        }
                    };
                    tokens.push(if c == '?' {
                        Token::ZeroOrOne(atom)
                    } else {
                        Token::OneOrMore(atom)
                    });
                    i += 1;
                }
                '[' => {
                    let end = chars[i + 1..]
                        .iter()
                        .position(|&c| c == ']')
                        .map(|p| p + i + 1);
                    let Some(end) = end else {
                        return Err(err(
                            format!("`[` in `{source}` is never closed"),
                            Some("close the set with `]`, or escape it as `\\[`"),
                        ));
                    };
                    let set = &chars[i + 1..end];
                    if set.is_empty() {
                        return Err(err(format!("empty set `[]` in `{source}`"), None));
                    }
                    let mut ranges = Vec::new();
                    let mut j = 0;
                    while j < set.len() {
                        if j + 2 < set.len() && set[j + 1] == '-' {
                            let (lo, hi) = (set[j], set[j + 2]);
                            let same_kind = [
                                char::is_ascii_lowercase,
                                char::is_ascii_uppercase,
                                char::is_ascii_digit,
                            ]
                            .iter()
                            .any(|kind| kind(&lo) && kind(&hi));
                            if !same_kind || lo > hi {
                                return Err(err(
                                    format!("range `{lo}-{hi}` in `{source}` is not allowed"),
                                    Some("ranges must be within a-z, A-Z or 0-9"),
                                ));
                            }
                            ranges.push((lo, hi));
                            j += 3;
                        } else {
                            ranges.push((set[j], set[j]));
                            j += 1;
                        }
                    }
                    tokens.push(Token::One(Atom::Class(ranges)));
                    i = end + 1;
                }
                '\\' if i + 1 < chars.len() => {
                    tokens.push(Token::One(Atom::Char(chars[i + 1])));
                    i += 2;
                }
                c => {
                    tokens.push(Token::One(Atom::Char(c)));
                    i += 1;
                }
            }
        }
        let regex = Regex::new(&to_regex(&tokens)).map_err(|e| {
            err(
                format!("`{source}` cannot be compiled: {e}"),
                Some("simplify the pattern"),
            )
        })?;
        Ok(Pattern {
            source: source.to_owned(),
            negated,
            tokens,
            regex,
        })
    }

    pub fn is_negated(&self) -> bool {
        self.negated
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the pattern (ignoring `!`) matches the whole of `text`, in time linear in `text`.
    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

/// An ordered list of patterns with GitHub's rule: the last pattern that matches decides, and a `!`
/// pattern excludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

impl PatternList {
    /// Builds the list; a list of only `!` patterns can never match, which GitHub rejects and so do we.
    pub fn new(patterns: Vec<Pattern>) -> Result<PatternList, PatternError> {
        if !patterns.is_empty() && patterns.iter().all(Pattern::is_negated) {
            return Err(PatternError {
                message: "a list with `!` patterns needs at least one positive pattern".into(),
                hint: Some(
                    "add the pattern to exclude from, e.g. `'**'` before the `!` patterns".into(),
                ),
            });
        }
        Ok(PatternList { patterns })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.patterns
            .iter()
            .rev()
            .find(|p| p.matches(text))
            .is_some_and(|p| !p.is_negated())
    }

    pub fn sources(&self) -> Vec<&str> {
        self.patterns.iter().map(Pattern::source).collect()
    }

    /// The names the list matches, when it is a plain list of names (no wildcard, no `!`), so matching can
    /// be an index lookup.
    pub fn literals(&self) -> Option<Vec<String>> {
        self.patterns
            .iter()
            .map(|p| {
                let chars: Option<String> = p
                    .tokens
                    .iter()
                    .map(|t| match t {
                        Token::One(Atom::Char(c)) => Some(*c),
                        _ => None,
                    })
                    .collect();
                chars.filter(|_| !p.negated)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> PatternList {
        PatternList::new(
            patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .collect(),
        )
        .unwrap()
    }

    #[track_caller]
    fn check(patterns: &[&str], yes: &[&str], no: &[&str]) {
        let l = list(patterns);
        for y in yes {
            assert!(l.matches(y), "{patterns:?} should match {y:?}");
        }
        for n in no {
            assert!(!l.matches(n), "{patterns:?} should not match {n:?}");
        }
    }

    #[test]
    fn branch_and_tag_examples_from_githubs_cheat_sheet() {
        check(
            &["feature/*"],
            &["feature/my-branch", "feature/your-branch"],
            &["feature/a/b", "feature"],
        );
        check(
            &["feature/**"],
            &["feature/beta-a/my-branch", "feature/mona/the/octocat"],
            &["features/x"],
        );
        check(
            &["main", "releases/mona-the-octocat"],
            &["main", "releases/mona-the-octocat"],
            &["main2"],
        );
        check(&["*"], &["main", "releases"], &["releases/a"]);
        check(&["**"], &["all/the/branches", "every/tag", "x"], &[]);
        check(
            &["*feature"],
            &["mona-feature", "feature", "ver-10-feature"],
            &["a/feature"],
        );
        check(&["v2*"], &["v2", "v2.0", "v2.9"], &["v1"]);
        check(
            &["v[12].[0-9]+.[0-9]+"],
            &["v1.10.1", "v2.0.0"],
            &["v3.0.0", "v1.x.1", "v1.0"],
        );
    }

    #[test]
    fn path_examples_from_githubs_cheat_sheet() {
        check(&["*"], &["README.md", "server.rb"], &["docs/README.md"]);
        check(
            &["*.jsx?"],
            &["page.js", "page.jsx"],
            &["page.jsxx", "a/page.js"],
        );
        check(&["**"], &["all/the/files.md"], &[]);
        check(&["*.js"], &["app.js", "index.js"], &["js/app.js"]);
        check(
            &["**.js"],
            &["index.js", "js/index.js", "src/js/app.js"],
            &["index.ts"],
        );
        check(
            &["docs/*"],
            &["docs/README.md", "docs/file.txt"],
            &["docs/a/b.md"],
        );
        check(
            &["docs/**"],
            &["docs/README.md", "docs/mona/octocat.txt"],
            &["README.md"],
        );
        check(
            &["docs/**/*.md"],
            &[
                "docs/README.md",
                "docs/mona/hello-world.md",
                "docs/a/markdown/file.md",
            ],
            &["docs/a.txt"],
        );
        check(
            &["**/docs/**"],
            &[
                "docs/hello.md",
                "dir/docs/my-file.txt",
                "space/docs/plan/space.doc",
            ],
            &["mydocs/x"],
        );
        check(
            &["**/README.md"],
            &["README.md", "js/README.md"],
            &["README.mdx"],
        );
        check(
            &["**/*src/**"],
            &["a/src/app.js", "my-src/code/js/app.js"],
            &["src"],
        );
        check(
            &["**/*-post.md"],
            &["my-post.md", "path/their-post.md"],
            &["post.md"],
        );
        check(
            &["**/migrate-*.sql"],
            &[
                "migrate-10909.sql",
                "db/migrate-v1.0.sql",
                "db/sept/migrate-v1.sql",
            ],
            &[],
        );
        check(
            &["*.md", "!README.md"],
            &["hello.md"],
            &["README.md", "docs/hello.md"],
        );
        check(
            &["*.md", "!README.md", "README*"],
            &["hello.md", "README.md", "README.doc"],
            &["docs/hello.md"],
        );
    }

    #[test]
    fn the_last_matching_pattern_wins() {
        check(
            &["releases/**", "!releases/**-alpha"],
            &["releases/10"],
            &["releases/10-alpha"],
        );
        check(&["**", "!main", "main"], &["main", "dev"], &[]);
    }

    #[test]
    fn escapes_make_special_characters_literal() {
        check(&["release\\+1"], &["release+1"], &["releasee1"]);
        check(&["a\\*"], &["a*"], &["ab"]);
    }

    #[test]
    fn plain_names_are_literals_and_patterns_are_not() {
        assert_eq!(
            list(&["acme/api", "acme/web"]).literals(),
            Some(vec!["acme/api".into(), "acme/web".into()])
        );
        assert_eq!(list(&["acme/*"]).literals(), None);
        assert_eq!(list(&["acme/api", "!acme/web"]).literals(), None);
        assert_eq!(list(&["a\\*b"]).literals(), Some(vec!["a*b".into()]));
    }

    #[test]
    fn pathological_patterns_match_long_texts() {
        // Exponential for a backtracking matcher: each `*`/`**`/`+` can split the text anywhere.
        let pattern = format!("{}b", "**a*a+".repeat(12));
        let text = "a".repeat(5_000);
        assert!(!list(&[&pattern]).matches(&text));
        let branch = format!("{}x", "*a".repeat(30));
        assert!(!list(&[&branch]).matches(&"a".repeat(2_000)));
        assert!(list(&[&branch]).matches(&format!("{}x", "a".repeat(2_000))));
    }

    #[test]
    fn regex_syntax_in_patterns_is_literal() {
        check(&["a.b"], &["a.b"], &["axb"]);
        check(&["(x|y)"], &["(x|y)"], &["x"]);
        check(&["^a$"], &["^a$"], &["a"]);
        check(&["[.]x"], &[".x"], &["ax"]);
        check(&["naïve/*"], &["naïve/ü"], &["naive/u"]);
    }

    #[test]
    fn bad_patterns_are_explained() {
        assert!(
            Pattern::parse("v[0-9")
                .unwrap_err()
                .message
                .contains("never closed")
        );
        assert!(
            Pattern::parse("?x")
                .unwrap_err()
                .message
                .contains("no character before it")
        );
        assert!(
            Pattern::parse("[a-Z]")
                .unwrap_err()
                .message
                .contains("not allowed")
        );
        assert!(Pattern::parse("").is_err());
        let only_negative = PatternList::new(vec![Pattern::parse("!main").unwrap()]);
        assert!(
            only_negative
                .unwrap_err()
                .message
                .contains("at least one positive")
        );
    }
}
