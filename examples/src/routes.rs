//! The HTTP routes.

use aside::Key;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::AppState;

/// The header a `PUT` or `DELETE` response carries, with the value
/// `queued`, when the write's invalidation could not reach the cache
/// backend and was queued for retry.
pub const INVALIDATION_HEADER: &str = "x-cache-invalidation";

/// The service's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/products/{id}",
            get(get_product).put(put_product).delete(delete_product),
        )
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The cache key of product `id` (parts are escaped: no two ids collide).
fn key(id: i64) -> Key {
    Key::new("product").part(id)
}

/// The body of `PUT /products/{id}`.
#[derive(Debug, Deserialize)]
struct ProductInput {
    name: String,
    price_cents: i64,
}

async fn get_product(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    let repo = state.repo().clone();
    // On a miss the loader runs once for every concurrent request of this
    // id (once across instances on Redis); `Ok(None)` is cached too, for
    // the negative TTL, so a missing id does not reach the database on
    // every request.
    let loaded = state
        .cache()
        .get_or_load(key(id), move || async move { repo.product(id).await })
        .await;
    match loaded {
        Ok(Some(product)) => Json(product).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such product\n").into_response(),
        // Only the loader's failure reaches here: a failing cache is
        // bypassed (the read goes to the database).
        Err(e) => {
            tracing::warn!(error = %e, id, "could not read a product");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

async fn put_product(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(input): Json<ProductInput>,
) -> Response {
    match state
        .repo()
        .upsert(id, &input.name, input.price_cents)
        .await
    {
        Ok(product) => invalidated(&state, id, Json(product).into_response()).await,
        Err(e) => {
            tracing::warn!(error = %e, id, "could not write a product");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

async fn delete_product(State(state): State<AppState>, Path(id): Path<i64>) -> Response {
    match state.repo().delete(id).await {
        Ok(true) => invalidated(&state, id, StatusCode::NO_CONTENT.into_response()).await,
        Ok(false) => (StatusCode::NOT_FOUND, "no such product\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, id, "could not delete a product");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response()
        }
    }
}

/// Invalidates product `id` after its write committed, and returns
/// `response`, or an error if the invalidation could not even be recorded.
async fn invalidated(state: &AppState, id: i64, mut response: Response) -> Response {
    match state.cache().invalidate(key(id)).await {
        Ok(done) if done.is_applied() => response,
        // Queued: the cache backend (Redis) could not be reached. aside keeps
        // the invalidation and retries it in the background; until it lands,
        // this instance reads product `id` from the database and caches
        // nothing under it, so its own readers see the write. Other
        // instances sharing that Redis can still serve the old entry until
        // the retry lands (or its TTL ends). The write stands: the response
        // says so with a header rather than an error.
        Ok(_) => {
            tracing::warn!(id, "invalidation queued: the cache backend is unreachable");
            response
                .headers_mut()
                .insert(INVALIDATION_HEADER, HeaderValue::from_static("queued"));
            response
        }
        // The invalidation failed and the queue was full: the write
        // committed but a cached copy may outlive it until its TTL ends.
        Err(e) => {
            tracing::error!(error = %e, id, "written, but the cache could not be invalidated");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "written, but the cache could not be invalidated\n",
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let page = state.render_metrics();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
}
