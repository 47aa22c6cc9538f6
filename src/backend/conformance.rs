//! The storage conformance suite: one function that every backend must pass unchanged.
//! Unit tests run it on memory and a local temp dir; the integration binary runs it on a
//! real S3-compatible server. It panics (with the backend's description) on the first
//! difference.

use std::ops::Range;

use bytes::Bytes;
use futures::StreamExt;

use super::{Backend, BackendError};

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn slice(data: &Bytes, r: &Range<u64>) -> Bytes {
    data.slice(r.start as usize..r.end as usize)
}

/// Runs every check against `b`, which must be empty.
pub async fn run(b: &Backend) {
    let d = b.description().to_owned();
    let ctx = |what: &str| format!("[{d}] {what}");

    // An empty bucket lists nothing.
    assert!(
        b.list_dirs(None).await.unwrap().is_empty(),
        "{}",
        ctx("empty bucket")
    );
    assert!(
        b.list("nope").await.unwrap().is_empty(),
        "{}",
        ctx("list missing")
    );
    assert!(
        b.list_dirs(Some("nope")).await.unwrap().is_empty(),
        "{}",
        ctx("list_dirs missing")
    );

    // Missing keys are NotFound for every kind of read; deleting one is fine.
    let missing = "tenant-a/00000000-0000-0000-0000-000000000000/meta.json";
    assert!(
        matches!(b.get(missing).await, Err(BackendError::NotFound(_))),
        "{}",
        ctx("get missing")
    );
    assert!(
        matches!(
            b.get_range(missing, 0..4).await,
            Err(BackendError::NotFound(_))
        ),
        "{}",
        ctx("get_range missing")
    );
    assert!(
        matches!(
            b.get_ranges(missing, &[0..1, 5..9]).await,
            Err(BackendError::NotFound(_))
        ),
        "{}",
        ctx("get_ranges missing")
    );
    b.delete(missing).await.expect("delete of a missing key");

    // The tenant / block layout of schema/meta.md.
    let blk1 = "6f1c1a9e-0b7e-4a5e-9d43-3f0a1c2b4d5e";
    let blk2 = "0a9b8c7d-6e5f-4a3b-8c1d-2e3f4a5b6c7d";
    let files = ["meta.json", "data.parquet", "bloom-0", "bloom-1", "index"];
    for (i, f) in files.iter().enumerate() {
        b.put(&format!("tenant-a/{blk1}/{f}"), pattern(100 + i, i as u64))
            .await
            .unwrap();
    }
    b.put(
        &format!("tenant-a/{blk2}/meta.json"),
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    b.put(
        &format!("tenant-b/{blk1}/meta.json"),
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    // A tenant whose name extends another's must not leak into its listings.
    b.put("tenant-ab/x/meta.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    // An empty object.
    b.put("tenant-b/empty", Bytes::new()).await.unwrap();
    assert_eq!(
        b.get("tenant-b/empty").await.unwrap(),
        Bytes::new(),
        "{}",
        ctx("empty")
    );

    assert_eq!(
        sorted(b.list_dirs(None).await.unwrap()),
        vec!["tenant-a", "tenant-ab", "tenant-b"],
        "{}",
        ctx("tenants")
    );
    assert_eq!(
        sorted(b.list_dirs(Some("tenant-a")).await.unwrap()),
        sorted(vec![blk1.to_owned(), blk2.to_owned()]),
        "{}",
        ctx("blocks of tenant-a")
    );
    assert_eq!(
        sorted(b.list(&format!("tenant-a/{blk1}")).await.unwrap()),
        sorted(
            files
                .iter()
                .map(|f| format!("tenant-a/{blk1}/{f}"))
                .collect()
        ),
        "{}",
        ctx("files of a block")
    );
    assert_eq!(
        b.list("tenant-a").await.unwrap().len(),
        files.len() + 1,
        "{}",
        ctx("list tenant-a (not tenant-ab)")
    );
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            b.get(&format!("tenant-a/{blk1}/{f}")).await.unwrap(),
            pattern(100 + i, i as u64),
            "{}",
            ctx(f)
        );
    }

    // Ranged reads on a 3 MiB object: single ranges, and several ranges out of order,
    // overlapping, adjacent and more than 1 MiB apart, answered in the order asked.
    let big_key = "tenant-a/ranges/data.parquet";
    let data = pattern(3 * 1024 * 1024 + 17, 7);
    b.put(big_key, data.clone()).await.unwrap();
    let len = data.len() as u64;
    for r in [0..1, 10..20, len - 8..len, 1_048_570..1_048_590] {
        assert_eq!(
            b.get_range(big_key, r.clone()).await.unwrap(),
            slice(&data, &r),
            "{}",
            ctx(&format!("get_range {r:?}"))
        );
    }
    let ranges = vec![
        len - 100..len,
        0..8,
        4..12,
        12..40,
        2_500_000..2_500_100,
        1_000..1_001,
    ];
    let got = b.get_ranges(big_key, &ranges).await.unwrap();
    assert_eq!(got.len(), ranges.len(), "{}", ctx("get_ranges count"));
    for (g, r) in got.iter().zip(&ranges) {
        assert_eq!(*g, slice(&data, r), "{}", ctx(&format!("get_ranges {r:?}")));
    }
    let got = b.get_ranges(big_key, &[7..7, 3..5, 9..9]).await.unwrap();
    assert_eq!(
        got,
        vec![Bytes::new(), slice(&data, &(3..5)), Bytes::new()],
        "{}",
        ctx("get_ranges with empty ranges")
    );
    assert!(
        b.get_ranges(big_key, &[]).await.unwrap().is_empty(),
        "{}",
        ctx("get_ranges of nothing")
    );

    // Overwrite replaces the whole object (a shorter one too).
    let k = format!("tenant-a/{blk2}/meta.json");
    b.put(&k, Bytes::from_static(b"{\"v\":2, \"long\":true}"))
        .await
        .unwrap();
    b.put(&k, Bytes::from_static(b"{\"v\":3}")).await.unwrap();
    assert_eq!(
        b.get(&k).await.unwrap(),
        Bytes::from_static(b"{\"v\":3}"),
        "{}",
        ctx("overwrite")
    );

    // Concurrent puts: distinct keys all land; racing writers to one key leave one
    // writer's object whole.
    let puts = futures::stream::iter(0..32u64)
        .map(|i| {
            let b = b.clone();
            async move {
                b.put(
                    &format!("tenant-c/blk-{i:02}/data.parquet"),
                    pattern(4096, i),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(puts.iter().all(Result::is_ok), "{}", ctx("concurrent puts"));
    for i in 0..32u64 {
        assert_eq!(
            b.get(&format!("tenant-c/blk-{i:02}/data.parquet"))
                .await
                .unwrap(),
            pattern(4096, i),
            "{}",
            ctx("concurrent put content")
        );
    }
    assert_eq!(
        b.list_dirs(Some("tenant-c")).await.unwrap().len(),
        32,
        "{}",
        ctx("concurrent put listing")
    );
    let racers: Vec<Bytes> = (0..8u64).map(|i| pattern(64 * 1024, 100 + i)).collect();
    let results = futures::future::join_all(
        racers
            .iter()
            .map(|p| b.put("tenant-c/same/meta.json", p.clone())),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{}", ctx("racing puts"));
    let winner = b.get("tenant-c/same/meta.json").await.unwrap();
    assert!(
        racers.contains(&winner),
        "{}",
        ctx("racing puts left a torn object")
    );

    // A large object goes through the multipart path and reads back byte for byte,
    // including ranges across part boundaries.
    let large_key = "tenant-a/large/data.parquet";
    let large = pattern(super::MULTIPART_THRESHOLD + 4 * 1024 * 1024 + 123, 42);
    b.put(large_key, large.clone()).await.unwrap();
    assert_eq!(
        b.get(large_key).await.unwrap(),
        large,
        "{}",
        ctx("multipart object")
    );
    let p = b.part_size as u64;
    let across = [p - 10..p + 10, 2 * p - 1..2 * p + 1];
    let got = b.get_ranges(large_key, &across).await.unwrap();
    for (g, r) in got.iter().zip(&across) {
        assert_eq!(*g, slice(&large, r), "{}", ctx("range across parts"));
    }

    // Delete: gone for reads and listings, and deleting again is fine.
    b.delete(large_key).await.unwrap();
    b.delete(large_key).await.unwrap();
    assert!(
        matches!(b.get(large_key).await, Err(BackendError::NotFound(_))),
        "{}",
        ctx("get after delete")
    );
    assert!(
        !b.list("tenant-a")
            .await
            .unwrap()
            .iter()
            .any(|k| k == large_key),
        "{}",
        ctx("list after delete")
    );
    for f in files {
        b.delete(&format!("tenant-a/{blk1}/{f}")).await.unwrap();
    }
    // Listings span pages (S3 returns at most 1000 keys per request).
    let many = futures::stream::iter(0..1005u32)
        .map(|i| {
            let b = b.clone();
            async move {
                b.put(
                    &format!("tenant-d/{i:04}/meta.json"),
                    Bytes::from_static(b"{}"),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    assert!(many.iter().all(Result::is_ok), "{}", ctx("many puts"));
    assert_eq!(
        b.list_dirs(Some("tenant-d")).await.unwrap().len(),
        1005,
        "{}",
        ctx("list_dirs over pages")
    );
    assert_eq!(
        b.list("tenant-d").await.unwrap().len(),
        1005,
        "{}",
        ctx("list over pages")
    );

    leases(b, &ctx).await;
}

/// A writer's lease: each refresh changes the object's fingerprint (the cleaner's sign of
/// life), a lease deleted under the writer is noticed, and release removes it.
async fn leases(b: &Backend, ctx: &dyn Fn(&str) -> String) {
    let key = "tenant-e/11111111-1111-1111-1111-111111111111/writing.json";
    let print = || async {
        b.list_fingerprints("tenant-e")
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.key == key)
            .map(|l| l.fingerprint)
    };
    let lease = b
        .hold_lease(key, std::time::Duration::from_millis(100))
        .await
        .unwrap();
    let first = print().await.expect("lease object listed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Stores with second-granularity times and no ETag need a while to show the change.
    while print().await.as_ref() == Some(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            ctx("lease refresh changes the fingerprint")
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(lease.check().await.is_ok(), "{}", ctx("lease held"));
    lease.release().await;
    assert!(print().await.is_none(), "{}", ctx("lease released"));

    // Deleted by a cleaner while held: the writer learns it before committing.
    let lease = b
        .hold_lease(key, std::time::Duration::from_millis(50))
        .await
        .unwrap();
    b.delete(key).await.unwrap();
    assert!(
        lease.check().await.is_err(),
        "{}",
        ctx("lost lease noticed")
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        print().await.is_none(),
        "{}",
        ctx("a lost lease is not recreated by its refresher")
    );
    drop(lease);
}
