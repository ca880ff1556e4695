//! How this service connects to NATS: which credential it presents, whether the link is TLS,
//! and the production rule that refuses a plain, unauthenticated connection.
//!
//! Inbound `payment.*` and `dispute.*` messages move money, so who may publish them is decided
//! by the server's permissions (deploy/nats/), and that only holds when every client proves who
//! it is. This module turns the `NATS_*` settings into the client's connect options, reads every
//! file up front so a wrong path is a start-up error naming the setting, and tells a refused
//! credential (fatal: retrying cannot fix it) from an unreachable server (retried in the
//! background, as before).

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{ClientError, ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError};
use secrecy::{ExposeSecret, SecretString};

/// The connection's credential and TLS settings (all optional: none is a development setup).
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// A `.creds` file: the user JWT and its nkey seed (decentralised, operator-mode auth).
    pub creds_file: Option<PathBuf>,
    /// A file holding a user nkey seed (`SU…`), for servers that list nkey users.
    pub nkey_seed_file: Option<PathBuf>,
    /// User name for user/password auth.
    pub user: Option<String>,
    /// Password for user/password auth.
    pub password: Option<SecretString>,
    /// PEM file of the CA that signed the servers' certificates. When set, it is the only CA
    /// the client trusts: async-nats replaces the system roots with it (a server certificate
    /// from a public CA is then refused).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify: true`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server that does not offer TLS.
    pub require_tls: bool,
    /// Subject prefix of this client's reply inboxes (`_INBOX_order-service`), so that the
    /// server's permissions can let each user read its own replies and no one else's. `None`
    /// keeps the client's default `_INBOX`.
    pub inbox_prefix: Option<String>,
}

/// A parsed `NATS_URL`: the comma-separated servers, without any `user:password@`, and the
/// credential the URLs carried (async-nats does not send a URL's userinfo itself).
#[derive(Debug, Clone)]
pub struct ServerList {
    /// The servers, userinfo removed.
    pub addrs: Vec<ServerAddr>,
    /// The `user:password` the URLs carried (percent-decoded), if any.
    pub user: Option<(String, SecretString)>,
}

impl ServerList {
    /// Splits `url` at commas and parses every server. Servers that carry `user:password@`
    /// must carry the same one.
    ///
    /// # Errors
    /// [`ConnectError::BadUrl`] for an empty list or a server that does not parse;
    /// [`ConnectError::Inconsistent`] when servers carry different credentials.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let mut addrs = Vec::new();
        let mut user: Option<(String, String)> = None;
        for server in servers(url) {
            let addr: ServerAddr = server.parse().map_err(|e: std::io::Error| {
                ConnectError::BadUrl(format!("{}: {e}", redacted(server)))
            })?;
            let mut inner = addr.into_inner();
            if !inner.username().is_empty() || inner.password().is_some() {
                let this = (
                    percent_decode(inner.username()),
                    percent_decode(inner.password().unwrap_or_default()),
                );
                match &user {
                    Some(seen) if *seen != this => {
                        return Err(ConnectError::Inconsistent(
                            "the servers of NATS_URL carry different user:password@ credentials",
                        ))
                    }
                    _ => user = Some(this),
                }
                // Setting an empty username and no password cannot fail on a nats/tls URL.
                let _ = inner.set_username("");
                let _ = inner.set_password(None);
            }
            let addr = ServerAddr::from_url(inner)
                .map_err(|e| ConnectError::BadUrl(format!("{}: {e}", redacted(server))))?;
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(ConnectError::BadUrl("no server is listed".into()));
        }
        Ok(Self {
            addrs,
            user: user.map(|(u, p)| (u, SecretString::from(p))),
        })
    }

    /// Whether any server is a `tls://` one.
    pub fn any_tls(&self) -> bool {
        self.addrs.iter().any(ServerAddr::tls_required)
    }
}

