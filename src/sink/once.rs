//! Creating something on GitHub exactly once.
//!
//! A create is recorded `pending` in the store before it is sent. If the job is delivered again (a crash, a
//! restart, a transient failure) and finds its output `pending`, the earlier call may have created it: it
//! looks on GitHub for its hidden marker first, in what nightshift's own account wrote, and records what it
//! finds instead of creating another. A create whose answer leaves its fate open (a 5xx, a timeout, a
//! dropped connection: [`GhErrorKind::Unknown`]) is handled the same way before it is sent again. A create is
//! never repeated blindly.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

use super::SinkContext;
use crate::github::{GhError, GhErrorKind};
use crate::store::Output;

/// Something found or created on GitHub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub url: Option<String>,
    /// Its id (comment, review, check run) or number (issue, pull request).
    pub id: Option<u64>,
}

impl Found {
    /// From GitHub's JSON for the object: `html_url`, and `number` (issues, pull requests) or `id`.
    pub fn from_json(v: &serde_json::Value) -> Found {
        Found {
            url: v["html_url"].as_str().map(str::to_owned),
            id: v["number"].as_u64().or_else(|| v["id"].as_u64()),
        }
    }
}

/// How many times a create is sent at most in one delivery (each after looking for what the one before may
/// have created).
const SENDS: u32 = 3;

/// Creates the output `key` (of `kind`) unless the job already did: see the module's notes. `find` looks
/// on GitHub for what an earlier call made (None when there is nothing, or when nightshift cannot tell its
/// own objects from others'); `create` makes it.
pub async fn create<F, FF, C, CF>(
    ctx: &SinkContext<'_>,
    kind: &str,
    key: &str,
    find: F,
    create: C,
) -> Result<Output>
where
    F: Fn() -> FF,
    FF: Future<Output = Result<Option<Found>>>,
    C: Fn() -> CF,
    CF: Future<Output = Result<Found, GhError>>,
{
    create_or_find(ctx, kind, key, find, create)
        .await
        .map(|(o, _)| o)
}

/// [`create`], also saying whether the output was made by an earlier call (found, or recorded before):
/// its content is that call's, which a caller may want to bring up to date.
pub async fn create_or_find<F, FF, C, CF>(
    ctx: &SinkContext<'_>,
    kind: &str,
    key: &str,
    find: F,
    create: C,
) -> Result<(Output, bool)>
where
    F: Fn() -> FF,
    FF: Future<Output = Result<Option<Found>>>,
    C: Fn() -> CF,
    CF: Future<Output = Result<Found, GhError>>,
{
    if let Some(recorded) = ctx.store.find_output(ctx.job, key).await? {
        if !recorded.pending {
            return Ok((recorded, true));
        }
        if let Some(found) = find().await? {
            ctx.log(format!(
                "found the {kind} an earlier attempt created: {}",
                found.url.as_deref().unwrap_or("(no link)")
            ))
            .await;
            return Ok((ctx.record(kind, key, found.url, found.id).await?, true));
        }
    }
    ctx.fence().await?;
    ctx.store
        .record_output(
            ctx.job,
            &Output {
                kind: kind.into(),
                key: key.into(),
                url: None,
                github_id: None,
                pending: true,
            },
        )
        .await?;
    let mut sends = 0;
    loop {
        sends += 1;
        match create().await {
            Ok(found) => return Ok((ctx.record(kind, key, found.url, found.id).await?, false)),
            Err(e) if e.kind == GhErrorKind::Unknown && sends < SENDS => {
                ctx.log(format!(
                    "{e}; the {kind} may have been created: looking for it before trying again"
                ))
                .await;
                tokio::time::sleep(Duration::from_millis(500 * u64::from(sends))).await;
                if let Some(found) = find().await? {
                    return Ok((ctx.record(kind, key, found.url, found.id).await?, true));
                }
                ctx.fence().await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}
