//! The NATS trust boundary with a real server: a private nats-server on a free port runs the
//! permission model of `deploy/nats/permissions.conf` behind TLS with a CA this test makes, and
//! the service connects to it with its own credential.
//!
//! What must hold: the service works over TLS with its credential (relay out, consumers in);
//! no account but payment-service can put a `payment.succeeded` on the stream, so no one else
//! can confirm an order; and a credential the server refuses, or a server the CA does not
//! vouch for, stops start-up with an error that names the setting to fix.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, Context};
use futures::StreamExt;
use order_api::config::{AppEnv, Settings};
use order_api::startup::Application;
use order_domain::OrderStatus;
use order_tests::soak::procs::{free_port, ScratchDir};
use order_tests::{install_crypto, spawn_app_with, TestApp};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

/// The users of permissions.conf this test connects as.
const USERS: [&str; 4] = [
    "order-service",
    "payment-service",
    "ticket-service",
    "event-service",
];

/// A private nats-server with TLS and the platform's permission model.
struct SecureNats {
    port: u16,
    dir: ScratchDir,
    child: Child,
}

impl SecureNats {
    fn start() -> Self {
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
        let mut command = Command::new(nats_server());
        command
            .arg("-c")
            .arg(dir.path.join("server.conf"))
            .arg("-l")
            .arg(dir.path.join("server.log"))
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
                std::fs::read_to_string(dir.path.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, dir, child }
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

    /// A JetStream client connected as `user`, trusting the test's CA.
    async fn connect_as(&self, user: &str) -> Context {
        let client = async_nats::ConnectOptions::new()
            .user_and_password(user.to_owned(), password(user))
            .add_root_certificates(self.ca_file())
            .require_tls(true)
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        let mut js = jetstream::new(client);
        js.set_timeout(Duration::from_secs(2));
        js
    }

    /// The service's settings for this server: its credential, the CA, production names.
    fn service_settings(&self, s: &mut Settings) {
        s.nats_url = self.url();
        s.nats_user = Some("order-service".into());
        s.nats_password = Some(password("order-service"));
        s.nats_tls_ca_file = Some(self.ca_file());
        s.nats_require_tls = true;
        s.nats_stream = "TICKETTOKEN_EVENTS".into();
        s.nats_subject_prefix = String::new();
        s.dlq_stream = "ORDER_SERVICE_DLQ".into();
        s.relay_enabled = true;
        s.inbound_enabled = true;
        s.inbound_backoff_ms = vec![50];
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
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
    assert!(
        !nats
            .log()
            .contains("Publish Violation - User \"order-service\", Subject \"$JS"),
        "order-service's own JetStream calls were refused:\n{}",
        nats.log()
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
    s.relay_enabled = false;
    s.inbound_enabled = false;
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
        s.nats_password = Some("not-the-password".into());
    })
    .await;
    assert!(
        text.contains("refused this service's credential") && text.contains("NATS_PASSWORD"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");

    let text = start_up_error(pool.clone(), &nats, |s| s.nats_tls_ca_file = None).await;
    assert!(
        text.contains("TLS with NATS") && text.contains("NATS_TLS_CA_FILE"),
        "{text}"
    );

    let text = start_up_error(pool.clone(), &nats, |s| {
        s.nats_tls_ca_file = Some("/nonexistent/ca.pem".into());
    })
    .await;
    assert!(
        text.contains("NATS_TLS_CA_FILE=/nonexistent/ca.pem cannot be read"),
        "{text}"
    );

    // Production refuses a plain, unauthenticated connection before it tries it, unless told.
    let production = |s: &mut Settings| {
        s.app_env = AppEnv::Production;
        s.internal_service_secret = Some("0123456789abcdef0123456789abcdef-prod".into());
        s.payment_service_url = "https://payments.internal".into();
        s.ticket_service_url = "https://tickets.internal".into();
        s.event_service_url = "https://events.internal".into();
        s.nats_url = "nats://127.0.0.1:1".into();
        s.nats_user = None;
        s.nats_password = None;
        s.nats_tls_ca_file = None;
        s.nats_require_tls = false;
    };
    let text = start_up_error(pool.clone(), &nats, production).await;
    assert!(
        text.contains("refused in production") && text.contains("NATS_ALLOW_INSECURE"),
        "{text}"
    );
    install_crypto();
    let mut s = Settings::for_tests("postgres://unused");
    production(&mut s);
    s.nats_allow_insecure = true;
    Application::build_with_pool(s, pool)
        .await
        .expect("NATS_ALLOW_INSECURE=true lets it start (with a warning)");
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
    let config = shipped
        .replace("/etc/nats/tls/", &format!("{}/", dir.path.display()))
        .replace(
            "/var/lib/nats",
            &dir.path.join("store").display().to_string(),
        );
    std::fs::write(dir.path.join("nats-server.conf"), config).expect("write the config");
    let mut check = Command::new(nats_server());
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
