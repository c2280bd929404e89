//! The gateway's part of `nightshift.yml`: the price table (`gateway: {prices: ...}`) and the budgets
//! (`budgets: {per_repository_daily_usd: ...}`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::meter::Price;
use crate::yaml::Diagnostic;

/// `gateway:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// Dollars per million tokens, by model: `{input, output, cached_input}`.
    #[serde(default)]
    prices: BTreeMap<String, Spanned<Price>>,
}

/// `budgets:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    /// The most dollars a repository's jobs may spend in a day (UTC), summed over its jobs.
    per_repository_daily_usd: Option<Spanned<f64>>,
}

/// The gateway's settings, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayConfig {
    pub prices: BTreeMap<String, Price>,
    pub per_repository_daily_usd: Option<f64>,
}

impl GatewayConfig {
    pub fn resolve(
        gateway: GatewayFile,
        budgets: BudgetsFile,
        path: &Path,
        errors: &mut Vec<Diagnostic>,
    ) -> GatewayConfig {
        let mut prices = BTreeMap::new();
        for (model, price) in gateway.prices {
            let p = price.value;
            let all = [Some(p.input), Some(p.output), p.cached_input];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                errors.push(
                    Diagnostic::at(
                        path,
                        price.referenced,
                        format!("gateway.prices.{model}: a price is negative or not a number"),
                    )
                    .with_hint("dollars per million tokens, e.g. {input: 3.0, output: 15.0, cached_input: 0.3}"),
                );
            }
            prices.insert(model, p);
        }
        let daily = budgets.per_repository_daily_usd.and_then(|d| {
            if d.value.is_finite() && d.value > 0.0 {
                Some(d.value)
            } else {
                errors.push(
                    Diagnostic::at(
                        path,
                        d.referenced,
                        "budgets.per_repository_daily_usd must be more than 0",
                    )
                    .with_hint("dollars per repository per day (UTC), e.g. 20; leave it out for no daily budget"),
                );
                None
            }
        });
        GatewayConfig {
            prices,
            per_repository_daily_usd: daily,
        }
    }
}

/// Checks one `egress` entry: a host name, or `*.` and a domain. Returns why it is not one.
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_prefix("*.").unwrap_or(pattern);
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name".into());
    }
    if name.contains(':') || name.contains('/') {
        return Err("has a scheme, port or path; write only the host".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if !name.split('.').all(label_ok) {
        return Err(
            "is not a host name (letters, digits, `-` and dots; `*.` only in front)".into(),
        );
    }
    if pattern.starts_with("*.") && !name.contains('.') {
        return Err("allows a whole top-level domain".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_host_names_or_wildcard_domains() {
        for good in [
            "registry.npmjs.org",
            "*.crates.io",
            "localhost",
            "a-b.example",
        ] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "https://x.io",
            "x.io:443",
            "*",
            "*.com",
            "a.*.io",
            "-x.io",
            "x..io",
            "",
            "x.io/a",
            "*.*.io",
        ] {
            assert!(check_pattern(bad).is_err(), "{bad}");
        }
    }
}
