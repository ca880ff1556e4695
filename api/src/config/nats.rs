//! The NATS connection's settings: the servers, the credential this service presents, TLS, and
//! the production rule that refuses a plain or anonymous connection.

use std::path::PathBuf;

use clap::Args;
use order_bus::connect::{ConnectError, NatsSecurity};
use secrecy::{ExposeSecret, SecretString};

/// How this service reaches NATS. The URL may carry `user:password@`, so it is a secret like
/// the password, and `Debug` shows it with the password hidden.
#[derive(Clone, Args)]
#[command(next_help_heading = "NATS connection")]
pub struct NatsSettings {
    /// NATS server with JetStream; a comma-separated list for a cluster (the client picks one and
    /// fails over to the others).
    #[arg(
        id = "nats_url",
        long = "nats-url",
        env = "NATS_URL",
        value_name = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub url: SecretString,

    /// A `.creds` file (user JWT and nkey seed) this service presents to NATS.
    #[arg(
        id = "nats_creds_file",
        long = "nats-creds-file",
        env = "NATS_CREDS_FILE",
        value_name = "NATS_CREDS_FILE"
    )]
    pub creds_file: Option<PathBuf>,

    /// A file holding the user nkey seed (`SU…`) this service presents to NATS.
    #[arg(
        id = "nats_nkey_seed_file",
        long = "nats-nkey-seed-file",
        env = "NATS_NKEY_SEED_FILE",
        value_name = "NATS_NKEY_SEED_FILE"
    )]
    pub nkey_seed_file: Option<PathBuf>,

    /// User name for NATS user/password auth (with NATS_PASSWORD).
    #[arg(
        id = "nats_user",
        long = "nats-user",
        env = "NATS_USER",
        value_name = "NATS_USER"
    )]
    pub user: Option<String>,

    /// Password for NATS user/password auth (with NATS_USER).
    #[arg(
        id = "nats_password",
        long = "nats-password",
        env = "NATS_PASSWORD",
        value_name = "NATS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<SecretString>,

    /// PEM file of the CA that signed the NATS servers' certificates; implies TLS.
    #[arg(
        id = "nats_tls_ca_file",
        long = "nats-tls-ca-file",
        env = "NATS_TLS_CA_FILE",
        value_name = "NATS_TLS_CA_FILE"
    )]
    pub tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for servers that verify clients (with NATS_TLS_KEY_FILE).
    #[arg(
        id = "nats_tls_cert_file",
        long = "nats-tls-cert-file",
        env = "NATS_TLS_CERT_FILE",
        value_name = "NATS_TLS_CERT_FILE"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of NATS_TLS_CERT_FILE.
    #[arg(
        id = "nats_tls_key_file",
        long = "nats-tls-key-file",
        env = "NATS_TLS_KEY_FILE",
        value_name = "NATS_TLS_KEY_FILE"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// Refuse a NATS server that does not offer TLS.
    #[arg(
        id = "nats_require_tls",
        long = "nats-require-tls",
        env = "NATS_REQUIRE_TLS", value_name = "NATS_REQUIRE_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub require_tls: bool,

    /// Accept, in production, a NATS connection without TLS or without a credential (logged
    /// as a warning at start-up). Anyone who can publish `payment.succeeded` on such a broker
    /// can confirm orders.
    #[arg(
        id = "nats_allow_insecure",
        long = "nats-allow-insecure",
        env = "NATS_ALLOW_INSECURE", value_name = "NATS_ALLOW_INSECURE",
        default_value_t = false,
        action = clap::ArgAction::Set
    )]
    pub allow_insecure: bool,
}

impl NatsSettings {
    /// The connection's credential and TLS settings; replies come to `inbox_prefix`.
    pub fn security(&self, inbox_prefix: String) -> NatsSecurity {
        NatsSecurity {
            creds_file: self.creds_file.clone(),
            nkey_seed_file: self.nkey_seed_file.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
            require_tls: self.require_tls,
            inbox_prefix: Some(inbox_prefix),
        }
    }

    /// The production rule for the connection (TLS and a credential, unless
    /// NATS_ALLOW_INSECURE=true, which is logged as a warning). Callers apply it in production
    /// only.
    ///
    /// # Errors
    /// When the connection would go without TLS or a credential.
    pub fn check_production(&self, security: &NatsSecurity) -> Result<(), ConnectError> {
        if let Some(missing) =
            security.check_production(self.url.expose_secret(), self.allow_insecure)?
        {
            tracing::warn!(
                missing,
                "NATS_ALLOW_INSECURE=true: connecting to NATS without {missing}; anyone who can \
                 publish payment.succeeded on this broker can confirm orders"
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field(
                "url",
                &order_bus::connect::redacted(self.url.expose_secret()),
            )
            .field("creds_file", &self.creds_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("require_tls", &self.require_tls)
            .field("allow_insecure", &self.allow_insecure)
            .finish()
    }
}
