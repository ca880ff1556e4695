//! The axum middleware that authenticates service-to-service requests (docs/contract.md §4).
//!
//! Checks run in the normative order: timestamp window, caller allowed on the route (403),
//! signature in constant time (401), then the nonce or hmac-v2 signature recorded atomically
//! (401 on reuse). Only an expired timestamp says why it failed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::caller::{Caller, Scheme};
use super::keys::{valid_service_name, KeyRing};
use super::nonce::{storable, NonceStore, MAX_NONCE_LEN};
use super::pending::PendingNonce;
use super::policy::{CallerPolicy, RoutePolicy};
use super::signing::{v1_header, v2_header, verify_v1, verify_v2};
use crate::deadline::{within_deadline, DeadlinePassed};
use crate::error::ApiError;

/// How far a request's timestamp may be from this server's clock, either side.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The one 401 message for every failure but an expired timestamp, so an attacker learns
/// nothing about which check failed.
pub const INVALID_CREDENTIALS: &str = "Invalid service credentials";

/// The 401 message for a timestamp outside the window; callers need it to spot clock skew.
pub const TIMESTAMP_EXPIRED: &str = "Request timestamp expired";

/// Prefix of hmac-v2 replay keys in the nonce store; `:` never occurs in a v1 nonce.
const V2_REPLAY_PREFIX: &str = "v2:";

/// Longest header value looked at; longer ones are malformed.
const MAX_HEADER_LEN: usize = 256;

/// Why a request was refused. Only the variant's class is logged.
#[derive(Debug)]
enum Rejection {
    Malformed,
    Expired,
    NotAllowed,
    BadCredentials,
    Replayed,
    Store(sqlx::Error),
    /// The request's database deadline passed before the record was made.
    Deadline(DeadlinePassed),
}

impl From<DeadlinePassed> for Rejection {
    fn from(passed: DeadlinePassed) -> Self {
        Self::Deadline(passed)
    }
}

impl Rejection {
    fn class(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotAllowed => "not_allowed",
            Self::BadCredentials => "bad_credentials",
            Self::Replayed => "replayed",
            Self::Store(_) => "store_error",
            Self::Deadline(_) => "store_deadline",
        }
    }

    fn into_api_error(self) -> ApiError {
        match self {
            Self::Expired => ApiError::Unauthorized(TIMESTAMP_EXPIRED),
            Self::NotAllowed => ApiError::Forbidden,
            Self::Store(e) if order_projections::error::is_outage(&e) => {
                tracing::warn!(error = %e, "database unavailable for the nonce check");
                ApiError::Unavailable {
                    message: "the database is unavailable; retry shortly".into(),
                    retry_after: Some(1),
                }
            }
            Self::Store(e) => ApiError::Internal(
                anyhow::Error::new(e).context("recording a request nonce failed"),
            ),
            Self::Deadline(passed) => passed.into(),
            Self::Malformed | Self::BadCredentials | Self::Replayed => {
                ApiError::Unauthorized(INVALID_CREDENTIALS)
            }
        }
    }
}

/// The credentials a request presents, borrowed from its headers.
struct Presented<'a> {
    scheme: Scheme,
    service: &'a str,
    timestamp: &'a str,
    /// hmac-v1 only.
    nonce: Option<&'a str>,
    signature: &'a str,
}

impl Presented<'_> {
    /// Whether the signature is right for `key`, in constant time, by the scheme presented
    /// (hmac-v1 when a nonce came, hmac-v2 otherwise).
    fn is_signed_with(&self, key: &[u8], method: &Method, target: &str) -> bool {
        match self.nonce {
            Some(nonce) => verify_v1(
                key,
                self.service,
                self.timestamp,
                nonce,
                method.as_str(),
                target,
                self.signature,
            ),
            None => verify_v2(key, self.service, self.timestamp, target, self.signature),
        }
    }
}

/// The value of a header that must appear exactly once, as visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Rejection> {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Rejection::Malformed);
    };
    value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= MAX_HEADER_LEN)
        .ok_or(Rejection::Malformed)
}

/// An hmac-v1 nonce: hex digits, `-` and `_` (the platform's services send hex). No `/`: the
/// request target starts with one, and a nonce holding `/` and `:` could make one signed text
/// read as an hmac-v1 text and an hmac-v2 text alike.
fn valid_nonce(nonce: &str) -> bool {
    nonce.len() <= MAX_NONCE_LEN
        && nonce
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'-' | b'_'))
}

fn presented(headers: &HeaderMap) -> Result<Presented<'_>, Rejection> {
    let found = if headers.contains_key(v1_header::SIGNATURE) {
        Presented {
            scheme: Scheme::HmacV1,
            service: single(headers, v1_header::SERVICE)?,
            timestamp: single(headers, v1_header::TIMESTAMP)?,
            nonce: Some(single(headers, v1_header::NONCE)?),
            signature: single(headers, v1_header::SIGNATURE)?,
        }
    } else if headers.contains_key(v2_header::SIGNATURE) {
        Presented {
            scheme: Scheme::HmacV2,
            service: single(headers, v2_header::SERVICE)?,
            timestamp: single(headers, v2_header::TIMESTAMP)?,
            nonce: None,
            signature: single(headers, v2_header::SIGNATURE)?,
        }
    } else {
        return Err(Rejection::Malformed);
    };
    if !valid_service_name(found.service) || !found.nonce.is_none_or(valid_nonce) {
        return Err(Rejection::Malformed);
    }
    Ok(found)
}

