//! Optional built-in authentication (off by default): what Tempo leaves to a gateway. Bearer
//! tokens and basic-auth users map to tenants; when it is on, the credential decides the
//! tenant and `X-Scope-OrgID` may only choose among the credential's own tenants.
//!
//! Secrets never sit in the config file in plain text: each is a SHA-256 hex hash, or is read
//! once at start-up from a file or an environment variable and kept only as its hash.
//! Presented secrets are hashed and compared against every configured hash in constant time.
//!
//! [`TenantResolver::resolve`] is the one place a request's tenants are decided; the query
//! API, the streaming querier and both OTLP receivers all call it.

use std::sync::Arc;

use aws_lc_rs::digest::{digest, SHA256};
use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::config::ConfigError;
use crate::model::TenantId;

use super::TENANT_HEADER;

pub(crate) use crate::config::auth::{AuthConfig, CredentialConfig};

/// Why a request has no tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// Multitenancy without built-in auth, and no `X-Scope-OrgID`.
    #[error("no org id: the {TENANT_HEADER} header is required")]
    NoOrgId,
    /// Built-in auth is on and the credential is missing or wrong.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The credential is good but does not cover the tenant the header names.
    #[error("credential does not grant access to tenant {0}")]
    Forbidden(String),
    /// The header is malformed or names an invalid tenant.
    #[error("{0}")]
    BadTenant(String),
}

impl AuthError {
    /// Whether a 401 should carry `WWW-Authenticate` (only for built-in auth failures).
    pub(crate) fn challenge(&self) -> bool {
        matches!(self, AuthError::Unauthenticated(_))
    }
}

/// An auth failure as gRPC: UNAUTHENTICATED, PERMISSION_DENIED or INVALID_ARGUMENT.
pub(crate) fn grpc_status(e: &AuthError) -> tonic::Status {
    match e {
        AuthError::NoOrgId | AuthError::Unauthenticated(_) => {
            tonic::Status::unauthenticated(e.to_string())
        }
        AuthError::Forbidden(_) => tonic::Status::permission_denied(e.to_string()),
        AuthError::BadTenant(_) => tonic::Status::invalid_argument(e.to_string()),
    }
}

/// The `WWW-Authenticate` challenges sent with a 401 when built-in auth is on.
pub(crate) const CHALLENGES: [&str; 2] = ["Bearer realm=\"vivace\"", "Basic realm=\"vivace\""];

/// A credential ready for checking: only hashes are kept.
struct Credential {
    /// Empty for bearer tokens.
    username: Vec<u8>,
    basic: bool,
    hash: [u8; 32],
    tenants: Vec<TenantId>,
}

/// Checks credentials. Built once at start-up from [`AuthConfig`].
pub(crate) struct Authenticator {
    credentials: Vec<Credential>,
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

fn invalid(i: usize, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("auth.credentials[{i}]: {msg}"))
}