/// Why a NATS connection cannot be set up. Each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A file setting points at something that cannot be read.
    #[error("{setting}={path} cannot be read: {reason}")]
    Unreadable {
        /// The environment variable.
        setting: &'static str,
        /// Its value.
        path: String,
        /// What the file system said.
        reason: String,
    },
    /// Settings that only work together, or that exclude each other.
    #[error("{0}")]
    Inconsistent(&'static str),
    /// Production with no TLS or no credential, without `NATS_ALLOW_INSECURE=true`.
    #[error(
        "a NATS connection without {missing} is refused in production: set {remedy}, \
         or NATS_ALLOW_INSECURE=true to accept it"
    )]
    Insecure {
        /// "TLS", "a credential" or both.
        missing: &'static str,
        /// The settings that would fix it.
        remedy: &'static str,
    },
    /// The server refused the credential: retrying cannot help, so start-up stops.
    #[error("NATS at {url} refused this service's credential ({detail}); check {settings}")]
    Refused {
        /// The server list, without any password.
        url: String,
        /// The client's description of the refusal.
        detail: String,
        /// The settings that carry the credential.
        settings: &'static str,
    },
    /// The TLS handshake failed (untrusted server certificate, client certificate refused…).
    #[error("TLS with NATS at {url} failed ({detail}); check NATS_TLS_CA_FILE, NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE")]
    Tls {
        /// The server list, without any password.
        url: String,
        /// The client's description of the failure.
        detail: String,
    },
    /// The server list itself cannot be parsed.
    #[error("NATS_URL is not a valid server list: {0}")]
    BadUrl(String),
    /// No server answered (a one-off command does not retry).
    #[error("cannot reach NATS at {url}: {reason}")]
    Unreachable {
        /// The server list, without any password.
        url: String,
        /// Why the last attempt failed.
        reason: String,
    },
}

/// Whether the first attempt to connect failed for a reason retrying cannot fix.
#[derive(Debug)]
pub enum FirstAttempt {
    /// Connected.
    Connected(async_nats::Client),
    /// Not reachable now (down, timed out): worth retrying in the background.
    Unreachable(String),
}

const CREDENTIAL_SETTINGS: &str = "NATS_CREDS_FILE, NATS_NKEY_SEED_FILE or NATS_USER/NATS_PASSWORD";

impl NatsSecurity {
    /// Whether a credential is configured, here or as `user:password@` in the URL (which
    /// [`NatsSecurity::options`] sends as user/password auth).
    pub fn is_authenticated(&self, url: &str) -> bool {
        self.creds_file.is_some()
            || self.nkey_seed_file.is_some()
            || self.user.is_some()
            || ServerList::parse(url).is_ok_and(|list| list.user.is_some())
    }

    /// Whether every connection is TLS for the production rule: every server `tls://`,
    /// `NATS_REQUIRE_TLS`, or a TLS file.
    pub fn uses_tls(&self, url: &str) -> bool {
        self.require_tls
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || servers(url).all(|s| s.starts_with("tls://"))
    }