/// Milliseconds since the epoch, as plain decimal digits (no sign, no spaces, no exponent).
fn parse_timestamp(text: &str) -> Result<i64, Rejection> {
    if text.is_empty() || text.len() > 15 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    text.parse().map_err(|_| Rejection::Malformed)
}

/// Fuzzing and property-test entry point: the checks of [`Authenticator::admit`] that need no
/// clock, caller policy or database — header parsing, timestamp syntax and the signature
/// against `secret` — on untrusted headers. `Ok` carries the caller and the parsed timestamp;
/// `Err` the rejection's class as logged (`malformed` or `bad_credentials`).
///
/// It runs the middleware's own private parsers rather than a copy, so what is fuzzed is what
/// guards the routes.
///
/// # Errors
/// The class of the first failed check.
pub fn check_offline(
    headers: &HeaderMap,
    method: &Method,
    target: &str,
    secret: &[u8],
) -> Result<(Caller, i64), &'static str> {
    let p = presented(headers).map_err(|r| r.class())?;
    let timestamp = parse_timestamp(p.timestamp).map_err(|r| r.class())?;
    if !p.is_signed_with(secret, method, target) {
        return Err(Rejection::BadCredentials.class());
    }
    let caller = Caller {
        service: p.service.to_owned(),
        scheme: p.scheme,
    };
    Ok((caller, timestamp))
}

struct Inner {
    keys: KeyRing,
    callers: CallerPolicy,
    nonces: NonceStore,
}

/// Verifies service-to-service requests: keys, caller policy, replay store and time window.
/// Cheap to clone; build one at start-up and derive a [`RouteGuard`] per route group.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
    window: Duration,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // KeyRing's Debug shows no key material; it is listed for completeness.
        f.debug_struct("Authenticator")
            .field("keys", &self.inner.keys)
            .field("callers", &self.inner.callers)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with the normative 5-minute window.
    pub fn new(keys: KeyRing, callers: CallerPolicy, nonces: NonceStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys,
                callers,
                nonces,
            }),
            window: DEFAULT_WINDOW,
        }
    }

    /// The same authenticator with another window (tests, or a deliberate deviation).
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The state for [`authenticate`] on the routes of `policy`.
    pub fn guard(&self, policy: RoutePolicy) -> RouteGuard {
        RouteGuard {
            auth: self.clone(),
            policy,
            defers_nonce: false,
        }
    }

    /// The keys, for signing outgoing calls with the same configuration.
    pub fn keys(&self) -> &KeyRing {
        &self.inner.keys
    }

    /// The replay store, for the job that purges expired rows.
    pub fn nonces(&self) -> &NonceStore {
        &self.inner.nonces
    }

    /// Checks (a) to (c) for `policy`, which need no database: `target` is the request target
    /// as on the request line (path and query, undecoded) and `now` the server's clock. What is
    /// left is recording the replay key ([`Self::record`]).
    ///
    /// # Errors
    /// 401 [`ApiError::Unauthorized`] (generic, or [`TIMESTAMP_EXPIRED`]) or 403
    /// [`ApiError::Forbidden`].
    pub fn admit(
        &self,
        policy: RoutePolicy,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        now: DateTime<Utc>,
    ) -> Result<Admission, ApiError> {
        let mut service = None;
        let result = self.check(policy, method, target, headers, now, &mut service);
        result.map_err(|rejection| reject(policy, service, rejection))
    }

    /// Check (d): the first use of the admitted request's nonce (hmac-v1) or signature
    /// (hmac-v2), recorded atomically in the store all replicas share.
    ///
    /// # Errors
    /// 401 on a replay; [`ApiError::Internal`] or 503 when the nonce store fails, and 503 when
    /// the request's database deadline passes first.
    pub async fn record(&self, policy: RoutePolicy, admission: &Admission) -> Result<(), ApiError> {
        let service = admission.caller.service.as_str();
        let first_use = within_deadline("nonce", async {
            self.inner
                .nonces
                .record(service, &admission.replay_key, admission.expires_at)
                .await
                .map_err(Rejection::Store)
        })
        .await;
        match first_use {
            Ok(true) => Ok(()),
            Ok(false) => Err(reject(policy, Some(service), Rejection::Replayed)),
            Err(rejection) => Err(reject(policy, Some(service), rejection)),
        }
    }

    fn check<'h>(
        &self,
        policy: RoutePolicy,
        method: &Method,
        target: &str,
        headers: &'h HeaderMap,
        now: DateTime<Utc>,
        service_seen: &mut Option<&'h str>,
    ) -> Result<Admission, Rejection> {
        let p = presented(headers)?;
        *service_seen = Some(p.service);

        // (a) Timestamp within the window, either side.
        let timestamp = parse_timestamp(p.timestamp)?;
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        if now.timestamp_millis().abs_diff(timestamp) > window_ms.unsigned_abs() {
            return Err(Rejection::Expired);
        }

        // (b) A known caller, and this route open to it.
        if !self.inner.callers.allows(p.service, policy) {
            return Err(Rejection::NotAllowed);
        }

        // (c) The signature, in constant time, against each key the caller may hold.
        let valid = self
            .inner
            .keys
            .candidates(p.service)
            .any(|key| p.is_signed_with(key, method, target));
        if !valid {
            return Err(Rejection::BadCredentials);
        }

        // (d), left to `record`: the nonce (v1) or the signature itself (v2) is kept for as
        // long as the timestamp could pass (a).
        let expires_at = DateTime::from_timestamp_millis(timestamp)
            .zip(chrono::Duration::from_std(self.window).ok())
            .and_then(|(at, window)| at.checked_add_signed(window))
            .ok_or(Rejection::Malformed)?;
        let replay_key = match p.nonce {
            Some(nonce) => nonce.to_owned(),
            None => format!("{V2_REPLAY_PREFIX}{}", p.signature),
        };
        Ok(Admission {
            caller: Caller {
                service: p.service.to_owned(),
                scheme: p.scheme,
            },
            replay_key,
            expires_at,
        })
    }
}

