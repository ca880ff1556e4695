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

use async_nats::{ConnectErrorKind, ConnectOptions};
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
    /// PEM file of the CA that signed the server's certificate (added to the system roots).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (`verify: true`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a server that does not offer TLS.
    pub require_tls: bool,
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
    /// Whether a credential is configured, here or as `user:password@` in the URL.
    pub fn is_authenticated(&self, url: &str) -> bool {
        self.creds_file.is_some()
            || self.nkey_seed_file.is_some()
            || self.user.is_some()
            || servers(url).any(|s| s.contains('@'))
    }

    /// Whether the connection is TLS: a `tls://` server, `NATS_REQUIRE_TLS`, or a TLS file.
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

    /// Connect options carrying the credential and TLS settings. Files are read here, so a
    /// wrong path fails now, naming its setting.
    ///
    /// # Errors
    /// [`ConnectError::Unreadable`] or [`ConnectError::Inconsistent`].
    pub async fn options(&self) -> Result<ConnectOptions, ConnectError> {
        let credentials = usize::from(self.creds_file.is_some())
            + usize::from(self.nkey_seed_file.is_some())
            + usize::from(self.user.is_some());
        if credentials > 1 {
            return Err(ConnectError::Inconsistent(
                "set only one of NATS_CREDS_FILE, NATS_NKEY_SEED_FILE and NATS_USER",
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
        let mut options = ConnectOptions::new();
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
        if let Some(path) = &self.tls_ca_file {
            read("NATS_TLS_CA_FILE", path).await?;
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            read("NATS_TLS_CERT_FILE", cert).await?;
            read("NATS_TLS_KEY_FILE", key).await?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.require_tls || self.tls_ca_file.is_some() || self.tls_cert_file.is_some() {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// One attempt to connect with these settings. A refused credential or a failed TLS
    /// handshake is an error; an unreachable server is [`FirstAttempt::Unreachable`].
    ///
    /// # Errors
    /// [`ConnectError`] for anything retrying cannot fix.
    pub async fn first_attempt(
        &self,
        url: &str,
        timeout: Duration,
        tune: impl FnOnce(ConnectOptions) -> ConnectOptions,
    ) -> Result<FirstAttempt, ConnectError> {
        let options = tune(self.options().await?).connection_timeout(timeout);
        // Every node of a cluster's comma-separated list: the client tries them in turn.
        match options.connect(crate::servers::list(url)).await {
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
            two.options().await,
            Err(ConnectError::Inconsistent(_))
        ));
        let half = NatsSecurity {
            user: Some("u".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(
            half.options().await,
            Err(ConnectError::Inconsistent(_))
        ));
        let cert_only = NatsSecurity {
            tls_cert_file: Some("/x".into()),
            ..NatsSecurity::default()
        };
        assert!(matches!(
            cert_only.options().await,
            Err(ConnectError::Inconsistent(_))
        ));
        let missing = NatsSecurity {
            creds_file: Some("/nonexistent/order.creds".into()),
            ..NatsSecurity::default()
        };
        let err = missing.options().await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("NATS_CREDS_FILE=/nonexistent/order.creds cannot be read"),
            "{err}"
        );
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
