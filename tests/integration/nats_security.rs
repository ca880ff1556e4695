//! The NATS trust boundary with a real server: a private nats-server on a free port runs the
//! permission model of `deploy/nats/permissions.conf` behind TLS with a CA this test makes, and
//! the service connects to it with its own credential.
//!
//! What must hold: the service works over TLS with its credential (relay out, consumers in) on
//! streams that nats-admin provisioned and it cannot change; no account but payment-service can
//! put a `payment.succeeded` on the stream, so no one else can confirm an order; each account
//! reads only its own inbox; the CLI works within order-service's rights (and dead letters are
//! redriven with the break-glass account); a server list and a URL's `user:password@` work; and
//! a credential the server refuses, or a server the CA does not vouch for, stops start-up with
//! an error that names the setting to fix.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, Context};
use futures::StreamExt;
use order_api::app::messages::OrderInboundHandler;
use order_api::app::store::OrderStore;
use order_api::config::{AppEnv, Settings};
use order_api::startup::Application;
use order_bus::dlq::RedriveTarget;
use order_bus::inbound::Family;
use order_domain::OrderStatus;
use order_tests::soak::procs::{free_port, nats_server_binary, ScratchDir};
use order_tests::{install_crypto, spawn_app_with, TestApp};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The users of permissions.conf this test connects as.
const USERS: [&str; 6] = [
    "order-service",
    "payment-service",
    "ticket-service",
    "event-service",
    "order-service-redrive",
    "nats-admin",
];

/// A private nats-server with TLS and the platform's permission model.
struct SecureNats {
    port: u16,
    dir: ScratchDir,
    child: Child,
}

impl SecureNats {
    fn start() -> Self {
        install_crypto();
        let dir = ScratchDir::new("nats-secure");
        write_certificates(&dir.path);
        let port = free_port();
        let permissions =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/permissions.conf");
        std::fs::copy(&permissions, dir.path.join("permissions.conf"))
            .expect("deploy/nats/permissions.conf is readable");
        let config = format!(
            "host: 127.0.0.1\nport: {port}\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\", timeout: 2 }}\n\
             include \"permissions.conf\"\n",
            store = dir.path.join("store").display(),
            cert = dir.path.join("server.pem").display(),
            key = dir.path.join("server-key.pem").display(),
        );
        std::fs::write(dir.path.join("server.conf"), config).expect("write the server config");
        let child = spawn_server(&dir.path, port);
        Self { port, dir, child }
    }

