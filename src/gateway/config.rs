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
