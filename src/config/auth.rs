//! The `auth` section: built-in credentials mapped to tenants (the checking itself lives in
//! `api::auth`).

use std::path::PathBuf;

use serde::Deserialize;

/// The `auth` section of the config.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub enabled: bool,
    pub credentials: Vec<CredentialConfig>,
}

/// One credential: a bearer token, or a basic-auth user when `username` is set. Exactly one
/// secret source is given: `*_sha256` (hex of the secret's SHA-256), `*_file` (first line of
/// the file) or `*_env` (the variable's value), `token_*` for tokens and `password_*` for users.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CredentialConfig {
    /// Tenants this credential may act as; the first is used when no header names one.
    pub tenants: Vec<String>,
    pub username: Option<String>,
    pub token_sha256: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub password_sha256: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}