    /// Stops the server (its port and files stay), for [`SecureNats::restart`].
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same files.
    fn restart(&mut self) {
        self.stop();
        self.child = spawn_server(&self.dir.path, self.port);
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path.join("ca.pem")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("server.log")).unwrap_or_default()
    }

    /// A client connected as `user`, trusting the test's CA, with the inbox prefix the
    /// permission model gives that user.
    async fn client_as(&self, user: &str) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password(user.to_owned(), password(user))
            .add_root_certificates(self.ca_file())
            .require_tls(true)
            .custom_inbox_prefix(format!("_INBOX_{user}"))
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"))
    }

    /// A JetStream client connected as `user` (see [`SecureNats::client_as`]).
    async fn connect_as(&self, user: &str) -> Context {
        let mut js = jetstream::new(self.client_as(user).await);
        js.set_timeout(Duration::from_secs(2));
        js
    }

    /// Settings for the CLI as `user` on this server, on the database of `pool`.
    async fn cli_settings(&self, user: &str, pool: &PgPool) -> Settings {
        let mut s = Settings::for_tests(&database_url(pool).await);
        self.service_settings(&mut s);
        s.nats.user = Some(user.to_owned());
        s.nats.password = Some(password(user).into());
        s
    }

    /// Creates both streams as nats-admin with `order-service streams`, as a deployment does.
    async fn provision(&self, pool: &PgPool) {
        let admin = self.cli_settings("nats-admin", pool).await;
        let out = order_api::cli::streams(&admin)
            .await
            .unwrap_or_else(|e| panic!("nats-admin provisions the streams: {e:#}\n{}", self.log()));
        assert!(out.contains("TICKETTOKEN_EVENTS: created"), "{out}");
    }

    /// Waits up to 5 s for the server log to contain `line`.
    async fn wait_for_log(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log().contains(line) {
            assert!(
                Instant::now() < deadline,
                "the server never logged {line:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The service's settings for this server: its credential, the CA, production names.
    fn service_settings(&self, s: &mut Settings) {
        s.nats.url = self.url().into();
        s.nats.user = Some("order-service".into());
        s.nats.password = Some(password("order-service").into());
        s.nats.tls_ca_file = Some(self.ca_file());
        s.nats.require_tls = true;
        s.streams.events = "TICKETTOKEN_EVENTS".into();
        s.streams.subject_prefix = String::new();
        s.streams.dlq = "ORDER_SERVICE_DLQ".into();
        s.relay.enabled = true;
        s.inbound.enabled = true;
        s.inbound.backoff_ms = vec![50];
        // The shipped model: nats-admin provisions the streams, the service may not.
        s.streams.create = false;
    }
}

/// Asserts that a JetStream API request (`$JS.API.INFO`) through `client` gets its answer,
/// which proves the connection authenticated, allowed to ask, and able to read its inbox.
async fn jetstream_answers(client: &async_nats::Client, what: &str) {
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        client.request("$JS.API.INFO", Vec::<u8>::new().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("no JetStream answer {what} within 5 s"))
    .unwrap_or_else(|e| panic!("no JetStream answer {what}: {e}"));
    assert!(
        String::from_utf8_lossy(&answer.payload)
            .contains("io.nats.jetstream.api.v1.account_info_response"),
        "{what}: {:?}",
        answer.payload
    );
}

/// The URL of the database behind `pool` (a per-test database).
async fn database_url(pool: &PgPool) -> String {
    let db: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .expect("database name");
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{db}")
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs nats-server with `dir`'s server.conf, and waits until it listens on `port`.
fn spawn_server(dir: &Path, port: u16) -> Child {
    let mut command = Command::new(nats_server_binary());
    command
        .arg("-c")
        .arg(dir.join("server.conf"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for user in USERS {
        command.env(password_variable(user), password(user));
    }
    let child = command.spawn().expect("nats-server starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn password_variable(user: &str) -> String {
    format!("{}_NATS_PASSWORD", user.replace('-', "_").to_uppercase())
}

/// Each user's password for this process's servers.
fn password(user: &str) -> String {
    static SALT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(|| Uuid::new_v4().simple().to_string());
    format!("{user}-{salt}")
}

/// A CA, and a server certificate it signs for 127.0.0.1 and localhost.
fn write_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "order-service test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params")
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("write server.pem");
    std::fs::write(dir.join("server-key.pem"), server_key.serialize_pem())
        .expect("write server-key.pem");
}

fn paid(order: &str, amount: i64) -> Value {
    json!({"id": format!("pay-{order}"), "type": "payment.succeeded",
           "payload": {"orderId": order, "paymentIntentId": "pi_tls", "amountCents": amount, "currency": "USD"}})
}

/// Publishes `body` on `subject` as whoever `js` is, and says whether the stream took it.
async fn stream_takes(js: &Context, subject: &str, body: &Value) -> bool {
    match js
        .publish(subject.to_owned(), body.to_string().into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

async fn status_of(app: &TestApp, id: Uuid) -> OrderStatus {
    app.state
        .store
        .load(id)
        .await
        .expect("load")
        .expect("order exists")
        .status
}

#[sqlx::test(migrations = "../migrations")]
async fn over_tls_with_its_credential_the_service_works_and_only_payment_service_can_pay(
    pool: PgPool,
) {
    let nats = SecureNats::start();
    nats.provision(&pool).await;
    let app = spawn_app_with(pool, |s| nats.service_settings(s)).await;
    let order = app.create_order().await;
    let id: Uuid = order["id"].as_str().expect("id").parse().expect("uuid");
    let total = order["totalCents"].as_i64().expect("totalCents");

    // The relay published order.created over TLS as order-service; payment-service reads it
    // through its own durable.
    let payments = nats.connect_as("payment-service").await;
    let stream = payments
        .get_stream("TICKETTOKEN_EVENTS")
        .await
        .expect("payment-service sees the stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("payment-service".into()),
            filter_subject: "order.>".into(),
            ..Default::default()
        })
        .await
        .expect("payment-service creates its own durable");
    let mut messages = consumer.messages().await.expect("pull");
    let first = tokio::time::timeout(Duration::from_secs(15), messages.next())
        .await
        .expect("order.created arrives within 15 s")
        .expect("a message")
        .expect("readable");
    let envelope: Value = serde_json::from_slice(&first.payload).expect("JSON envelope");
    assert_eq!(envelope["type"], "order.created");
    assert_eq!(envelope["aggregateId"], id.to_string());
    first
        .ack()
        .await
        .expect("payment-service acks its own message");

    // payment-service cannot take over order-service's durable, nor delete the stream.
    assert!(
        stream
            .get_consumer::<pull::Config>("order-service-payment")
            .await
            .is_err(),
        "payment-service read order-service's durable"
    );
    assert!(payments.delete_stream("TICKETTOKEN_EVENTS").await.is_err());

    // Nor can order-service change the stream it publishes to: allowing rollups (or adding a
    // republish rule) would let a leaked credential drop or inject money messages.
    let order_service = nats.connect_as("order-service").await;
    let mut config = order_service
        .get_stream("TICKETTOKEN_EVENTS")
        .await
        .expect("order-service sees the stream")
        .info()
        .await
        .expect("stream info")
        .config
        .clone();
    config.allow_rollup = true;
    assert!(
        order_service.update_stream(&config).await.is_err(),
        "order-service updated the stream"
    );
    nats.wait_for_log(
        "Publish Violation - User \"order-service\", Subject \"$JS.API.STREAM.UPDATE.TICKETTOKEN_EVENTS\"",
    )
    .await;

    // Every account but payment-service is refused payment.succeeded, the order's own service
    // included; the order stays pending.
    for user in ["event-service", "ticket-service", "order-service"] {
        let js = nats.connect_as(user).await;
        assert!(
            !stream_takes(&js, "payment.succeeded", &paid(&id.to_string(), total)).await,
            "{user} published payment.succeeded"
        );
    }
    let event_service = nats.connect_as("event-service").await;
    assert!(
        !stream_takes(
            &event_service,
            "dispute.closed",
            &json!({"id": "forged", "type": "dispute.closed"})
        )
        .await,
        "event-service published dispute.closed"
    );
    assert!(
        nats.log()
            .contains("Publish Violation - User \"event-service\", Subject \"payment.succeeded\""),
        "the server logged no refusal:\n{}",
        nats.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, id).await, OrderStatus::Pending);

    // payment-service's message is consumed by the service over TLS and confirms the order.
    assert!(
        stream_takes(
            &payments,
            "payment.succeeded",
            &paid(&id.to_string(), total)
        )
        .await
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while status_of(&app, id).await != OrderStatus::Paid {
        assert!(
            Instant::now() < deadline,
            "not confirmed within 15 s; server log:\n{}",
            nats.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the two refusals this test provoked: none of the service's own calls.
    let log = nats.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Violation - User \"order-service\""))
        .filter(|l| !l.contains("STREAM.UPDATE") && !l.contains("payment.succeeded"))
        .collect();
    assert!(
        refused.is_empty(),
        "order-service's own calls were refused:\n{}",
        refused.join("\n")
    );
}

/// Builds the application with `adjust` applied to settings for `nats`, and returns the
/// start-up error's full text.
async fn start_up_error(
    pool: PgPool,
    nats: &SecureNats,
    adjust: impl FnOnce(&mut Settings),
) -> String {
    install_crypto();
    let mut s = Settings::for_tests("postgres://unused");
    nats.service_settings(&mut s);
    s.relay.enabled = false;
    s.inbound.enabled = false;
    adjust(&mut s);
    match Application::build_with_pool(s, pool).await {
        Ok(_) => panic!("start-up was not refused"),
        Err(e) => format!("{e:#}"),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_wrong_credential_or_an_unknown_ca_is_a_clear_start_up_error(pool: PgPool) {
    let nats = SecureNats::start();
    let text = start_up_error(pool.clone(), &nats, |s| {
        s.nats.password = Some("not-the-password".into());
    })
    .await;
    assert!(
        text.contains("refused this service's credential") && text.contains("NATS_PASSWORD"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");

    let text = start_up_error(pool.clone(), &nats, |s| s.nats.tls_ca_file = None).await;
    assert!(
        text.contains("TLS with NATS") && text.contains("NATS_TLS_CA_FILE"),
        "{text}"
    );

    let text = start_up_error(pool.clone(), &nats, |s| {
        s.nats.tls_ca_file = Some("/nonexistent/ca.pem".into());
    })
    .await;
    assert!(
        text.contains("NATS_TLS_CA_FILE=/nonexistent/ca.pem cannot be read"),
        "{text}"
    );

    // Production refuses a plain, unauthenticated connection before it tries it, unless told.
    let production = |s: &mut Settings| {
        s.app_env = AppEnv::Production;
        s.auth.secret = Some("0123456789abcdef0123456789abcdef-prod".into());
        s.peers.payment_url = "https://payments.internal".into();
        s.peers.ticket_url = "https://tickets.internal".into();
        s.peers.event_url = "https://events.internal".into();
        s.nats.url = "nats://127.0.0.1:1".into();
        s.nats.user = None;
        s.nats.password = None;
        s.nats.tls_ca_file = None;
        s.nats.require_tls = false;
    };
    let text = start_up_error(pool.clone(), &nats, production).await;
    assert!(
        text.contains("refused in production") && text.contains("NATS_ALLOW_INSECURE"),
        "{text}"
    );
    install_crypto();
    let mut s = Settings::for_tests("postgres://unused");
    production(&mut s);
    s.nats.allow_insecure = true;
    Application::build_with_pool(s, pool)
        .await
        .expect("NATS_ALLOW_INSECURE=true lets it start (with a warning)");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_server_list_connects_past_a_dead_server(pool: PgPool) {
    let nats = SecureNats::start();
    let dead = free_port();
    let mut s = Settings::for_tests("postgres://unused");
    nats.service_settings(&mut s);
    s.nats.url = format!("tls://127.0.0.1:{dead}, tls://127.0.0.1:{}", nats.port).into();
    let client = s
        .nats_security()
        .connect_once(s.nats.url.expose_secret(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the second server of the list answers: {e}"));
    jetstream_answers(&client, "through the live server").await;

    // The service's own start-up takes the same list.
    s.relay.enabled = false;
    s.inbound.enabled = false;
    Application::build_with_pool(s, pool)
        .await
        .expect("the service starts with a server list");
}

#[tokio::test]
async fn a_user_and_password_in_the_url_is_the_credential_sent() {
    let nats = SecureNats::start();
    let mut s = Settings::for_tests("postgres://unused");
    nats.service_settings(&mut s);
    s.nats.user = None;
    s.nats.password = None;
    s.nats.url = format!(
        "tls://order-service:{}@127.0.0.1:{}",
        password("order-service"),
        nats.port
    )
    .into();
    let client = s
        .nats_security()
        .connect_once(s.nats.url.expose_secret(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the URL's credential is accepted: {e}"));
    jetstream_answers(&client, "as order-service").await;
    assert!(
        !nats.log().contains("Authorization Error"),
        "the server refused the URL's credential:\n{}",
        nats.log()
    );

    // Two credentials are one too many.
    s.nats.user = Some("order-service".into());
    s.nats.password = Some(password("order-service").into());
    let err = s
        .nats_security()
        .connect_once(s.nats.url.expose_secret(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NATS_USER"), "{err}");
    assert!(
        !err.to_string().contains(&password("order-service")),
        "{err}"
    );
}

#[tokio::test]
async fn no_account_can_read_another_accounts_inbox() {
    let nats = SecureNats::start();
    let snoop = nats.client_as("event-service").await;
    let mut replies = snoop
        .subscribe("_INBOX_order-service.>")
        .await
        .expect("the subscription is sent");
    let mut all = snoop.subscribe("_INBOX.>").await.expect("sent");
    snoop.flush().await.expect("flush");
    nats.wait_for_log(
        "Subscription Violation - User \"event-service\", Subject \"_INBOX_order-service.>\"",
    )
    .await;
    nats.wait_for_log("Subscription Violation - User \"event-service\", Subject \"_INBOX.>\"")
        .await;

    // order-service's replies (a JetStream call with the service's own settings) reach it and
    // no one else.
    let mut s = Settings::for_tests("postgres://unused");
    nats.service_settings(&mut s);
    let client = s
        .nats_security()
        .connect_once(s.nats.url.expose_secret(), Duration::from_secs(5))
        .await
        .expect("order-service connects");
    jetstream_answers(&client, "on order-service's own inbox").await;
    for sub in [&mut replies, &mut all] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .ok()
                .flatten()
                .is_none(),
            "event-service read order-service's reply"
        );
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn the_subscribe_command_works_as_order_service_and_respects_the_production_rule(
    pool: PgPool,
) {
    let nats = SecureNats::start();
    nats.provision(&pool).await;
    let order_service = nats.connect_as("order-service").await;
    let envelope = json!({"id": "e1", "type": "order.created", "aggregateId": "a1",
                          "sequenceNumber": 1, "payload": {}});
    assert!(stream_takes(&order_service, "order.created", &envelope).await);

    let s = nats.cli_settings("order-service", &pool).await;
    let lines = order_api::cli::subscribe(&s, None, 5, Duration::from_secs(1), true)
        .await
        .unwrap_or_else(|e| panic!("subscribe as order-service: {e:#}\n{}", nats.log()));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("\"order.created\""), "{lines:?}");
    // Its consumer is gone afterwards, and a second run reads from the start again.
    let admin = nats.connect_as("nats-admin").await;
    let stream = admin
        .get_stream("TICKETTOKEN_EVENTS")
        .await
        .expect("stream");
    assert!(stream
        .get_consumer::<pull::Config>(order_api::cli::SUBSCRIBE_CONSUMER)
        .await
        .is_err());
    let again = order_api::cli::subscribe(&s, None, 5, Duration::from_secs(1), true)
        .await
        .expect("subscribe again");
    assert_eq!(again.len(), 1, "{again:?}");

    // The CLI applies the production rule as start-up does.
    let mut plain = s.clone();
    plain.app_env = AppEnv::Production;
    plain.nats.url = format!("nats://127.0.0.1:{}", nats.port).into();
    plain.nats.user = None;
    plain.nats.password = None;
    plain.nats.tls_ca_file = None;
    plain.nats.require_tls = false;
    let err = order_api::cli::subscribe(&plain, None, 5, Duration::from_secs(1), true)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("refused in production"),
        "{err:#}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn dead_letters_are_redriven_with_the_break_glass_account_only(pool: PgPool) {
    let nats = SecureNats::start();
    nats.provision(&pool).await;
    let service = nats.cli_settings("order-service", &pool).await;
    let payments = order_api::consumers::subscriber(
        &service,
        Family::Payment,
        nats.connect_as("order-service").await,
        pool.clone(),
        OrderInboundHandler::new(OrderStore::new(pool.clone())),
    );
    let payment_service = nats.connect_as("payment-service").await;
    assert!(stream_takes(&payment_service, "payment.succeeded", &json!("garbage")).await);
    let mut parked = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while parked == 0 {
        assert!(Instant::now() < deadline, "nothing parked:\n{}", nats.log());
        parked += payments.run_once().await.expect("round").parked;
    }
    assert_eq!(
        order_api::cli::dlq_list(&service, true)
            .await
            .expect("order-service lists its dead letters")
            .lines()
            .count(),
        1
    );

    // The service's own credential may not publish payment.*: a clear error, nothing lost.
    let err = order_api::cli::dlq_redrive(&service, RedriveTarget::All)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("NATS_USER=order-service-redrive") && text.contains("payment.*"),
        "{text}"
    );
    assert_eq!(
        order_api::cli::dlq_list(&service, true)
            .await
            .expect("list")
            .lines()
            .count(),
        1,
        "the parked message was lost"
    );

    let redrive = nats.cli_settings("order-service-redrive", &pool).await;
    let report = order_api::cli::dlq_redrive(&redrive, RedriveTarget::All)
        .await
        .unwrap_or_else(|e| panic!("redrive as order-service-redrive: {e:#}\n{}", nats.log()));
    assert_eq!(report.republished.len(), 1, "{report:?}");
    assert!(order_api::cli::dlq_list(&service, true)
        .await
        .expect("list")
        .is_empty());
}

/// Log output collected in memory.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("buffer")).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn a_credential_refused_after_background_retries_is_logged_naming_the_settings() {
    let buffer = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("order_bus=error")
        .with_writer(buffer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The server is down at start-up, so the client retries in the background; when it comes
    // back, it refuses the password.
    let mut nats = SecureNats::start();
    nats.stop();
    let mut s = Settings::for_tests("postgres://unused");
    nats.service_settings(&mut s);
    s.nats.password = Some("not-the-password".into());
    let _client = s
        .nats_security()
        .connect(s.nats.url.expose_secret(), Duration::from_secs(2), |o| {
            o.reconnect_delay_callback(|_| Duration::from_millis(100))
        })
        .await
        .expect("an unreachable server is retried in the background");
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !buffer
        .text()
        .contains("NATS refused this service's credential")
    {
        assert!(
            Instant::now() < deadline,
            "no error naming the settings was logged:\n{}",
            buffer.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = buffer.text();
    assert!(text.contains("NATS_USER/NATS_PASSWORD"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
}

/// `deploy/nats/nats-server.conf` as shipped (with its TLS files made here) is one nats-server
/// accepts.
#[test]
fn the_shipped_server_configuration_is_valid() {
    let dir = ScratchDir::new("nats-config");
    write_certificates(&dir.path);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats");
    std::fs::copy(
        deploy.join("permissions.conf"),
        dir.path.join("permissions.conf"),
    )
    .expect("copy permissions.conf");
    let shipped =
        std::fs::read_to_string(deploy.join("nats-server.conf")).expect("read nats-server.conf");
    assert!(shipped.contains("/etc/nats/tls/") && shipped.contains("include \"permissions.conf\""));
    // Monitoring names every connection and subscription: loopback only.
    assert!(
        shipped.contains("http: \"127.0.0.1:8222\"") && !shipped.contains("http_port"),
        "monitoring is exposed beyond loopback:\n{shipped}"
    );
    let config = shipped
        .replace("/etc/nats/tls/", &format!("{}/", dir.path.display()))
        .replace(
            "/var/lib/nats",
            &dir.path.join("store").display().to_string(),
        );
    std::fs::write(dir.path.join("nats-server.conf"), config).expect("write the config");
    let mut check = Command::new(nats_server_binary());
    check
        .arg("-t")
        .arg("-c")
        .arg(dir.path.join("nats-server.conf"));
    for user in USERS {
        check.env(password_variable(user), password(user));
    }
    let out = check.output().expect("nats-server runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
