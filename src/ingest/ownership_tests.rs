//! Lease and fair-share logic against the in-memory bucket, with real (short) time.

use std::collections::BTreeSet;

use super::*;

const TIMEOUT: Duration = Duration::from_millis(400);

fn node(backend: &Backend, name: &str, partitions: u32) -> Arc<Ownership> {
    Ownership::new(
        backend.clone(),
        OwnershipConfig {
            instance: name.into(),
            address: format!("http://{name}"),
            timeout: TIMEOUT,
            partitions,
            dir: "~ingest/g/t".into(),
        },
        Arc::new(Metrics::default()),
    )
}

fn held(o: &Ownership) -> BTreeSet<i32> {
    o.subscribe().borrow().keys().copied().collect()
}

async fn tick_all(nodes: &[&Arc<Ownership>], rounds: usize) {
    for _ in 0..rounds {
        for n in nodes {
            n.tick().await;
        }
    }
}

#[test]
fn assignment_is_fair_deterministic_and_moves_little() {
    let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let one = assign(8, &members);
    assert_eq!(one, assign(8, &members));
    assert_eq!(one.len(), 8);
    for m in &members {
        let n = one.values().filter(|v| *v == m).count();
        assert!((2..=3).contains(&n), "{m} got {n}");
    }
    let two = assign(8, &members[..2]);
    for m in &members[..2] {
        assert_eq!(two.values().filter(|v| *v == m).count(), 4);
    }
    // Partitions of the members that stayed mostly stay with them.
    let kept = (0..8).filter(|p| one[p] != "c" && one[p] == two[p]).count();
    let were = (0..8).filter(|p| one[p] != "c").count();
    assert!(kept + 2 >= were, "{kept} of {were} kept");
    assert!(assign(4, &[]).is_empty());
}

#[tokio::test]
async fn nodes_share_partitions_without_overlap_and_take_over_a_dead_one() {
    let backend = Backend::memory();
    let a = node(&backend, "a", 6);
    a.tick().await;
    assert_eq!(held(&a).len(), 6, "a lone node holds every partition");
    let b = node(&backend, "b", 6);
    let c = node(&backend, "c", 6);
    tick_all(&[&a, &b, &c], 3).await;
    let (ha, hb, hc) = (held(&a), held(&b), held(&c));
    assert!(ha.is_disjoint(&hb) && ha.is_disjoint(&hc) && hb.is_disjoint(&hc));
    assert_eq!(ha.len() + hb.len() + hc.len(), 6, "{ha:?} {hb:?} {hc:?}");
    assert!([&ha, &hb, &hc].iter().all(|h| h.len() == 2));
    assert_eq!(
        b.owner(*ha.iter().next().unwrap()).unwrap().address,
        "http://a"
    );
    // a commits, then dies (stops renewing).
    let p = *ha.iter().next().unwrap();
    a.commit(p, 42).await.unwrap();
    let died = Instant::now();
    while held(&b).len() + held(&c).len() < 6 {
        assert!(died.elapsed() < TIMEOUT * 6, "no takeover");
        tokio::time::sleep(TIMEOUT / 8).await;
        tick_all(&[&b, &c], 1).await;
    }
    let took = died.elapsed();
    assert!(took >= TIMEOUT, "taken over before the timeout: {took:?}");
    assert!(held(&b).is_disjoint(&held(&c)));
    // The new holder starts from the committed offset; the old one cannot commit.
    let new_holder = if held(&b).contains(&p) { &b } else { &c };
    assert_eq!(new_holder.subscribe().borrow()[&p].offset, Some(42));
    assert!(matches!(
        a.commit(p, 99).await,
        Err(OwnershipError::Lost(_) | OwnershipError::NotHeld(_))
    ));
    a.tick().await;
    assert!(held(&a).is_empty() || held(&a).is_disjoint(&held(&b)));
}

#[tokio::test]
async fn a_restarted_instance_reclaims_its_leases_at_once_and_release_hands_over() {
    let backend = Backend::memory();
    let a = node(&backend, "a", 3);
    a.tick().await;
    a.commit(1, 7).await.unwrap();
    // Same instance name, new process: no wait for the timeout.
    let again = node(&backend, "a", 3);
    again.tick().await;
    assert_eq!(held(&again).len(), 3);
    assert_eq!(again.subscribe().borrow()[&1].offset, Some(7));
    // The old process is fenced.
    assert!(a.commit(1, 8).await.is_err());
    // A clean stop releases: a newcomer takes everything without waiting.
    again.release_all().await;
    let b = node(&backend, "b", 3);
    // b first sees a's membership as live; the released leases go to their assignee or,
    // a little later, to anyone.
    let start = Instant::now();
    while held(&b).len() < 3 {
        assert!(start.elapsed() < TIMEOUT * 4, "released leases not taken");
        b.tick().await;
        tokio::time::sleep(TIMEOUT / 8).await;
    }
    assert_eq!(b.subscribe().borrow()[&1].offset, Some(7));
}