/// Logs and counts a refusal by its class only, and turns it into the API's answer.
fn reject(policy: RoutePolicy, service: Option<&str>, rejection: Rejection) -> ApiError {
    let class = rejection.class();
    tracing::debug!(
        auth.service = service.unwrap_or("-"),
        auth.route = policy.name(),
        auth.reason = class,
        "service request rejected"
    );
    metrics::counter!("order_auth_rejections_total", "reason" => class).increment(1);
    rejection.into_api_error()
}

/// A request whose timestamp, caller and signature passed: it is authenticated once its replay
/// key is recorded as first used ([`Authenticator::record`]).
#[derive(Debug)]
pub struct Admission {
    /// Who signed it.
    pub caller: Caller,
    replay_key: String,
    expires_at: DateTime<Utc>,
}

/// The middleware's state: the authenticator and the route group it guards.
#[derive(Debug, Clone)]
pub struct RouteGuard {
    /// The shared authenticator.
    pub auth: Authenticator,
    /// Which callers this route group is open to.
    pub policy: RoutePolicy,
    /// Whether a command's replay key is handed to its handler as a [`PendingNonce`] instead of
    /// being recorded before the handler runs ([`Self::deferring_nonce`]).
    defers_nonce: bool,
}

impl RouteGuard {
    /// The same guard, handing a command's replay key to its handler as a [`PendingNonce`], to
    /// be recorded by the statement that appends the command's events (one commit instead of
    /// two). Only for handlers that pass it to the event store and do nothing outside the
    /// database before their append: the handler runs before the key is known to be unused,
    /// and a replay is refused only after it (see [`super::pending`]). Reads are unaffected.
    #[must_use]
    pub fn deferring_nonce(mut self) -> Self {
        self.defers_nonce = true;
        self
    }
}

