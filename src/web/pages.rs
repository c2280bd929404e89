//! The routes of the deliveries, triggers and budgets pages: each asks for a signed-in viewer, then wraps
//! the page's content ([`deliveries`](super::deliveries), [`catalog`](super::catalog),
//! [`budgets`](super::budgets)) in the dashboard's layout. Read-only: nothing here changes anything.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::html::page;
use super::jobs::{unavailable, viewer};
use super::{Dashboard, budgets, catalog, deliveries};

/// The layout around `content`, or the store's failure.
fn wrap(who: &super::auth::Identity, title: &str, content: anyhow::Result<String>) -> Response {
    match content {
        Ok(body) => page(StatusCode::OK, title, Some(&viewer(who)), &body),
        Err(e) => unavailable(who, e),
    }
}

/// `GET /deliveries`: recent deliveries, what each fired and what stopped the rest.
pub async fn deliveries(
    State(dash): State<Arc<Dashboard>>,
    Query(query): Query<deliveries::DeliveriesQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    let content = deliveries::deliveries(&*dash.store, &query).await;
    wrap(&who, "Deliveries", content)
}

/// `GET /deliveries/{id}`: one delivery, every trigger's verdict.
pub async fn delivery(
    State(dash): State<Arc<Dashboard>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    match deliveries::delivery(&*dash.store, &id).await {
        Ok(Some(body)) => page(StatusCode::OK, "Delivery", Some(&viewer(&who)), &body),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            "No such delivery",
            Some(&viewer(&who)),
            "<p>The store has no delivery with that id (it may have been pruned). \
             <a href=\"/deliveries\">Recent deliveries</a></p>",
        ),
        Err(e) => unavailable(&who, e),
    }
}

/// `GET /triggers`: the triggers and skills loaded, with their problems.
pub async fn triggers(
    State(dash): State<Arc<Dashboard>>,
    Query(query): Query<catalog::TriggersQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    let repo_loads = dash.repo_triggers.loads();
    let content = catalog::triggers(
        &*dash.store,
        &dash.triggers,
        &repo_loads,
        &dash.config,
        &query,
    )
    .await;
    wrap(&who, "Triggers and skills", content)
}

/// `GET /budgets`: spend per repository and day against the budgets.
pub async fn budgets(
    State(dash): State<Arc<Dashboard>>,
    Query(query): Query<budgets::BudgetsQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(who) = dash.identify(&headers).await else {
        return dash.sign_in_page(StatusCode::UNAUTHORIZED, None);
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let content = budgets::budgets(&*dash.store, &dash.config, now, &query).await;
    wrap(&who, "Budgets and spend", content)
}