    /// The production rule: TLS and a credential, unless `allow_insecure` says otherwise (the
    /// caller logs a warning then). Returns what is missing when it is allowed anyway.
    ///
    /// # Errors
    /// [`ConnectError::Insecure`] when something is missing and `allow_insecure` is false.
    pub fn check_production(
        &self,
        url: &str,
        allow_insecure: bool,
    ) -> Result<Option<&'static str>, ConnectError> {
        let missing = match (self.uses_tls(url), self.is_authenticated(url)) {
            (true, true) => return Ok(None),
            (false, true) => ("TLS", "NATS_REQUIRE_TLS=true and NATS_TLS_CA_FILE"),
            (true, false) => ("a credential", CREDENTIAL_SETTINGS),
            (false, false) => (
                "TLS or a credential",
                "NATS_REQUIRE_TLS=true, NATS_TLS_CA_FILE and NATS_CREDS_FILE (or another credential)",
            ),
        };
        if allow_insecure {
            Ok(Some(missing.0))
        } else {
            Err(ConnectError::Insecure {
                missing: missing.0,
                remedy: missing.1,
            })
        }
    }

    /// Whether the client must require TLS of every server, including those it learns from a
    /// cluster's INFO (which it would otherwise dial as `nats://`): any `tls://` server,
    /// `NATS_REQUIRE_TLS`, or a TLS file.
    pub fn tls_in_use(&self, servers: &ServerList) -> bool {
        self.require_tls
            || self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || servers.any_tls()
    }

    /// Connect options carrying the credential (from these settings or the URLs' userinfo),
    /// the TLS settings and the inbox prefix. Files are read here, so a wrong path fails now,
    /// naming its setting.
    ///
    /// # Errors
    /// [`ConnectError::Unreadable`] or [`ConnectError::Inconsistent`].
    pub async fn options(&self, servers: &ServerList) -> Result<ConnectOptions, ConnectError> {
        if servers.user.is_some() && self.user.is_some() {
            return Err(ConnectError::Inconsistent(
                "NATS_URL carries user:password@ and NATS_USER is set: use one of them",
            ));
        }
        let credentials = usize::from(self.creds_file.is_some())
            + usize::from(self.nkey_seed_file.is_some())
            + usize::from(self.user.is_some() || servers.user.is_some());
        if credentials > 1 {
            return Err(ConnectError::Inconsistent(
                "set only one of NATS_CREDS_FILE, NATS_NKEY_SEED_FILE and NATS_USER (or \
                 user:password@ in NATS_URL)",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(ConnectError::Inconsistent(
                "NATS_USER and NATS_PASSWORD are set together or not at all",
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(ConnectError::Inconsistent(
                "NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE are set together or not at all",
            ));
        }
        let mut options = ConnectOptions::new().event_callback(log_refusals);
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(path) = &self.creds_file {
            let text = read("NATS_CREDS_FILE", path).await?;
            options = options
                .credentials(&text)
                .map_err(|e| unreadable("NATS_CREDS_FILE", path, &e))?;
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = read("NATS_NKEY_SEED_FILE", path).await?;
            let seed = seed.trim();
            if !seed.starts_with("SU") {
                return Err(ConnectError::Unreadable {
                    setting: "NATS_NKEY_SEED_FILE",
                    path: path.display().to_string(),
                    reason: "not a user nkey seed (it starts with SU)".into(),
                });
            }
            options = options.nkey(seed.to_owned());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        if let Some((user, password)) = &servers.user {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        if let Some(path) = &self.tls_ca_file {
            read("NATS_TLS_CA_FILE", path).await?;
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            read("NATS_TLS_CERT_FILE", cert).await?;
            read("NATS_TLS_KEY_FILE", key).await?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_in_use(servers) {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// One attempt to connect with these settings to the servers of `url` (a comma-separated
    /// list). A refused credential or a failed TLS handshake is an error; an unreachable
    /// server is [`FirstAttempt::Unreachable`].
    ///
    /// # Errors
    /// [`ConnectError`] for anything retrying cannot fix.
    pub async fn first_attempt(
        &self,
        url: &str,
        timeout: Duration,
        tune: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<FirstAttempt, ConnectError> {
        let servers = ServerList::parse(url)?;
        let options = tune(self.options(&servers).await?).connection_timeout(timeout);
        match options.connect(servers.addrs.as_slice()).await {
            Ok(client) => Ok(FirstAttempt::Connected(client)),
            Err(e) => match e.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    Err(ConnectError::Refused {
                        url: redacted(url),
                        detail: e.to_string(),
                        settings: CREDENTIAL_SETTINGS,
                    })
                }
                ConnectErrorKind::ServerParse => Err(ConnectError::BadUrl(e.to_string())),
                _ if is_tls_failure(&e) => Err(ConnectError::Tls {
                    url: redacted(url),
                    detail: e.to_string(),
                }),
                _ => Ok(FirstAttempt::Unreachable(e.to_string())),
            },
        }
    }

    /// Connects to the servers of `url` (a comma-separated list) for a long-running process:
    /// the first attempt's refused credential or failed TLS handshake is an error, while
    /// unreachable servers are retried in the background (the client is returned at once and
    /// connects when a server answers). `tune` adds the caller's options (reconnect delays…)
    /// and is applied to both the first and the retrying client.
    ///
    /// # Errors
    /// [`ConnectError`] for anything retrying cannot fix.
    pub async fn connect(
        &self,
        url: &str,
        timeout: Duration,
        tune: impl Fn(ConnectOptions) -> ConnectOptions,
    ) -> Result<async_nats::Client, ConnectError> {
        match self.first_attempt(url, timeout, &tune).await? {
            FirstAttempt::Connected(client) => Ok(client),
            FirstAttempt::Unreachable(reason) => {
                tracing::warn!(
                    nats = %redacted(url),
                    reason,
                    "NATS is not reachable yet; retrying in the background"
                );
                let servers = ServerList::parse(url)?;
                tune(self.options(&servers).await?)
                    .retry_on_initial_connect()
                    .connection_timeout(timeout)
                    .connect(servers.addrs.as_slice())
                    .await
                    .map_err(|e| ConnectError::BadUrl(e.to_string()))
            }
        }
    }

    /// Connects once to the servers of `url`, for a command that needs NATS now (no
    /// background retries).
    ///
    /// # Errors
    /// [`ConnectError`], including [`ConnectError::Unreachable`].
    pub async fn connect_once(
        &self,
        url: &str,
        timeout: Duration,
    ) -> Result<async_nats::Client, ConnectError> {
        match self.first_attempt(url, timeout, |o| o).await? {
            FirstAttempt::Connected(client) => Ok(client),
            FirstAttempt::Unreachable(reason) => Err(ConnectError::Unreachable {
                url: redacted(url),
                reason,
            }),
        }
    }
}

/// The client's event callback: a background-retrying client whose credential the server
/// refuses only gets async-nats's own log line otherwise, which names no setting.
async fn log_refusals(event: Event) {
    if is_refusal(&event) {
        tracing::error!(
            settings = CREDENTIAL_SETTINGS,
            event = %event,
            "NATS refused this service's credential; check NATS_CREDS_FILE, \
             NATS_NKEY_SEED_FILE or NATS_USER/NATS_PASSWORD (or the user:password@ of NATS_URL)"
        );
    }
}

/// Whether `event` is the server refusing the credential: an `-ERR 'Authorization
/// Violation'` while connected, or a (re)connect attempt refused for it, which async-nats 0.51
/// reports as a client error carrying the error kind's text.
fn is_refusal(event: &Event) -> bool {
    match event {
        Event::ServerError(ServerError::AuthorizationViolation) => true,
        Event::ClientError(ClientError::Other(text)) => {
            *text == ConnectErrorKind::AuthorizationViolation.to_string()
                || *text == ConnectErrorKind::Authentication.to_string()
        }
        _ => false,
    }
}

/// Decodes `%XX` escapes, as a URL's userinfo carries them (`p%40ss` is `p@ss`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server list with any `user:password@` removed, for messages and logs.
pub fn redacted(url: &str) -> String {
    servers(url)
        .map(|s| match (s.find("://"), s.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}{}", &s[..scheme + 3], &s[at + 1..])
            }
            (None, Some(at)) => s[at + 1..].to_owned(),
            _ => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether the failure is TLS's own (an untrusted or mismatched certificate), which the client
/// reports as an I/O error because the handshake runs inside its first read.
fn is_tls_failure(e: &async_nats::ConnectError) -> bool {
    if e.kind() == ConnectErrorKind::Tls {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>()
            || c.downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

fn servers(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty())
}

async fn read(setting: &'static str, path: &Path) -> Result<String, ConnectError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|e| unreadable(setting, path, &e))
}

fn unreadable(setting: &'static str, path: &Path, e: &std::io::Error) -> ConnectError {
    ConnectError::Unreadable {
        setting,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_user() -> NatsSecurity {
        NatsSecurity {
            user: Some("order-service".into()),
            password: Some(SecretString::from("s3cret")),
            ..NatsSecurity::default()
        }
    }

    #[test]
    fn production_refuses_plain_and_unauthenticated_connections() {
        let none = NatsSecurity::default();
        let err = none
            .check_production("nats://10.0.0.1:4222", false)
            .unwrap_err();
        assert!(err.to_string().contains("TLS or a credential"), "{err}");
        assert_eq!(
            none.check_production("nats://10.0.0.1:4222", true).unwrap(),
            Some("TLS or a credential")
        );
        let err = with_user()
            .check_production("nats://10.0.0.1:4222", false)
            .unwrap_err();
        assert!(err.to_string().contains("without TLS"), "{err}");
        let err = none
            .check_production("tls://10.0.0.1:4222", false)
            .unwrap_err();
        assert!(err.to_string().contains("without a credential"), "{err}");
        assert_eq!(
            with_user()
                .check_production("tls://a:4222,tls://b:4222", false)
                .unwrap(),
            None
        );
        // One plain server in the list is enough to send the credential in the clear.
        assert!(with_user()
            .check_production("tls://a:4222,nats://b:4222", false)
            .is_err());
        let tls = NatsSecurity {
            require_tls: true,
            ..with_user()
        };
        assert_eq!(tls.check_production("nats://a:4222", false).unwrap(), None);
        assert!(NatsSecurity::default().is_authenticated("nats://u:p@a:4222"));
    }

    #[tokio::test]
    async fn settings_that_do_not_fit_together_are_refused_before_connecting() {
        let two = NatsSecurity {
            nkey_seed_file: Some("/x".into()),
            ..with_user()
        };
        assert!(matches!(
            two.options(&local()).await,
            Err(ConnectError::Inconsistent(_))
        ));
        let half = NatsSecurity {
            user: Some("u".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(
            half.options(&local()).await,
            Err(ConnectError::Inconsistent(_))
        ));
        let cert_only = NatsSecurity {
            tls_cert_file: Some("/x".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(
            cert_only.options(&local()).await,
            Err(ConnectError::Inconsistent(_))
        ));
        let missing = NatsSecurity {
            creds_file: Some("/nonexistent/order.creds".into()),
            ..NatsSecurity::default()
        };
        let err = missing.options(&local()).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("NATS_CREDS_FILE=/nonexistent/order.creds cannot be read"),
            "{err}"
        );
    }

    fn local() -> ServerList {
        ServerList::parse("nats://127.0.0.1:4222").unwrap()
    }

    #[test]
    fn a_server_list_is_split_and_its_userinfo_taken_out_of_the_addresses() {
        let list = ServerList::parse("nats://u:p%40ss@a:4222, nats://u:p%40ss@b:4223,c").unwrap();
        let addrs: Vec<&str> = list.addrs.iter().map(ServerAddr::as_url_str).collect();
        assert_eq!(addrs, ["nats://a:4222", "nats://b:4223", "nats://c"]);
        assert!(list.addrs.iter().all(|a| !a.has_user_pass()));
        let (user, password) = list.user.expect("the URLs' credential");
        assert_eq!((user.as_str(), password.expose_secret()), ("u", "p@ss"));
        assert!(ServerList::parse("nats://a:4222").unwrap().user.is_none());
        assert!(matches!(
            ServerList::parse("nats://u:p@a:4222,nats://u:q@b:4222"),
            Err(ConnectError::Inconsistent(_))
        ));
        assert!(matches!(
            ServerList::parse(" , "),
            Err(ConnectError::BadUrl(_))
        ));
        let err = ServerList::parse("http://u:secret@a:80").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn a_user_in_the_url_and_nats_user_together_are_refused() {
        let list = ServerList::parse("nats://u:p@a:4222").unwrap();
        let err = with_user().options(&list).await.unwrap_err();
        assert!(err.to_string().contains("NATS_USER"), "{err}");
        assert!(NatsSecurity::default().options(&list).await.is_ok());
    }

    #[tokio::test]
    async fn any_tls_server_makes_the_client_require_tls_of_every_server() {
        // Without it, servers learned from a cluster's INFO are dialled as plain nats://.
        let required = |list: &str| {
            let list = ServerList::parse(list).unwrap();
            async move {
                let options = NatsSecurity::default().options(&list).await.unwrap();
                format!("{options:?}").contains("\"tls_required\": true")
            }
        };
        assert!(required("tls://a:4222").await);
        assert!(required("nats://a:4222,tls://b:4222").await);
        assert!(!required("nats://a:4222").await);
        let tls = NatsSecurity {
            require_tls: true,
            ..NatsSecurity::default()
        };
        let options = tls.options(&local()).await.unwrap();
        assert!(format!("{options:?}").contains("\"tls_required\": true"));
    }

    #[tokio::test]
    async fn the_inbox_prefix_is_the_configured_one() {
        let prefixed = NatsSecurity {
            inbox_prefix: Some("_INBOX_order-service".into()),
            ..NatsSecurity::default()
        };
        let options = prefixed.options(&local()).await.unwrap();
        assert!(
            format!("{options:?}").contains("\"_INBOX_order-service\""),
            "{options:?}"
        );
    }

    #[test]
    fn refusals_are_told_from_other_client_events() {
        assert!(is_refusal(&Event::ServerError(
            ServerError::AuthorizationViolation
        )));
        assert!(is_refusal(&Event::ClientError(ClientError::Other(
            "authorization violation".into()
        ))));
        assert!(!is_refusal(&Event::ClientError(ClientError::Other(
            "IO error".into()
        ))));
        assert!(!is_refusal(&Event::Disconnected));
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redacted("nats://u:p@a:4222, tls://b:4222"),
            "nats://a:4222,tls://b:4222"
        );
        assert_eq!(redacted("u:p@a:4222"), "a:4222");
    }
}