/// The request target as the caller signed it: path and query, undecoded, before any
/// `nest` stripped a prefix.
fn signed_target(request: &Request) -> String {
    let uri = request
        .extensions()
        .get::<OriginalUri>()
        .map_or(request.uri(), |original| &original.0);
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// Axum middleware authenticating a service-to-service request; on success the [`Caller`] is
/// in the request's extensions. Mount with
/// `route_layer(middleware::from_fn_with_state(auth.guard(policy), authenticate))`.
///
/// A read (`GET`, `HEAD`) runs its handler while its nonce is being recorded, instead of one
/// round trip after the other, and its answer is released only once the record says first use:
/// a replay still gets its 401 and nothing else, and it changed nothing, as reads change
/// nothing. Any other method runs its handler only after the record, unless the guard defers
/// the nonce to the handler ([`RouteGuard::deferring_nonce`]).
pub async fn authenticate(
    State(guard): State<RouteGuard>,
    mut request: Request,
    next: Next,
) -> Response {
    let target = signed_target(&request);
    let admitted = guard.auth.admit(
        guard.policy,
        request.method(),
        &target,
        request.headers(),
        Utc::now(),
    );
    let admission = match admitted {
        Ok(admission) => admission,
        Err(e) => return e.into_response(),
    };
    request.extensions_mut().insert(admission.caller.clone());
    let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
    if guard.defers_nonce && !is_read {
        return defer_to_handler(&guard, &admission, request, next).await;
    }
    let record = guard.auth.record(guard.policy, &admission);
    if !is_read {
        return match record.await {
            Ok(()) => next.run(request).await,
            Err(e) => e.into_response(),
        };
    }
    let handler = next.run(request);
    tokio::pin!(record, handler);
    tokio::select! {
        biased;
        recorded = &mut record => match recorded {
            Ok(()) => handler.await,
            Err(e) => e.into_response(),
        },
        response = &mut handler => match record.await {
            Ok(()) => response,
            Err(e) => e.into_response(),
        },
    }
}

/// A command whose replay key is settled by its own append: the handler gets the key as a
/// [`PendingNonce`] and runs at once. Whatever it answers, the key is settled before the answer
/// leaves: by the append statement, or else here through the batcher. A key found used (by
/// either) turns the answer into the 401 of a replay, and a nonce store that fails turns it
/// into a 500 or 503, never a pass; only a handler's own 5xx stands either way. A request
/// dropped before its answer (the client went away, the handler panicked) still spends its
/// key ([`UnspentKey`]).
async fn defer_to_handler(
    guard: &RouteGuard,
    admission: &Admission,
    mut request: Request,
    next: Next,
) -> Response {
    let service = admission.caller.service.as_str();
    if !storable(&admission.replay_key) {
        return reject(guard.policy, Some(service), Rejection::Replayed).into_response();
    }
    let (pending, settlement) =
        PendingNonce::new(service, &admission.replay_key, admission.expires_at);
    let mut unspent = UnspentKey {
        nonces: guard.auth.inner.nonces.clone(),
        service: service.to_owned(),
        key: admission.replay_key.clone(),
        expires_at: admission.expires_at,
        settlement,
        spent: false,
    };
    request.extensions_mut().insert(PendingSlot::new(pending));
    let response = next.run(request).await;
    let first_use = match unspent.settlement.outcome() {
        Some(first_use) => Ok(first_use),
        // A handler's 5xx stands whatever the key's state (below): spend the key, but do not
        // hold the answer for it, which in an outage would outlast the request's deadline.
        None if response.status().is_server_error() => {
            drop(unspent.start());
            return response;
        }
        // Not taken, refused or satisfied before any append: spend the key all the same.
        None => unspent.spend().await,
    };
    match first_use {
        Ok(true) => response,
        // The handler failed, and its failure stands whatever the key's state: an append
        // whose connection dropped while it committed leaves the key used, and a 401 would
        // tell the caller its signature was refused instead of to retry. Nothing was
        // accepted twice either way: the key is recorded now, or was by that append.
        _ if response.status().is_server_error() => response,
        Ok(false) => reject(guard.policy, Some(service), Rejection::Replayed).into_response(),
        Err(rejection) => reject(guard.policy, Some(service), rejection).into_response(),
    }
}

/// A deferred replay key until it is settled. Spending it here runs in a task of its own, so
/// that it completes even when nobody waits for it: after a handler's 5xx (perhaps for running
/// out of the request's database deadline), past the deadline, or with the request dropped. Dropped
/// unsettled and unspent (the request was cancelled, or its handler panicked), it spends the
/// key on its way out, so a copy of a request that never answered is still refused.
struct UnspentKey {
    nonces: NonceStore,
    service: String,
    key: String,
    expires_at: DateTime<Utc>,
    settlement: super::pending::Settlement,
    spent: bool,
}

impl UnspentKey {
    fn start(&mut self) -> tokio::task::JoinHandle<Result<bool, sqlx::Error>> {
        self.spent = true;
        let (nonces, service, key, expires_at) = (
            self.nonces.clone(),
            self.service.clone(),
            self.key.clone(),
            self.expires_at,
        );
        tokio::spawn(async move { nonces.record(&service, &key, expires_at).await })
    }

    /// Records the key as used: `Ok(true)` if this was its first use. Waited for within the
    /// request's database deadline; past it the record still completes on its own.
    async fn spend(&mut self) -> Result<bool, Rejection> {
        let recording = self.start();
        within_deadline("nonce", async {
            match recording.await {
                Ok(recorded) => recorded.map_err(Rejection::Store),
                Err(join) => {
                    tracing::error!(error = %join, "recording a deferred replay key failed");
                    Err(Rejection::Store(sqlx::Error::WorkerCrashed))
                }
            }
        })
        .await
    }
}

impl Drop for UnspentKey {
    fn drop(&mut self) {
        if !self.spent
            && self.settlement.outcome().is_none()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            drop(self.start());
        }
    }
}

/// Where the middleware leaves the [`PendingNonce`] for the handler to take.
#[derive(Debug, Clone)]
struct PendingSlot(Arc<Mutex<Option<PendingNonce>>>);

impl PendingSlot {
    fn new(pending: PendingNonce) -> Self {
        Self(Arc::new(Mutex::new(Some(pending))))
    }

