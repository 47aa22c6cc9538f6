//! Tempo's HTTP response shapes read back by a client (the `vivace vulture` canary), typed
//! here so that no module outside `api/` parses Tempo's JSON by hand.

use serde::Deserialize;

/// The parts of a `GET /api/search` response a client checks.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SearchResponseView {
    #[serde(default)]
    pub(crate) traces: Vec<TraceHitView>,
}

/// One trace of a search response.
#[derive(Debug, Deserialize)]
pub(crate) struct TraceHitView {
    #[serde(rename = "traceID")]
    pub(crate) trace_id: String,
    /// Tempo's deprecated copy of the first span set, still emitted.
    #[serde(rename = "spanSet", default)]
    pub(crate) span_set: Option<SpanSetView>,
}

/// A matched span set: `matched` counts every span that matched, not only those listed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SpanSetView {
    #[serde(default)]
    pub(crate) matched: u64,
}

impl SearchResponseView {
    /// Parses a search response body.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tempo_search_json() {
        let body = br#"{"traces":[{"traceID":"ab","rootServiceName":"x",
            "spanSet":{"spans":[],"matched":4},"spanSets":[{"matched":4}]},
            {"traceID":"cd"}],"metrics":{"inspectedTraces":2}}"#;
        let v = SearchResponseView::parse(body).unwrap();
        assert_eq!(v.traces.len(), 2);
        assert_eq!(v.traces[0].trace_id, "ab");
        assert_eq!(v.traces[0].span_set.as_ref().unwrap().matched, 4);
        assert!(v.traces[1].span_set.is_none());
        assert!(SearchResponseView::parse(b"{}").unwrap().traces.is_empty());
        assert!(SearchResponseView::parse(b"[").is_err());
    }
}
