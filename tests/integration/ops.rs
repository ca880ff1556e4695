//! The operations surface (docs/contract.md §3.4): `/metrics` in the Prometheus text
//! format with the named series, `/openapi.json` as a valid OpenAPI 3 document covering every
//! route the router defines, Swagger UI at `/docs` served from embedded assets, and request ids
//! echoed.
//!
//! The route list is read from the router's source (every `.route("...", method(...))` under
//! `api/src`), so a route added without an `#[utoipa::path]` fails here; and each documented
//! operation is requested to prove it is routed, so the document cannot list routes that do
//! not exist either.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use order_tests::helpers::metrics_text;
use order_tests::{json_of, spawn_app, Auth, TestApp};
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The HTTP methods a route can be declared with, as axum's routing functions name them.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every sample line is `name{labels} value` with a numeric value, and every `# TYPE` names a
/// known type: what a Prometheus scraper needs to parse the page.
fn assert_prometheus_text(text: &str) {
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let parts: Vec<&str> = comment.split_whitespace().collect();
            if parts.first() == Some(&"TYPE") {
                assert!(
                    matches!(
                        parts.get(2).copied(),
                        Some("counter" | "gauge" | "histogram" | "summary" | "untyped")
                    ),
                    "bad TYPE line: {line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in: {line}"
        );
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unterminated labels in: {line}");
        }
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn metrics_expose_the_named_series_after_traffic(pool: PgPool) {
    let app = spawn_app(pool).await;
    let order = app.create_order().await;
    let id = order["id"].as_str().expect("order id").to_owned();
    let events = app
        .get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
        .await;
    assert_eq!(events.status(), 200);
    // An unauthenticated call: an auth rejection, and a 401 in the HTTP series.
    let refused = app
        .send(Method::GET, "/internal/jobs", Auth::None, &[], None)
        .await;
    assert_eq!(refused.status(), 401);
    // No route: counted under one label, whatever the path.
    let unknown = app
        .send(Method::GET, "/no/such/route/42", Auth::None, &[], None)
        .await;
    assert_eq!(unknown.status(), 404);

    // The lag gauges are set by a worker at start-up and every 5 s; the projector counts once
    // it has applied the order.
    let wanted = [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "order_commands_total{",
        "order_command_duration_seconds_bucket{",
        "feed_lag_events{consumer=\"orders\"}",
        "feed_lag_events{consumer=\"relay\"}",
        "feed_lag_seconds{",
        "order_auth_rejections_total{",
        "projection_events_total{",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = metrics_text(&app).await;
        if wanted.iter().all(|w| text.contains(w)) || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for w in wanted {
        assert!(text.contains(w), "missing {w} in:\n{text}");
    }
    assert_prometheus_text(&text);

    let lines: Vec<&str> = text.lines().collect();
    let has = |parts: &[&str]| lines.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        has(&[
            "http_requests_total{",
            "method=\"POST\"",
            "route=\"/api/v1/orders\"",
            "status=\"201\""
        ]),
        "no POST /api/v1/orders 201 in:\n{text}"
    );
    assert!(
        has(&[
            "http_requests_total{",
            "route=\"/api/v1/orders/{id}/events\"",
            "status=\"200\""
        ]),
        "the events route is not labelled by its template:\n{text}"
    );
    assert!(has(&[
        "http_requests_total{",
        "route=\"/internal/jobs\"",
        "status=\"401\""
    ]));
    assert!(has(&[
        "http_requests_total{",
        "route=\"unmatched\"",
        "status=\"404\""
    ]));
    assert!(has(&[
        "http_request_duration_seconds_bucket{",
        "route=\"/api/v1/orders\"",
        "le=\"+Inf\""
    ]));
    assert!(has(&[
        "order_command_duration_seconds_bucket{",
        "command=\"create_order\""
    ]));
    // Cardinality: raw paths and ids never become label values.
    assert!(!text.contains(&id), "an order id leaked into a label");
    assert!(
        !text.contains("/no/such/route"),
        "a raw path leaked into a label"
    );
}

/// `(method, path)` of every route declared in the router's source: each
/// `.route("<path>", get(..).post(..))` in `api/src/startup.rs` and `api/src/routes/`, where
/// the application's routers are assembled, outside `#[cfg(test)]` modules.
fn declared_routes() -> BTreeSet<(String, String)> {
    let api = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../api/src");
    let mut files = vec![api.join("startup.rs")];
    collect_rs(&api.join("routes"), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("readable source");
        let source = source.split("#[cfg(test)]").next().unwrap_or_default();
        routes.extend(routes_in(source, &file));
    }
    routes
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn routes_in(source: &str, file: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        let args = rest.trim_start();
        let Some(literal) = args.strip_prefix('"') else {
            panic!(
                "{}: a .route( whose path is not a string literal; write the path literally so \
                 this test can check the OpenAPI document covers it",
                file.display()
            );
        };
        let end = literal.find('"').expect("closed literal");
        let path = literal[..end].to_owned();
        // The call's arguments run to the parenthesis that closes `.route(`.
        let mut depth = 1usize;
        let mut close = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let call = &rest[..close];
        let mut methods = 0;
        for m in METHODS {
            let needle = format!("{m}(");
            let mut search = call;
            while let Some(i) = search.find(&needle) {
                let before = call.len() - search.len() + i;
                let prev = call[..before].chars().next_back();
                if !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    found.push((m.to_owned(), path.clone()));
                    methods += 1;
                }
                search = &search[i + needle.len()..];
            }
        }
        assert!(
            methods > 0,
            "{}: no method router found for {path}",
            file.display()
        );
    }
    found
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    if let Some(s) = v.as_str() {
                        out.push(s.to_owned());
                    }
                } else {
                    refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

async fn openapi(app: &TestApp) -> Value {
    let resp = app
        .send(Method::GET, "/openapi.json", Auth::None, &[], None)
        .await;
    let (status, doc) = json_of(resp).await;
    assert_eq!(status, 200);
    doc
}

#[sqlx::test(migrations = "../migrations")]
async fn openapi_document_is_openapi_3_and_covers_every_route(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = openapi(&app).await;

    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "openapi is {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths object");

    // Every route of the router is documented with its method.
    let declared = declared_routes();
    assert!(
        declared.len() >= 17,
        "the source scan found too few routes: {declared:?}"
    );
    for (method, path) in &declared {
        assert!(
            paths
                .get(path)
                .and_then(|item| item.get(method))
                .is_some_and(Value::is_object),
            "{} {path} is routed but not in /openapi.json",
            method.to_uppercase()
        );
    }

    // Every documented operation is routed, and each is well-formed.
    let mut operation_ids = HashSet::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                declared.contains(&(method.clone(), path.clone())),
                "{} {path} is documented but no .route declares it",
                method.to_uppercase()
            );
            let op_id = op["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(
                operation_ids.insert(op_id.clone()),
                "duplicate operationId {op_id}"
            );
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success answer"
            );
            // Path parameters named in the template are declared.
            let params: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            for segment in path.split('/') {
                if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    assert!(
                        params.contains(&name),
                        "{method} {path}: path parameter {name} undeclared"
                    );
                }
            }
            // Authenticated routes carry "hmac-v1 or hmac-v2", and error answers the body.
            if path.starts_with("/api/") || path.starts_with("/internal/") {
                let security = op["security"]
                    .as_array()
                    .expect("security on a protected route");
                assert_eq!(security.len(), 2, "{method} {path}: {security:?}");
                assert_eq!(security[0].as_object().map(|o| o.len()), Some(4));
                assert_eq!(security[1].as_object().map(|o| o.len()), Some(3));
                for status in ["401", "403"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            } else {
                assert!(
                    op.get("security").is_none(),
                    "{method} {path} is unauthenticated"
                );
            }

            // Routed: unauthenticated and with a fresh id, the answer is the route's own (401,
            // 200, 503...), never the fallback's "no route matches" or a 405.
            let concrete = path.replace("{id}", &Uuid::now_v7().to_string());
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let resp = app.send(m, &concrete, Auth::None, &[], None).await;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            assert!(
                status != 405 && !text.contains("no route matches"),
                "{method} {path} is documented but not routed ({status}: {text})"
            );
        }
    }

    // Components: the error body, the seven HMAC header schemes, and no dangling reference.
    let components = &doc["components"];
    let error_body = &components["schemas"]["ErrorBody"];
    let required: BTreeSet<&str> = error_body["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, BTreeSet::from(["error", "message", "requestId"]));
    let schemes = components["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let headers: BTreeSet<&str> = schemes
        .values()
        .inspect(|s| {
            assert_eq!(s["type"], "apiKey");
            assert_eq!(s["in"], "header");
        })
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        headers,
        BTreeSet::from([
            "x-service-name",
            "x-request-timestamp",
            "x-request-nonce",
            "x-internal-auth",
            "x-internal-service",
            "x-internal-timestamp",
            "x-internal-signature",
        ])
    );
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(
            components["schemas"].get(name).is_some(),
            "dangling $ref {r}"
        );
    }
}

