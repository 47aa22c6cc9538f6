//! The key nodes present to each other on `/internal/live`, which answers with live traces
//! of whichever tenant `X-Scope-OrgID` names: user credentials never open it, only the
//! shared peer token (`ingest.peer_token_file` / `peer_token_env`) does.

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

use super::auth::{parse_org_id, sha256, strip_scheme, AuthError};
use super::TENANT_HEADER;
use crate::model::TenantId;

/// Only the token's hash is kept.
pub(crate) struct PeerToken {
    hash: [u8; 32],
}

impl PeerToken {
    pub(crate) fn new(secret: &str) -> Self {
        Self {
            hash: sha256(secret.as_bytes()),
        }
    }

    /// The tenant a peer's request reads, once its bearer token is the peer token.
    pub(crate) fn tenant(&self, headers: &HeaderMap) -> Result<TenantId, AuthError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| strip_scheme(v.as_bytes(), b"bearer "))
            .map(|t| sha256(t.trim_ascii()));
        let ok = presented.is_some_and(|p| bool::from(p.ct_eq(&self.hash)));
        if !ok {
            return Err(AuthError::Unauthenticated(
                "this endpoint is for vivace nodes: send the peer token as a bearer token",
            ));
        }
        match headers.get(TENANT_HEADER) {
            Some(v) => Ok(parse_org_id(v, false)?.swap_remove(0)),
            None => Ok(TenantId::single()),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_the_peer_token_opens_it_and_the_header_names_the_tenant() {
        let p = PeerToken::new("s3cret");
        let t = p
            .tenant(&headers(&[
                ("authorization", "Bearer s3cret"),
                ("x-scope-orgid", "team-a"),
            ]))
            .unwrap();
        assert_eq!(t.as_str(), "team-a");
        let t = p.tenant(&headers(&[("authorization", "bearer s3cret")]));
        assert_eq!(t.unwrap(), TenantId::single());
        for bad in [
            vec![],
            vec![("authorization", "Bearer s3cre")],
            vec![("authorization", "Basic czNjcmV0")],
            vec![("x-scope-orgid", "team-a")],
        ] {
            let e = p.tenant(&headers(&bad)).unwrap_err();
            assert!(matches!(e, AuthError::Unauthenticated(_)), "{bad:?}: {e:?}");
        }
        let e = p
            .tenant(&headers(&[
                ("authorization", "Bearer s3cret"),
                ("x-scope-orgid", "bad tenant!"),
            ]))
            .unwrap_err();
        assert!(matches!(e, AuthError::BadTenant(_)), "{e:?}");
    }
}