    fn take(&self) -> Option<PendingNonce> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PendingNonce {
    type Rejection = ApiError;

    /// Fails closed with a 500 on a route whose guard records the key itself (or none): that
    /// is a wiring bug, and the handler must not go on as if it held the key.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<PendingSlot>()
            .and_then(PendingSlot::take)
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!(
                    "PendingNonce extracted on a route whose guard does not defer the nonce"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use axum::routing::{get, post};
    use axum::{middleware, Json, Router};
    use serde_json::{json, Value};
    use sqlx::PgPool;
    use tower::ServiceExt;

    use super::*;
    use crate::auth::signing::{sign_v1, v1_headers, v2_headers};

    const SECRET: &str = "test-shared-secret-0123456789abcdef";
    const OLD_SECRET: &str = "test-previous-secret-0123456789abcdef";
    const ORDER: &str = "/internal/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    const ITEMS: &str = "/internal/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/items";
    const CANCEL: &str = "/api/v1/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/cancel";
    /// The old services' bypass value outside production (docs/contract.md §4): never accepted.
    const REJECTED_BYPASS: &str = "temp-signature";

    type Headers = Vec<(&'static str, String)>;

    async fn whoami(caller: Caller) -> Json<Value> {
        Json(json!({"service": caller.service, "scheme": caller.scheme.as_str()}))
    }

    /// `/internal` is nested, as in the real router, so the guard must sign over the original
    /// target, not the stripped one.
    fn app(pool: PgPool, keys: KeyRing) -> Router {
        let auth = Authenticator::new(keys, CallerPolicy::default(), NonceStore::new(pool));
        let reads = Router::new()
            .route("/orders/{id}", get(whoami))
            .route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersRead),
                authenticate,
            ));
        let items = Router::new()
            .route("/orders/{id}/items", get(whoami))
            .route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersItems),
                authenticate,
            ));
        let commands = Router::new()
            .route("/api/v1/orders/{id}/cancel", post(whoami))
            .route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersCancel),
                authenticate,
            ));
        Router::new()
            .nest("/internal", reads.merge(items))
            .merge(commands)
    }

    fn shared_keys() -> KeyRing {
        KeyRing::from_config(Some(SECRET), Some(OLD_SECRET), None).unwrap()
    }

    fn now_ms() -> i64 {
        Utc::now().timestamp_millis()
    }

    fn v1(service: &str, method: &str, url: &str) -> Headers {
        v1_headers(SECRET.as_bytes(), service, method, url, now_ms())
    }

    fn v2(service: &str, url: &str) -> Headers {
        v2_headers(SECRET.as_bytes(), service, url, now_ms())
    }

    fn with(mut headers: Headers, name: &'static str, value: &str) -> Headers {
        headers.retain(|(k, _)| *k != name);
        headers.push((name, value.to_owned()));
        headers
    }

    async fn send(app: &Router, method: &str, url: &str, headers: &Headers) -> (StatusCode, Value) {
        let mut request = HttpRequest::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, body)
    }

    #[track_caller]
    fn assert_unauthorized(status: StatusCode, body: &Value, message: &str) {
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "Unauthorized", "{body}");
        assert_eq!(body["message"], message, "{body}");
        assert!(
            !body.to_string().to_lowercase().contains("signature"),
            "{body}"
        );
    }

    #[track_caller]
    fn assert_generic_401(status: StatusCode, body: &Value) {
        assert_unauthorized(status, body, INVALID_CREDENTIALS);
    }

    #[track_caller]
    fn assert_forbidden(status: StatusCode, body: &Value) {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"], "Forbidden", "{body}");
        assert_eq!(body["message"], "Service not authorized", "{body}");
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn good_requests_pass_once(pool: PgPool) {
        let app = app(pool, shared_keys());

        let h = v1("payment-service", "GET", ORDER);
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"service": "payment-service", "scheme": "hmac-v1"})
        );
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_generic_401(status, &body);

        let h = v2("payment-service", ORDER);
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"service": "payment-service", "scheme": "hmac-v2"})
        );
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_generic_401(status, &body);

        // A command route, signed over its method and a query string.
        let url = "/api/v1/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/cancel?x=a%20b&y=1";
        let (status, body) = send(&app, "POST", url, &v1("api-gateway", "POST", url)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["service"], "api-gateway");
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn replaying_a_v2_signature_with_another_spelling_fails(pool: PgPool) {
        let app = app(pool, shared_keys());
        let h = v2("payment-service", ORDER);
        assert_eq!(send(&app, "GET", ORDER, &h).await.0, StatusCode::OK);
        let sig = h[2].1.to_uppercase();
        let (status, body) = send(&app, "GET", ORDER, &with(h, v2_header::SIGNATURE, &sig)).await;
        assert_generic_401(status, &body);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn timestamps_outside_the_window_are_expired(pool: PgPool) {
        let app = app(pool, shared_keys());
        let six_minutes = 6 * 60 * 1000;
        for ts in [now_ms() - six_minutes, now_ms() + six_minutes] {
            let h = v1_headers(SECRET.as_bytes(), "payment-service", "GET", ORDER, ts);
            let (status, body) = send(&app, "GET", ORDER, &h).await;
            assert_unauthorized(status, &body, TIMESTAMP_EXPIRED);
            let h = v2_headers(SECRET.as_bytes(), "payment-service", ORDER, ts);
            let (status, body) = send(&app, "GET", ORDER, &h).await;
            assert_unauthorized(status, &body, TIMESTAMP_EXPIRED);
        }
        // Four minutes either side is inside the window.
        for ts in [now_ms() - 4 * 60 * 1000, now_ms() + 4 * 60 * 1000] {
            let h = v1_headers(SECRET.as_bytes(), "payment-service", "GET", ORDER, ts);
            assert_eq!(send(&app, "GET", ORDER, &h).await.0, StatusCode::OK);
        }
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn bad_signatures_are_generic_401s(pool: PgPool) {
        let app = app(pool, shared_keys());
        let h = v1("payment-service", "GET", ORDER);
        let sig = h[3].1.clone();
        let mut tampered = sig.clone().into_bytes();
        tampered[0] = if tampered[0] == b'a' { b'b' } else { b'a' };
        let tampered = String::from_utf8(tampered).unwrap();
        for bad in [
            tampered.as_str(),
            &sig[..32],
            &format!("{sig}00"),
            REJECTED_BYPASS,
            "",
        ] {
            let (status, body) = send(
                &app,
                "GET",
                ORDER,
                &with(h.clone(), v1_header::SIGNATURE, bad),
            )
            .await;
            assert_generic_401(status, &body);
        }
        let h2 = v2("payment-service", ORDER);
        for bad in [REJECTED_BYPASS, &tampered] {
            let (status, body) = send(
                &app,
                "GET",
                ORDER,
                &with(h2.clone(), v2_header::SIGNATURE, bad),
            )
            .await;
            assert_generic_401(status, &body);
        }
        // The untouched request still passes: failed attempts did not burn its nonce.
        assert_eq!(send(&app, "GET", ORDER, &h).await.0, StatusCode::OK);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_signature_binds_method_path_and_query(pool: PgPool) {
        let app = app(pool, shared_keys());
        let other = "/internal/orders/11111111-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let (status, body) = send(&app, "GET", other, &v1("payment-service", "GET", ORDER)).await;
        assert_generic_401(status, &body);
        let (status, body) = send(&app, "GET", other, &v2("payment-service", ORDER)).await;
        assert_generic_401(status, &body);

        let with_query = format!("{ORDER}?minVersion=3");
        let (status, body) = send(
            &app,
            "GET",
            &with_query,
            &v1("payment-service", "GET", ORDER),
        )
        .await;
        assert_generic_401(status, &body);
        let signed = format!("{ORDER}?minVersion=2");
        let (status, body) = send(&app, "GET", &with_query, &v2("payment-service", &signed)).await;
        assert_generic_401(status, &body);
        // Undecoded: `%41` is not `A`.
        let encoded = format!("{ORDER}?q=%41");
        let decoded = format!("{ORDER}?q=A");
        let (status, body) = send(
            &app,
            "GET",
            &encoded,
            &v1("payment-service", "GET", &decoded),
        )
        .await;
        assert_generic_401(status, &body);
        let (status, _) = send(
            &app,
            "GET",
            &encoded,
            &v1("payment-service", "GET", &encoded),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // The stripped path (inside the nest) is not what the caller signs.
        let (status, body) = send(
            &app,
            "GET",
            ORDER,
            &v1("payment-service", "GET", &ORDER["/internal".len()..]),
        )
        .await;
        assert_generic_401(status, &body);
        // Nor is another method.
        let (status, body) = send(&app, "GET", ORDER, &v1("payment-service", "POST", ORDER)).await;
        assert_generic_401(status, &body);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn callers_are_checked_against_allowlist_and_route(pool: PgPool) {
        let app = app(pool, shared_keys());
        let (status, body) = send(&app, "GET", ORDER, &v1("unknown-service", "GET", ORDER)).await;
        assert_forbidden(status, &body);
        let (status, body) = send(&app, "GET", ORDER, &v2("unknown-service", ORDER)).await;
        assert_forbidden(status, &body);
        // Known, but the read route is open to payment-service only.
        let (status, body) =
            send(&app, "GET", ORDER, &v1("blockchain-service", "GET", ORDER)).await;
        assert_forbidden(status, &body);
        let (status, body) =
            send(&app, "GET", ITEMS, &v1("blockchain-service", "GET", ITEMS)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = send(&app, "GET", ITEMS, &v2("payment-service", ITEMS)).await;
        assert_forbidden(status, &body);
        // The caller check comes before the signature check (docs/contract.md §4.3 order)...
        let h = with(
            v1("unknown-service", "GET", ORDER),
            v1_header::SIGNATURE,
            REJECTED_BYPASS,
        );
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_forbidden(status, &body);
        // ...and after the timestamp check.
        let stale = now_ms() - 6 * 60 * 1000;
        let h = v1_headers(SECRET.as_bytes(), "unknown-service", "GET", ORDER, stale);
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_unauthorized(status, &body, TIMESTAMP_EXPIRED);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn missing_or_malformed_headers_are_generic_401s(pool: PgPool) {
        let app = app(pool, shared_keys());
        let (status, body) = send(&app, "GET", ORDER, &Vec::new()).await;
        assert_generic_401(status, &body);

        let h = v1("payment-service", "GET", ORDER);
        for name in [v1_header::SERVICE, v1_header::TIMESTAMP, v1_header::NONCE] {
            let mut missing = h.clone();
            missing.retain(|(k, _)| *k != name);
            let (status, body) = send(&app, "GET", ORDER, &missing).await;
            assert_generic_401(status, &body);
        }
        let h2 = v2("payment-service", ORDER);
        for name in [v2_header::SERVICE, v2_header::TIMESTAMP] {
            let mut missing = h2.clone();
            missing.retain(|(k, _)| *k != name);
            let (status, body) = send(&app, "GET", ORDER, &missing).await;
            assert_generic_401(status, &body);
        }
        for ts in [
            "",
            "abc",
            "-1",
            "+1769000000000",
            "1.769e12",
            "17690000000000000000",
        ] {
            let (status, body) = send(
                &app,
                "GET",
                ORDER,
                &with(h.clone(), v1_header::TIMESTAMP, ts),
            )
            .await;
            assert_generic_401(status, &body);
        }
        // A nonce longer than the store accepts, or with the field separator in it.
        for nonce in ["a".repeat(MAX_NONCE_LEN + 1), "ab:cd".to_owned()] {
            let ts = h[1].1.clone();
            let sig = sign_v1(
                SECRET.as_bytes(),
                "payment-service",
                &ts,
                &nonce,
                "GET",
                ORDER,
            );
            let bad = with(
                with(h.clone(), v1_header::NONCE, &nonce),
                v1_header::SIGNATURE,
                &sig,
            );
            let (status, body) = send(&app, "GET", ORDER, &bad).await;
            assert_generic_401(status, &body);
        }
        // A header sent twice.
        let mut twice = h.clone();
        twice.push((v1_header::SERVICE, "payment-service".into()));
        let (status, body) = send(&app, "GET", ORDER, &twice).await;
        assert_generic_401(status, &body);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn rotated_and_per_service_keys(pool: PgPool) {
        let per_service =
            "payment-service=payment-key-0123456789abcdef0123|payment-old-0123456789abcdef0123";
        let keys = KeyRing::from_config(Some(SECRET), Some(OLD_SECRET), Some(per_service)).unwrap();
        let app = app(pool, keys);

        // The shared previous key still works for services without their own keys.
        let h = v1_headers(
            OLD_SECRET.as_bytes(),
            "blockchain-service",
            "GET",
            ITEMS,
            now_ms(),
        );
        assert_eq!(send(&app, "GET", ITEMS, &h).await.0, StatusCode::OK);
        let h = v2_headers(OLD_SECRET.as_bytes(), "ticket-service", ITEMS, now_ms());
        assert_eq!(send(&app, "GET", ITEMS, &h).await.0, StatusCode::OK);

        // payment-service has its own keys: current and previous pass, the shared one does not.
        for key in [
            "payment-key-0123456789abcdef0123",
            "payment-old-0123456789abcdef0123",
        ] {
            let h = v1_headers(key.as_bytes(), "payment-service", "GET", ORDER, now_ms());
            assert_eq!(
                send(&app, "GET", ORDER, &h).await.0,
                StatusCode::OK,
                "{key}"
            );
        }
        let (status, body) = send(&app, "GET", ORDER, &v1("payment-service", "GET", ORDER)).await;
        assert_generic_401(status, &body);
        // A key that was never configured.
        let h = v2_headers(
            b"another-key-0123456789abcdef0123",
            "blockchain-service",
            ITEMS,
            now_ms(),
        );
        let (status, body) = send(&app, "GET", ITEMS, &h).await;
        assert_generic_401(status, &body);
    }

    /// A read runs its handler alongside the nonce record, a command only after it: a replayed
    /// command never reaches its handler, and a replayed read gets its 401 and not the
    /// handler's answer.
    #[sqlx::test(migrations = "../migrations")]
    async fn only_reads_run_alongside_the_nonce_record(pool: PgPool) {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = {
            let runs = Arc::clone(&runs);
            move || {
                let runs = Arc::clone(&runs);
                async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Json(json!({"ran": true}))
                }
            }
        };
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool),
        );
        let app = Router::new()
            .route(ORDER, get(counted.clone()))
            .route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersRead),
                authenticate,
            ))
            .merge(Router::new().route(CANCEL, post(counted)).route_layer(
                middleware::from_fn_with_state(auth.guard(RoutePolicy::OrdersCancel), authenticate),
            ));
        let runs = || runs.load(std::sync::atomic::Ordering::SeqCst);

        let h = v1("api-gateway", "POST", CANCEL);
        assert_eq!(send(&app, "POST", CANCEL, &h).await.0, StatusCode::OK);
        assert_eq!(runs(), 1);
        let (status, body) = send(&app, "POST", CANCEL, &h).await;
        assert_generic_401(status, &body);
        assert_eq!(runs(), 1, "a replayed command reached its handler");

        let h = v1("payment-service", "GET", ORDER);
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_eq!((status, &body["ran"]), (StatusCode::OK, &json!(true)));
        let (status, body) = send(&app, "GET", ORDER, &h).await;
        assert_generic_401(status, &body);
        assert_eq!(body.get("ran"), None, "a replayed read leaked its answer");
    }

    /// A command whose guard defers the nonce runs its handler at once; whatever the handler
    /// does with the pending nonce (here: nothing), it is settled before the answer leaves, and
    /// a replay's answer is the 401 however its handler answered.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_deferred_nonce_is_settled_after_the_handler_whatever_it_did(pool: PgPool) {
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool.clone()),
        );
        let ignores = || async { Json(json!({"ran": true})) };
        let takes = |_nonce: PendingNonce| async { Json(json!({"took": true})) };
        let refuses = || async { (StatusCode::CONFLICT, Json(json!({"refused": true}))) };
        let guard = |policy| {
            middleware::from_fn_with_state(auth.guard(policy).deferring_nonce(), authenticate)
        };
        let app = Router::new()
            .route(
                CANCEL,
                post(ignores).route_layer(guard(RoutePolicy::OrdersCancel)),
            )
            .route(
                "/api/v1/orders/{id}/reserve",
                post(takes).route_layer(guard(RoutePolicy::OrdersReserve)),
            )
            .route(
                "/api/v1/orders/{id}/confirm",
                post(refuses).route_layer(guard(RoutePolicy::OrdersConfirm)),
            );
        let reserve = "/api/v1/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/reserve";
        let confirm = "/api/v1/orders/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b/confirm";
        for (url, service, status, field) in [
            (CANCEL, "api-gateway", StatusCode::OK, "ran"),
            (reserve, "api-gateway", StatusCode::OK, "took"),
            (confirm, "payment-service", StatusCode::CONFLICT, "refused"),
        ] {
            let h = v1(service, "POST", url);
            let (got, body) = send(&app, "POST", url, &h).await;
            assert_eq!((got, &body[field]), (status, &json!(true)), "{url}");
            let (got, body) = send(&app, "POST", url, &h).await;
            assert_generic_401(got, &body);
            let h = v2(service, url);
            assert_eq!(send(&app, "POST", url, &h).await.0, status, "{url}");
            let (got, body) = send(&app, "POST", url, &h).await;
            assert_generic_401(got, &body);
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 6, "each first use recorded once");

        // The nonce store down: a 500, not the handler's answer.
        sqlx::query("DROP TABLE auth_nonces")
            .execute(&pool)
            .await
            .unwrap();
        let (got, body) = send(&app, "POST", CANCEL, &v1("api-gateway", "POST", CANCEL)).await;
        assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body.get("ran"), None);
    }

    /// A command that failed with its key in doubt (its append may have committed the key
    /// before the connection dropped) keeps its 5xx: a 401 would tell the caller to stop, not to
    /// retry. Simulated by a handler that records the key itself and answers 503.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_failed_command_whose_key_was_taken_keeps_its_5xx(pool: PgPool) {
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool.clone()),
        );
        let db = pool.clone();
        let in_doubt = move |nonce: PendingNonce| {
            let db = db.clone();
            async move {
                sqlx::query(
                    "INSERT INTO auth_nonces (service, nonce, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(nonce.service())
                .bind(nonce.key())
                .bind(nonce.expires_at())
                .execute(&db)
                .await
                .unwrap();
                drop(nonce);
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"inDoubt": true})),
                )
            }
        };
        let app = Router::new().route(
            CANCEL,
            post(in_doubt).route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersCancel).deferring_nonce(),
                authenticate,
            )),
        );
        let h = v1("api-gateway", "POST", CANCEL);
        let (got, body) = send(&app, "POST", CANCEL, &h).await;
        assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["inDoubt"], json!(true));
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(rows, 1, "the key recorded once");
    }

    async fn recorded_keys(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM auth_nonces")
            .fetch_one(pool)
            .await
            .unwrap()
    }

    /// A command that ran out of the request's database deadline still spends its key: the
    /// record after the handler is not bound by the deadline it used up, so a copy of the
    /// request is refused later.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_command_past_its_deadline_still_spends_its_key(pool: PgPool) {
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool.clone()),
        );
        let slow = |_nonce: PendingNonce| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"late": true})))
        };
        let app = Router::new()
            .route(
                CANCEL,
                post(slow).route_layer(middleware::from_fn_with_state(
                    auth.guard(RoutePolicy::OrdersCancel).deferring_nonce(),
                    authenticate,
                )),
            )
            .layer(middleware::from_fn(|request: Request, next: Next| {
                crate::deadline::scope(Duration::from_millis(20), next.run(request))
            }));
        let h = v1("api-gateway", "POST", CANCEL);
        let (got, _) = send(&app, "POST", CANCEL, &h).await;
        assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE);
        assert!(eventually_one_key(&pool).await, "the key was not spent");
    }

    /// Whether the one key of a test is recorded within 2 s: a key spent after a failed or
    /// dropped request is recorded in the background.
    async fn eventually_one_key(pool: &PgPool) -> bool {
        for _ in 0..100 {
            if recorded_keys(pool).await == 1 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A request dropped while its handler runs (the client went away) spends its key on the
    /// way out.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_command_dropped_before_its_answer_spends_its_key(pool: PgPool) {
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool.clone()),
        );
        let never = |_nonce: PendingNonce| std::future::pending::<Json<Value>>();
        let app = Router::new().route(
            CANCEL,
            post(never).route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersCancel).deferring_nonce(),
                authenticate,
            )),
        );
        let h = v1("api-gateway", "POST", CANCEL);
        let dropped =
            tokio::time::timeout(Duration::from_millis(100), send(&app, "POST", CANCEL, &h)).await;
        assert!(dropped.is_err(), "the handler answered");
        assert!(
            eventually_one_key(&pool).await,
            "a dropped request's key was not spent"
        );
    }

    /// The pending nonce is only for handlers behind a deferring guard.
    #[sqlx::test(migrations = "../migrations")]
    async fn a_pending_nonce_behind_a_recording_guard_fails_closed(pool: PgPool) {
        let auth = Authenticator::new(
            shared_keys(),
            CallerPolicy::default(),
            NonceStore::new(pool),
        );
        let takes = |_nonce: PendingNonce| async { Json(json!({"took": true})) };
        let app = Router::new().route(
            CANCEL,
            post(takes).route_layer(middleware::from_fn_with_state(
                auth.guard(RoutePolicy::OrdersCancel),
                authenticate,
            )),
        );
        let (got, _) = send(&app, "POST", CANCEL, &v1("api-gateway", "POST", CANCEL)).await;
        assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[sqlx::test(migrations = "../migrations")]
    async fn a_nonce_store_failure_is_a_500_not_a_pass(pool: PgPool) {
        let app = app(pool.clone(), shared_keys());
        sqlx::query("DROP TABLE auth_nonces")
            .execute(&pool)
            .await
            .unwrap();
        let (status, body) = send(&app, "GET", ORDER, &v1("payment-service", "GET", ORDER)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["message"], "An internal error occurred");
    }

    #[tokio::test]
    async fn caller_without_the_middleware_fails_closed() {
        let app = Router::new().route("/x", get(whoami));
        let (status, _) = send(&app, "GET", "/x", &Vec::new()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