async fn lease_offset(backend: &Backend, p: i32) -> Option<i64> {
    let (bytes, _) = backend
        .get_versioned(&format!("~ingest/g/t/leases/{p}.json"))
        .await
        .unwrap()?;
    serde_json::from_slice::<LeaseBody>(&bytes).unwrap().offset
}

#[tokio::test]
async fn a_fenced_log_commits_only_what_it_consumed_under_a_lease_it_holds() {
    use crate::ingest::log::position;
    use crate::ingest::PartitionLog;
    use crate::ingester::IngestLog;

    let backend = Backend::memory();
    let a = node(&backend, "a", 2);
    a.tick().await;
    let log = PartitionLog::open_fenced(backend.clone(), "g", "t", a.clone())
        .await
        .unwrap();
    assert_eq!((log.gain(0, None), log.gain(1, None)), (None, None));
    for (p, o) in [(0, 0), (0, 1), (1, 0)] {
        log.append(position(p, o)).await.unwrap();
    }
    let b1 = log.rotate(&[]).await.unwrap();
    // Partition 1 moves away before the cut's commit: only partition 0 commits.
    log.lose(1);
    log.truncate_before(b1).await.unwrap();
    assert_eq!(lease_offset(&backend, 0).await, Some(2));
    assert_eq!(lease_offset(&backend, 1).await, None);
    // Regained: what was consumed under the old lease never commits, new ranges do.
    assert_eq!(log.gain(1, None), None);
    log.append(position(1, 1)).await.unwrap();
    let b2 = log.rotate(&[]).await.unwrap();
    log.truncate_before(b2).await.unwrap();
    assert_eq!(lease_offset(&backend, 1).await, Some(2));
    // Another node takes partition 0 over: this log's commits for it are refused.
    let mut body: LeaseBody = serde_json::from_slice(
        &backend
            .get_versioned("~ingest/g/t/leases/0.json")
            .await
            .unwrap()
            .unwrap()
            .0,
    )
    .unwrap();
    body.holder = "b".into();
    backend
        .put(
            "~ingest/g/t/leases/0.json",
            serde_json::to_vec(&body).unwrap().into(),
        )
        .await
        .unwrap();
    log.append(position(0, 2)).await.unwrap();
    let b3 = log.rotate(&[]).await.unwrap();
    log.truncate_before(b3).await.unwrap();
    assert_eq!(
        lease_offset(&backend, 0).await,
        Some(2),
        "a fenced commit landed"
    );
    assert!(!held(&a).contains(&0));
}

#[tokio::test]
async fn an_observer_sees_the_holders_without_writing_anything() {
    let backend = Backend::memory();
    let a = node(&backend, "a", 4);
    let b = node(&backend, "b", 4);
    tick_all(&[&a, &b], 3).await;
    let before: Vec<String> = backend
        .list_fingerprints("~ingest/g/t/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| format!("{} {}", m.key, m.fingerprint))
        .collect();
    let q = node(&backend, "q", 4);
    assert!(q.owner(0).is_none(), "knows an owner before reading");
    q.read_owners().await;
    for p in 0..4 {
        let holder = if held(&a).contains(&p) { "a" } else { "b" };
        let seen = q.owner(p).expect("owner seen");
        assert_eq!(seen.instance, holder, "partition {p}");
        assert_eq!(seen.address, format!("http://{holder}"));
    }
    assert!(held(&q).is_empty(), "the observer holds a partition");
    let after: Vec<String> = backend
        .list_fingerprints("~ingest/g/t/")
        .await
        .unwrap()
        .into_iter()
        .map(|m| format!("{} {}", m.key, m.fingerprint))
        .collect();
    assert_eq!(before, after, "observing wrote to the bucket");
    // A released lease is seen as unheld.
    a.release_all().await;
    q.read_owners().await;
    for p in held(&b) {
        assert!(q.owner(p).is_some());
    }
    let released: Vec<i32> = (0..4).filter(|p| q.owner(*p).is_none()).collect();
    assert_eq!(released.len(), 4 - held(&b).len(), "{released:?}");
}
