//! Trace IDs (Tempo's hex rules: 1–32 characters, left-padded) and tenant IDs.

use std::fmt;
use std::str::FromStr;

/// A 128-bit trace ID. Shorter IDs (64-bit Jaeger/Zipkin ones from log links) are
/// left-padded with zeros, as Tempo does, so they resolve to the same trace.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// A map keyed by trace ID on the ingest path (live and flushing traces), hashed with
/// ahash under a per-process random key: SipHash on every trace insert and cut was ~2% of
/// sustained ingest's CPU, and the key still keeps crafted IDs from colliding.
pub(crate) type TraceMap<V> = std::collections::HashMap<TraceId, V, ahash::RandomState>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("trace id is empty")]
    Empty,
    #[error(
        "trace ids can only contain hex characters: invalid character '{ch}' at position {pos}"
    )]
    NotHex { ch: char, pos: usize },
    #[error("trace ids can't be larger than 128 bits: got {0} hex characters, at most 32")]
    TooLong(usize),
    #[error("trace id has {0} bytes, expected 1 to 16")]
    BadLength(usize),
    #[error("trace id is all zeros")]
    Zero,
}

impl TraceId {
    /// Parses 1–32 hex characters of either case; odd lengths get a leading zero nibble.
    pub fn parse_hex(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if let Some((pos, ch)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(IdError::NotHex { ch, pos });
        }
        if s.len() > 32 {
            return Err(IdError::TooLong(s.len()));
        }
        let mut out = [0u8; 16];
        // Walk from the right so padding falls on the left.
        let digits = s.as_bytes();
        for (i, &d) in digits.iter().rev().enumerate() {
            let v = (d as char).to_digit(16).unwrap_or(0) as u8;
            let byte = 15 - i / 2;
            if i % 2 == 0 {
                out[byte] |= v;
            } else {
                out[byte] |= v << 4;
            }
        }
        Ok(TraceId(out))
    }

    /// Takes the raw bytes of an OTLP trace ID; shorter ones are left-padded.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
        if b.is_empty() || b.len() > 16 {
            return Err(IdError::BadLength(b.len()));
        }
        let mut out = [0u8; 16];
        out[16 - b.len()..].copy_from_slice(b);
        if out == [0u8; 16] {
            return Err(IdError::Zero);
        }
        Ok(TraceId(out))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Always 32 lowercase hex characters: log links depend on the leading zeros.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({})", self.to_hex())
    }
}

impl FromStr for TraceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_hex(s)
    }
}

/// A tenant name that is safe to use as the first segment of an object key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is {0} bytes long, at most 150")]
    TooLong(usize),
    #[error("tenant id contains '{0}', only letters, digits and !-_.*'() are allowed")]
    BadChar(char),
    #[error("tenant id '.' and '..' are not allowed")]
    Dots,
}

/// The tenant used when multitenancy is off, as Tempo names it.
pub const SINGLE_TENANT: &str = "single-tenant";

impl TenantId {
    pub fn new(s: &str) -> Result<Self, TenantIdError> {
        if s.is_empty() {
            return Err(TenantIdError::Empty);
        }
        if s.len() > 150 {
            return Err(TenantIdError::TooLong(s.len()));
        }
        if s == "." || s == ".." {
            return Err(TenantIdError::Dots);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()".contains(*c)))
        {
            return Err(TenantIdError::BadChar(c));
        }
        Ok(TenantId(s.to_owned()))
    }

    pub fn single() -> Self {
        TenantId(SINGLE_TENANT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_left_padded() {
        let id = TraceId::parse_hex("abc").unwrap();
        assert_eq!(id.to_hex(), "00000000000000000000000000000abc");
        let id64 = TraceId::parse_hex("0123456789ABCDEF").unwrap();
        assert_eq!(id64.to_hex(), "00000000000000000123456789abcdef");
        assert_eq!(
            TraceId::from_bytes(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]).unwrap(),
            id64
        );
    }

    #[test]
    fn bad_ids_name_the_problem() {
        assert_eq!(
            TraceId::parse_hex("12x4").unwrap_err(),
            IdError::NotHex { ch: 'x', pos: 2 }
        );
        assert_eq!(
            TraceId::parse_hex(&"a".repeat(33)).unwrap_err(),
            IdError::TooLong(33)
        );
        assert_eq!(TraceId::parse_hex("").unwrap_err(), IdError::Empty);
        assert_eq!(TraceId::from_bytes(&[0; 16]).unwrap_err(), IdError::Zero);
    }

    #[test]
    fn tenant_ids_cannot_escape_their_prefix() {
        assert!(TenantId::new("team-a").is_ok());
        assert_eq!(
            TenantId::new("a/b").unwrap_err(),
            TenantIdError::BadChar('/')
        );
        assert_eq!(TenantId::new("..").unwrap_err(), TenantIdError::Dots);
    }
}