impl Authenticator {
    /// Resolves every secret (reading files and environment variables now, once) and
    /// validates the tenants. `None` when auth is off.
    pub(crate) fn from_config(cfg: &AuthConfig) -> Result<Option<Arc<Self>>, ConfigError> {
        if !cfg.enabled {
            return Ok(None);
        }
        if cfg.credentials.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.enabled is true but auth.credentials is empty".into(),
            ));
        }
        let mut credentials = Vec::with_capacity(cfg.credentials.len());
        for (i, c) in cfg.credentials.iter().enumerate() {
            credentials.push(Self::credential(i, c)?);
        }
        Ok(Some(Arc::new(Self { credentials })))
    }

    fn credential(i: usize, c: &CredentialConfig) -> Result<Credential, ConfigError> {
        if c.tenants.is_empty() {
            return Err(invalid(i, "tenants is empty"));
        }
        let tenants = c
            .tenants
            .iter()
            .map(|t| TenantId::new(t).map_err(|e| invalid(i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let basic = c.username.is_some();
        let (kind, sha, file, env, other) = if basic {
            (
                "password",
                &c.password_sha256,
                &c.password_file,
                &c.password_env,
                c.token_sha256.is_some() || c.token_file.is_some() || c.token_env.is_some(),
            )
        } else {
            (
                "token",
                &c.token_sha256,
                &c.token_file,
                &c.token_env,
                c.password_sha256.is_some()
                    || c.password_file.is_some()
                    || c.password_env.is_some(),
            )
        };
        if other {
            return Err(invalid(
                i,
                "a basic-auth user (username) takes password_* fields, a bearer token takes token_* fields",
            ));
        }
        let given =
            usize::from(sha.is_some()) + usize::from(file.is_some()) + usize::from(env.is_some());
        if given != 1 {
            return Err(invalid(
                i,
                format!("give exactly one of {kind}_sha256, {kind}_file, {kind}_env"),
            ));
        }
        let hash = if let Some(hex_hash) = sha {
            let bytes = hex::decode(hex_hash.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| invalid(i, format!("{kind}_sha256 must be 64 hex characters")))?;
            let mut h = [0u8; 32];
            h.copy_from_slice(&bytes);
            h
        } else if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    i,
                    format!("cannot read {kind}_file {}: {e}", path.display()),
                )
            })?;
            // A trailing newline is an editor's, not part of the secret.
            let secret = text.lines().next().unwrap_or("").trim_end_matches('\r');
            if secret.is_empty() {
                return Err(invalid(
                    i,
                    format!("{kind}_file {} is empty", path.display()),
                ));
            }
            sha256(secret.as_bytes())
        } else {
            let name = env.as_deref().unwrap_or_default();
            let secret = std::env::var(name).map_err(|_| {
                invalid(
                    i,
                    format!("environment variable {name} ({kind}_env) is not set"),
                )
            })?;
            if secret.is_empty() {
                return Err(invalid(i, format!("environment variable {name} is empty")));
            }
            sha256(secret.as_bytes())
        };
        let username = c.username.clone().unwrap_or_default().into_bytes();
        if basic && (username.is_empty() || username.contains(&b':')) {
            return Err(invalid(i, "username must be non-empty and contain no ':'"));
        }
        Ok(Credential {
            username,
            basic,
            hash,
            tenants,
        })
    }

    /// The tenants the `Authorization` header's credential grants, or why it grants none.
    fn authenticate(&self, authorization: Option<&HeaderValue>) -> Result<&[TenantId], AuthError> {
        let Some(value) = authorization else {
            return Err(AuthError::Unauthenticated(
                "authentication required: send Authorization: Bearer <token> or Basic credentials",
            ));
        };
        let bad = AuthError::Unauthenticated("invalid credentials");
        let value = value.as_bytes();
        let (basic, user, secret) = if let Some(token) = strip_scheme(value, b"bearer ") {
            (false, Vec::new(), token.trim_ascii().to_vec())
        } else if let Some(encoded) = strip_scheme(value, b"basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim_ascii())
                .map_err(|_| bad.clone())?;
            let colon = decoded.iter().position(|&b| b == b':').ok_or(bad.clone())?;
            (
                true,
                decoded[..colon].to_vec(),
                decoded[colon + 1..].to_vec(),
            )
        } else {
            return Err(AuthError::Unauthenticated(
                "unsupported authorization scheme: use Bearer or Basic",
            ));
        };
        if secret.is_empty() {
            return Err(bad);
        }
        let presented = sha256(&secret);
        // Every credential is compared, whichever matches, so timing says nothing about
        // which one (or how much of a hash) matched.
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (i, c) in self.credentials.iter().enumerate() {
            let same_kind = Choice::from(u8::from(c.basic == basic));
            let user_ok = ct_eq(&c.username, &user);
            let hit = same_kind & user_ok & c.hash.ct_eq(&presented) & !found;
            index.conditional_assign(&(i as u64), hit);
            found |= hit;
        }
        if bool::from(found) {
            Ok(&self.credentials[index as usize].tenants)
        } else {
            Err(bad)
        }
    }
}

/// Constant-time equality of byte strings; the length itself is not secret.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> Choice {
    if a.len() != b.len() {
        return Choice::from(0);
    }
    a.ct_eq(b)
}

pub(crate) fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

/// Decides a request's tenants from its headers (or gRPC metadata turned into headers).
#[derive(Clone)]
pub(crate) struct TenantResolver {
    pub(crate) multitenancy: bool,
    pub(crate) auth: Option<Arc<Authenticator>>,
}

impl TenantResolver {
    pub(crate) fn new(multitenancy: bool, auth: Option<Arc<Authenticator>>) -> Self {
        Self { multitenancy, auth }
    }

