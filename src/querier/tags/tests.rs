//! Tag discovery over scanned blocks: projected reads, streaming and the byte budget.

use super::*;
use crate::backend::Backend;
use crate::block::{synth, BlockConfig};
use crate::blocklist::BlockList;
use crate::metrics::Metrics;

/// Blocks of many small row groups, without tag summaries, so tag requests scan them.
async fn querier(budget: u64) -> (Querier, TenantId, u64) {
    let backend = Backend::memory();
    let list = Arc::new(BlockList::default());
    let tenant = TenantId::new("t").unwrap();
    let cfg = BlockConfig {
        row_group_size_bytes: 4_000,
        ..BlockConfig::default()
    };
    let mut first = 0u64;
    for k in 0..3u64 {
        let id = uuid::Uuid::from_u128(u128::from(k) + 1);
        let b = block::encode_block(&tenant, id, 0, synth::realistic_traces(40, k), &cfg).unwrap();
        let md = block::decode_footer(b.data.clone(), b.data.len() as u64).unwrap();
        assert!(md.num_row_groups() > 2, "several row groups per block");
        let r = block::row_group_byte_range(&md, 0).unwrap();
        first = first.max(r.end - r.start);
        backend
            .put(&block::data_key(&tenant, id), b.data.clone())
            .await
            .unwrap();
        list.add(tenant.clone(), b.meta.clone());
    }
    let q = Querier::new(backend, None, list, Arc::new(Metrics::default()), 1)
        .with_tag_scan_bytes(budget);
    (q, tenant, first)
}

fn names_of_spans_request() -> (TagTarget, TagsRequest) {
    (
        TagTarget::Intrinsic(Intrinsic::Name),
        TagsRequest {
            range: None,
            filter: Some(Arc::new(crate::traceql::parse("{ }").unwrap())),
            limit: 100_000,
        },
    )
}

/// Without a filter, blocks are read with the target's columns only: the values are
/// those of the whole traces.
#[tokio::test]
async fn projected_tag_scans_find_every_value() {
    let (q, tenant, _) = querier(0).await;
    let traces: Vec<_> = (0..3u64)
        .flat_map(|k| synth::realistic_traces(40, k))
        .collect();
    let mut targets = vec![
        TagTarget::Intrinsic(Intrinsic::Name),
        TagTarget::Intrinsic(Intrinsic::Kind),
        TagTarget::Intrinsic(Intrinsic::Status),
        TagTarget::Intrinsic(Intrinsic::EventName),
        TagTarget::Intrinsic(Intrinsic::InstrumentationName),
        TagTarget::Intrinsic(Intrinsic::TraceRootName),
        TagTarget::Intrinsic(Intrinsic::TraceRootService),
    ];
    let span = &traces[0].batches[0].scope_spans[0].spans[0];
    let res = traces[0].batches[0].resource.as_ref().unwrap();
    for kv in span.attributes.iter().take(3) {
        for scope in [Scope::Span, Scope::Unscoped] {
            targets.push(TagTarget::Attribute {
                scope,
                name: kv.key.clone(),
            });
        }
    }
    for kv in res.attributes.iter().take(3) {
        targets.push(TagTarget::Attribute {
            scope: Scope::Resource,
            name: kv.key.clone(),
        });
    }
    let req = TagsRequest {
        range: None,
        filter: None,
        limit: 100_000,
    };
    for target in targets {
        let mut want = BTreeSet::new();
        for t in &traces {
            collect_values(&target, &t.batches, &Keep::All, &mut want, 100_000);
        }
        let (got, partial) = q
            .tag_values_partial(&tenant, target.clone(), &req)
            .await
            .unwrap();
        assert!(!partial);
        assert!(!want.is_empty(), "{target:?}");
        assert_eq!(got, want, "{target:?}");
    }
}

#[tokio::test]
async fn tag_scans_stream_row_groups_and_stop_at_their_budget() {
    let (q, tenant, first_row_group) = querier(0).await;
    let (target, req) = names_of_spans_request();
    let (all, partial) = q
        .tag_values_partial(&tenant, target.clone(), &req)
        .await
        .unwrap();
    assert!(!partial);
    assert!(all.len() > 3, "{all:?}");
    let (names, partial) = q.tag_names_partial(&tenant, &req).await.unwrap();
    assert!(!partial && !names.0.is_empty());

    // Room for about one row group: some values, and the answer says it is partial.
    let (q, tenant, _) = querier(first_row_group).await;
    let (some, partial) = q.tag_values_partial(&tenant, target, &req).await.unwrap();
    assert!(partial);
    assert!(!some.is_empty() && some.len() < all.len(), "{some:?}");
    assert!(some.is_subset(&all));
    let (_, partial) = q.tag_names_partial(&tenant, &req).await.unwrap();
    assert!(partial);
}
