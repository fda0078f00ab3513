//! HTTP for the tests, both ways: a client (reqwest, blocking) for the
//! service's endpoints and the BigQuery emulator, and stand-in servers (the
//! BigQuery stubs, a webhook receiver) with what BigQuery's answers look like.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};

/// A GET on loopback `port`: the status and the body, or `None` when nothing
/// answers within 5 s (not listening yet, or gone).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    send(move |client| {
        client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .timeout(Duration::from_secs(5))
    })
}

/// A POST of a JSON `body` on loopback `port`, answered within 60 s.
pub fn http_post(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    let body = body.to_owned();
    send(move |client| {
        client
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(Duration::from_secs(60))
    })
}

/// Sends the request `build` makes on a thread of its own: reqwest's
/// blocking client panics inside an async runtime, and some tests
/// (`#[tokio::test]`) scrape the service from one.
fn send(build: impl FnOnce(&Client) -> RequestBuilder + Send) -> Option<(u16, String)> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let response = build(client()).send().ok()?;
                let status = response.status().as_u16();
                Some((status, response.text().ok()?))
            })
            .join()
            .expect("the HTTP request's thread")
    })
}

/// One client for the test binary: loopback only, so no proxy from the
/// environment; a new connection per request, as servers here are killed
/// and restarted on the same port; redirects are answers, not followed.
fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client")
    })
}

/// A multipart load-job upload as BigQuery takes it: the job configuration
/// (JSON), then the NDJSON rows.
pub fn load_job_parts(body: &str) -> (serde_json::Value, &str) {
    let parts: Vec<&str> = body.split("\r\n\r\n").collect();
    let config = parts
        .get(1)
        .and_then(|p| p.split("\r\n--").next())
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(serde_json::Value::Null);
    let data = parts
        .get(2)
        .and_then(|p| p.split("\r\n--").next())
        .unwrap_or_default();
    (config, data)
}

/// An error answer in BigQuery's documented shape.
pub fn bigquery_error(status: u16, reason: &str, message: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let code = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error": {"code": status, "message": message,
        "errors": [{"domain": "global", "reason": reason, "message": message}], "status": reason.to_uppercase()}});
    (code, axum::Json(body)).into_response()
}

/// Serves `app` on a free loopback port, in a thread of its own, for the
/// life of the test binary (HTTP stand-ins: the BigQuery stub, a webhook
/// receiver). Returns the port.
pub fn serve_http(app: axum::Router) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = axum::serve(listener, app).await;
        });
    });
    port
}