    /// The one tenant a write (or a single-tenant read) acts as.
    pub(crate) fn resolve_one(&self, headers: &HeaderMap) -> Result<TenantId, AuthError> {
        let mut tenants = self.resolve(headers, false)?;
        Ok(tenants.swap_remove(0))
    }

    /// The tenants a read covers (`a|b` names several).
    pub(crate) fn resolve_many(&self, headers: &HeaderMap) -> Result<Vec<TenantId>, AuthError> {
        self.resolve(headers, true)
    }

    /// The rules, in one place:
    /// - auth off, multitenancy off: `single-tenant`, the header is ignored;
    /// - auth off, multitenancy on: the header names the tenant(s); absent → [`AuthError::NoOrgId`];
    /// - auth on: the credential must be valid; absent header → the credential's first tenant;
    ///   a header naming any tenant the credential does not grant → [`AuthError::Forbidden`].
    ///
    /// Never empty on success; sorted and deduplicated when several.
    pub(crate) fn resolve(
        &self,
        headers: &HeaderMap,
        many: bool,
    ) -> Result<Vec<TenantId>, AuthError> {
        let granted = match &self.auth {
            Some(auth) => Some(auth.authenticate(headers.get(header::AUTHORIZATION))?),
            None => None,
        };
        let header = headers.get(TENANT_HEADER);
        if granted.is_none() && !self.multitenancy {
            return Ok(vec![TenantId::single()]);
        }
        let named = match header {
            Some(v) => Some(parse_org_id(v, many)?),
            None => None,
        };
        match (granted, named) {
            (None, None) => Err(AuthError::NoOrgId),
            (None, Some(named)) => Ok(named),
            (Some(granted), None) => Ok(vec![granted[0].clone()]),
            (Some(granted), Some(named)) => {
                if let Some(t) = named.iter().find(|t| !granted.contains(t)) {
                    return Err(AuthError::Forbidden(t.to_string()));
                }
                Ok(named)
            }
        }
    }
}