/// The keys of a documented object schema: (all properties, required ones).
fn schema_keys(doc: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no properties"))
        .keys()
        .cloned()
        .collect();
    let required = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (props, required)
}

fn assert_matches_schema(doc: &Value, name: &str, answer: &Value) {
    let (props, required) = schema_keys(doc, name);
    let keys: BTreeSet<String> = answer
        .as_object()
        .unwrap_or_else(|| panic!("{name}: answer is not an object: {answer}"))
        .keys()
        .cloned()
        .collect();
    assert!(
        keys.is_subset(&props),
        "{name}: undocumented fields {:?}",
        keys.difference(&props).collect::<Vec<_>>()
    );
    assert!(
        required.is_subset(&keys),
        "{name}: documented as required but absent {:?}",
        required.difference(&keys).collect::<Vec<_>>()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn openapi_schemas_describe_real_answers(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = openapi(&app).await;

    let created = app.create_order().await;
    assert_matches_schema(&doc, "OrderView", &created);

    let id = created["id"].as_str().expect("id");
    let (status, events) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_matches_schema(&doc, "OrderEventsAnswer", &events);
    assert_matches_schema(&doc, "OrderEventView", &events["events"][0]);

    let (status, missing) = json_of(
        app.get_as(
            "api-gateway",
            &format!("/api/v1/orders/{}/events", Uuid::now_v7()),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    assert_matches_schema(&doc, "ErrorBody", &missing);

    let (_, live) = json_of(
        app.send(Method::GET, "/health/live", Auth::None, &[], None)
            .await,
    )
    .await;
    assert_matches_schema(&doc, "LiveAnswer", &live);
}

#[sqlx::test(migrations = "../migrations")]
async fn docs_serve_swagger_ui_from_embedded_assets(pool: PgPool) {
    let app = spawn_app(pool).await;

    let resp = app.send(Method::GET, "/docs/", Auth::None, &[], None).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let html = resp.text().await.expect("html");
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    // Offline: every script and stylesheet is served from here, none from a CDN.
    assert!(
        !html.contains("https://"),
        "the page loads remote assets:\n{html}"
    );

    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let resp = app
            .send(
                Method::GET,
                &format!("/docs/{asset}"),
                Auth::None,
                &[],
                None,
            )
            .await;
        assert_eq!(resp.status(), 200, "{asset}");
        let body = resp.text().await.expect("asset");
        assert!(!body.is_empty(), "{asset} is empty");
        if asset == "swagger-initializer.js" {
            assert!(
                body.contains("/openapi.json"),
                "UI does not read /openapi.json: {body}"
            );
        }
    }

    // `/docs` without the slash redirects to the page.
    let resp = app.send(Method::GET, "/docs", Auth::None, &[], None).await;
    assert!(resp.status().is_redirection(), "{}", resp.status());
}

#[sqlx::test(migrations = "../migrations")]
async fn request_id_is_echoed_with_a_traceparent(pool: PgPool) {
    let app = spawn_app(pool).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = app
        .send(
            Method::GET,
            "/health/live",
            Auth::None,
            &[
                ("x-request-id", "ops-test-request-1"),
                ("traceparent", traceparent),
            ],
            None,
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("ops-test-request-1")
    );

    // The trace id of the traceparent reaches the events' metadata.
    let resp = app
        .send(
            Method::POST,
            "/api/v1/orders",
            Auth::v1("api-gateway"),
            &[("x-tenant-id", "tenant-a"), ("traceparent", traceparent)],
            Some(&order_tests::order_body()),
        )
        .await;
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 201);
    let id = body["order"]["id"].as_str().expect("id");
    let (_, events) = json_of(
        app.get_as("api-gateway", &format!("/api/v1/orders/{id}/events"))
            .await,
    )
    .await;
    assert_eq!(
        events["events"][0]["metadata"]["traceId"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(events["events"][0]["metadata"]["traceparent"], traceparent);
}

/// Per-service keys are read from `SERVICE_KEYS` only; a deployment that sets
/// `INTERNAL_SERVICE_KEYS` would run without the keys it meant to set, so the binary refuses to
/// start and names both variables. (Needs the binary: `cargo build -p order-api --bin
/// order-service`, as `just test` does.)
#[tokio::test]
async fn the_binary_refuses_the_misnamed_service_keys_variable() {
    let output = tokio::process::Command::new(order_tests::soak::service_binary())
        .arg("serve")
        .env(
            "INTERNAL_SERVICE_KEYS",
            "payment-service=payment-key-0123456789abcdef0123",
        )
        .env_remove("SERVICE_KEYS")
        // Nothing listens here: without the refusal, start-up fails on the database instead.
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("HTTP_ADDR", "127.0.0.1:0")
        .env("APP_ENV", "test")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the binary exits")
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("INTERNAL_SERVICE_KEYS is set, but this service reads SERVICE_KEYS"),
        "{stderr}"
    );
}

/// `order-service call` shows a redirect instead of following it: a follow would send the
/// signed headers, nonce and all, to wherever the `Location` points.
#[tokio::test]
async fn the_call_command_never_follows_redirects() {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    order_tests::install_crypto();
    let landed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&landed);
    let app = axum::Router::new()
        .route(
            "/start",
            get(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/landed")],
                )
            }),
        )
        .route(
            "/landed",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { "{}" }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let settings = order_api::config::Settings::for_tests("postgres://unused");
    let result = order_api::cli::call(
        &settings,
        "GET",
        "/start",
        None,
        "api-gateway",
        None,
        Some(&url),
    )
    .await;
    assert_eq!(
        landed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
    let error = result.expect_err("a redirect is not a success").to_string();
    assert!(error.contains("307"), "{error}");
}
