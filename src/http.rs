//! The service's HTTP face: `/healthz` (the process answers) and `/readyz`
//! (Redis answers too), for load balancers and Railway's health check.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::redis_target::LazyConnection;

#[derive(Clone)]
pub struct HttpState {
    pub redis: Arc<LazyConnection>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, Json<Value>) {
    match state.redis.query::<String>(&redis::cmd("PING")).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "redis": "up"})),
        ),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "redis": "down", "error": err.to_string()})),
        ),
    }
}