pub(crate) fn parse_org_id(v: &HeaderValue, many: bool) -> Result<Vec<TenantId>, AuthError> {
    let text = v
        .to_str()
        .map_err(|_| AuthError::BadTenant(format!("{TENANT_HEADER} is not valid text")))?;
    let parts: Vec<&str> = if many {
        text.split('|').collect()
    } else {
        vec![text]
    };
    let mut tenants = parts
        .into_iter()
        .map(|t| TenantId::new(t.trim()).map_err(|e| AuthError::BadTenant(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    tenants.sort();
    tenants.dedup();
    Ok(tenants)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_sha(s: &str) -> String {
        hex::encode(sha256(s.as_bytes()))
    }

    fn headers(auth: Option<&str>, org: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        if let Some(o) = org {
            h.insert(TENANT_HEADER, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    fn basic(user: &str, pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    }

    fn resolver() -> TenantResolver {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-secret\n").unwrap();
        let cfg = AuthConfig {
            enabled: true,
            credentials: vec![
                CredentialConfig {
                    tenants: vec!["team-a".into()],
                    token_sha256: Some(hex_sha("token-a")),
                    ..Default::default()
                },
                CredentialConfig {
                    tenants: vec!["team-b".into()],
                    token_file: Some(file),
                    ..Default::default()
                },
                CredentialConfig {
                    tenants: vec!["team-b".into(), "team-a".into()],
                    username: Some("ops".into()),
                    password_sha256: Some(hex_sha("hunter2")),
                    ..Default::default()
                },
            ],
        };
        TenantResolver::new(true, Authenticator::from_config(&cfg).unwrap())
    }

    #[test]
    fn credential_decides_the_tenant() {
        let r = resolver();
        let one = |a: Option<&str>, o: Option<&str>| r.resolve_one(&headers(a, o));
        assert_eq!(
            one(Some("Bearer token-a"), None).unwrap().as_str(),
            "team-a"
        );
        assert_eq!(
            one(Some("bearer token-a"), Some("team-a"))
                .unwrap()
                .as_str(),
            "team-a"
        );
        assert_eq!(
            one(Some("Bearer token-a"), Some("team-b")),
            Err(AuthError::Forbidden("team-b".into()))
        );
        assert_eq!(
            one(Some("Bearer file-secret"), None).unwrap().as_str(),
            "team-b"
        );
        assert!(matches!(
            one(None, Some("team-a")),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            one(Some("Bearer nope"), None),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            one(Some("Digest x"), None),
            Err(AuthError::Unauthenticated(_))
        ));
        // A token is not a password and vice versa.
        assert!(matches!(
            one(Some(&basic("ops", "token-a")), None),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            one(Some("Bearer hunter2"), None),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            one(Some(&basic("bob", "hunter2")), None),
            Err(AuthError::Unauthenticated(_))
        ));
        // Basic with several tenants: first by default, the header picks among them.
        assert_eq!(
            one(Some(&basic("ops", "hunter2")), None).unwrap().as_str(),
            "team-b"
        );
        assert_eq!(
            one(Some(&basic("ops", "hunter2")), Some("team-a"))
                .unwrap()
                .as_str(),
            "team-a"
        );
        let many = r
            .resolve_many(&headers(
                Some(&basic("ops", "hunter2")),
                Some("team-a|team-b"),
            ))
            .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(
            r.resolve_many(&headers(Some("Bearer token-a"), Some("team-a|team-b"))),
            Err(AuthError::Forbidden("team-b".into()))
        );
        assert!(matches!(
            one(Some("Bearer token-a"), Some("../x")),
            Err(AuthError::BadTenant(_))
        ));
    }

    #[test]
    fn without_auth_the_header_rules() {
        let r = TenantResolver::new(true, None);
        assert_eq!(r.resolve_one(&headers(None, None)), Err(AuthError::NoOrgId));
        assert_eq!(
            r.resolve_one(&headers(None, Some("x"))).unwrap().as_str(),
            "x"
        );
        // `a|b` is one (invalid) tenant for a write.
        assert!(matches!(
            r.resolve_one(&headers(None, Some("a|b"))),
            Err(AuthError::BadTenant(_))
        ));
        let off = TenantResolver::new(false, None);
        assert_eq!(
            off.resolve_one(&headers(None, Some("x"))).unwrap().as_str(),
            "single-tenant"
        );
    }

    #[test]
    fn secrets_from_env_and_bad_configs() {
        let name = "VIVACE_TEST_AUTH_TOKEN_7f3a";
        std::env::set_var(name, "env-secret");
        let cfg = |c: CredentialConfig| AuthConfig {
            enabled: true,
            credentials: vec![c],
        };
        let a = Authenticator::from_config(&cfg(CredentialConfig {
            tenants: vec!["t".into()],
            token_env: Some(name.into()),
            ..Default::default()
        }))
        .unwrap()
        .unwrap();
        let h = HeaderValue::from_static("Bearer env-secret");
        assert_eq!(a.authenticate(Some(&h)).unwrap()[0].as_str(), "t");
        for bad in [
            CredentialConfig {
                tenants: vec!["t".into()],
                ..Default::default()
            },
            CredentialConfig {
                tenants: vec!["t".into()],
                token_sha256: Some(hex_sha("x")),
                token_env: Some(name.into()),
                ..Default::default()
            },
            CredentialConfig {
                tenants: vec!["t".into()],
                token_sha256: Some("abc".into()),
                ..Default::default()
            },
            CredentialConfig {
                tenants: vec![],
                token_sha256: Some(hex_sha("x")),
                ..Default::default()
            },
            CredentialConfig {
                tenants: vec!["t".into()],
                token_env: Some("VIVACE_TEST_SURELY_UNSET_9c1d".into()),
                ..Default::default()
            },
            CredentialConfig {
                tenants: vec!["t".into()],
                username: Some("u".into()),
                token_sha256: Some(hex_sha("x")),
                ..Default::default()
            },
        ] {
            assert!(Authenticator::from_config(&cfg(bad)).is_err());
        }
        assert!(Authenticator::from_config(&AuthConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn constant_time_compare() {
        assert!(bool::from(ct_eq(b"abc", b"abc")));
        assert!(!bool::from(ct_eq(b"abc", b"abd")));
        assert!(!bool::from(ct_eq(b"abc", b"ab")));
        assert!(bool::from(ct_eq(b"", b"")));
        let (x, y) = (sha256(b"a"), sha256(b"b"));
        assert!(!bool::from(x.ct_eq(&y)));
        assert!(bool::from(x.ct_eq(&sha256(b"a"))));
    }
}
