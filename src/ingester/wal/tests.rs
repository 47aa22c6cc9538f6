//! WAL unit tests: group commit, replay, torn and corrupt records, the directory lock,
//! failed writes and segment deletion.

use super::*;
use crate::model::TenantId;

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::default())
}

#[tokio::test]
async fn append_replay_and_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let (wal, replayed) = Wal::open(dir.path(), m.clone()).unwrap();
    assert!(replayed.is_empty());
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let w = wal.clone();
        tasks.push(tokio::spawn(async move {
            w.append(Bytes::from(format!("record-{i}"))).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 1);
    }
    let fsyncs = m.wal_fsyncs.get();
    assert!(
        (1..200).contains(&fsyncs),
        "group commit shared fsyncs: {fsyncs}"
    );
    assert_eq!(wal.rotate().await.unwrap(), 2);
    wal.append(Bytes::from_static(b"in-two")).await.unwrap();
    drop(wal);

    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(replayed.len(), 201);
    assert_eq!(replayed.last().unwrap().segment, 2);
    assert_eq!(&replayed.last().unwrap().payload[..], b"in-two");
    let mut seen: Vec<_> = replayed[..200]
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 200);
}

#[tokio::test]
async fn torn_tail_is_cut_and_later_appends_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    wal.append(Bytes::from_static(b"first")).await.unwrap();
    wal.append(Bytes::from_static(b"second")).await.unwrap();
    drop(wal);
    // A header promising 100 bytes followed by only 3: a write torn by a crash.
    let seg = segment_path(dir.path(), 1);
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&100u32.to_le_bytes()).unwrap();
    f.write_all(&[1, 2, 3, 4, 5, 6, 7]).unwrap();
    drop(f);

    let (wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    let got: Vec<_> = replayed.iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(got, vec![b"first".to_vec(), b"second".to_vec()]);
    wal.append(Bytes::from_static(b"third")).await.unwrap();
    drop(wal);
    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(replayed.len(), 3);
}

#[tokio::test]
async fn corrupt_checksum_stops_replay_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    wal.append(Bytes::from_static(b"good")).await.unwrap();
    wal.append(Bytes::from_static(b"flipped")).await.unwrap();
    drop(wal);
    let seg = segment_path(dir.path(), 1);
    let mut data = fs::read(&seg).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&seg, &data).unwrap();
    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(&replayed[0].payload[..], b"good");
}

/// Disk full through the test hook: the group is refused, its half-written bytes are cut
/// off, the next group goes to a new segment, and replay sees exactly the acked records.
#[tokio::test]
async fn failed_writes_are_refused_cut_off_and_recovered_from() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(FAULT_MARKER), b"").unwrap();
    let switch = dir.path().join(format!("{FAULT_MARKER}.enospc"));
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(wal.append(Bytes::from_static(b"acked-1")).await.unwrap(), 1);
    fs::write(&switch, b"").unwrap();
    for _ in 0..3 {
        match wal.append(Bytes::from(vec![7u8; 4000])).await {
            Err(WalError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::StorageFull)
            }
            other => panic!("write on a full disk was not refused: {other:?}"),
        }
    }
    // The failed groups left nothing behind in the segment.
    let seg1 = fs::read(segment_path(dir.path(), 1)).unwrap();
    assert_eq!(seg1.len(), HEADER_LEN + b"acked-1".len());
    // Rotation (a cut) still works while the disk is full.
    let rotated = wal.rotate().await.unwrap();
    fs::remove_file(&switch).unwrap();
    let seg = wal.append(Bytes::from_static(b"acked-2")).await.unwrap();
    assert!(seg >= rotated);
    drop(wal);
    for s in list_segments(dir.path()).unwrap() {
        let data = fs::read(segment_path(dir.path(), s)).unwrap();
        let good = record::parse_segment(&data).good_len;
        assert_eq!(
            good,
            data.len(),
            "segment {s} has garbage after its records"
        );
    }
    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    let got: Vec<_> = replayed.iter().map(|r| r.payload.to_vec()).collect();
    assert_eq!(got, vec![b"acked-1".to_vec(), b"acked-2".to_vec()]);
}

/// A flipped byte inside an early record of a segment costs that record only: replay
/// steps over it, keeps every record after it and says how much it skipped.
#[tokio::test]
async fn corrupt_record_mid_segment_is_skipped_and_later_records_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    for i in 0..10u32 {
        wal.append(Bytes::from(format!("record-{i:02}-payload")))
            .await
            .unwrap();
    }
    drop(wal);
    let seg = segment_path(dir.path(), 1);
    let mut data = fs::read(&seg).unwrap();
    let rec_len = HEADER_LEN + "record-00-payload".len();
    // A byte in the payload of the fourth record.
    data[3 * rec_len + HEADER_LEN + 2] ^= 0x40;
    fs::write(&seg, &data).unwrap();

    let (wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    let got: Vec<_> = replayed
        .iter()
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<_> = (0..10u32)
        .filter(|&i| i != 3)
        .map(|i| format!("record-{i:02}-payload"))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        wal.replay_stats(),
        ReplayStats {
            skipped_regions: 1,
            skipped_bytes: rec_len,
            cut_bytes: 0,
        }
    );
    // The segment is left whole (nothing after the bad record is cut off).
    assert_eq!(fs::read(&seg).unwrap().len(), data.len());
}

/// A run of zero bytes (a torn page) is not mistaken for empty records while
/// resynchronising: it is a tail and is cut.
#[test]
fn zeroed_tail_is_not_read_as_records() {
    let mut data = Vec::new();
    record::encode_into(&mut data, b"kept");
    data.extend_from_slice(&[0xff; 3]);
    data.extend_from_slice(&[0u8; 64]);
    let parsed = record::parse_segment(&data);
    assert_eq!(parsed.records.len(), 1);
    assert_eq!(parsed.good_len, HEADER_LEN + 4);
    assert_eq!(parsed.skipped_regions, 0);
}

/// Garbage full of plausible lengths (about 1 MB at every fourth offset) would cost a
/// checksum of that size per offset; the bounded scan gives up and treats it as a tail.
#[test]
fn resync_over_plausible_garbage_is_bounded() {
    let mut data = Vec::new();
    record::encode_into(&mut data, b"kept");
    for _ in 0..(2 << 20) / 4 {
        data.extend_from_slice(&[0x01, 0x01, 0x0f, 0x00]);
    }
    let parsed = record::parse_segment(&data);
    assert_eq!(parsed.records.len(), 1);
    assert_eq!(parsed.good_len, HEADER_LEN + 4);
}

/// A second open of a directory in use fails, naming the directory; once the first
/// handle is gone the directory opens again.
#[tokio::test]
async fn second_open_of_a_locked_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    let err = match Wal::open(dir.path(), metrics()) {
        Err(e) => e,
        Ok(_) => panic!("a second open of a locked wal directory succeeded"),
    };
    assert!(matches!(err, WalError::Locked(_)), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    // The refused open touched nothing: the first handle still appends to segment 1.
    assert_eq!(wal.append(Bytes::from_static(b"a")).await.unwrap(), 1);
    drop(wal);
    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(replayed.len(), 1);
}

#[tokio::test]
async fn old_segments_are_deleted_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), metrics()).unwrap();
    wal.append(Bytes::from_static(b"a")).await.unwrap();
    let new = wal.rotate().await.unwrap();
    wal.append(Bytes::from_static(b"b")).await.unwrap();
    assert_eq!(wal.delete_segments_before(new).await.unwrap(), 1);
    drop(wal);
    let (_wal, replayed) = Wal::open(dir.path(), metrics()).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(&replayed[0].payload[..], b"b");
}

/// A gzip payload reads back as the request it compresses, whatever its member count.
#[test]
fn gzip_payloads_decode_to_the_request() {
    use std::io::Write;
    let tenant = TenantId::new("team-a").unwrap();
    let otlp: Vec<u8> = (0..5_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let member = |d: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    };
    let mut two = member(&otlp[..7_000]);
    two.extend(member(&otlp[7_000..]));
    for gz in [member(&otlp), two] {
        let (t, back) = decode_payload(&encode_payload_gzip(&tenant, &gz)).unwrap();
        assert_eq!(t, tenant);
        assert_eq!(&back[..], &otlp[..]);
    }
    let err = decode_payload(&encode_payload_gzip(&tenant, b"not gzip at all")).unwrap_err();
    assert!(err.to_string().contains("cannot be inflated"), "{err}");
}

/// With only a flush marker left (its segments deleted by hand), the WAL starts its new
/// segment at the marker's boundary, so the marker cannot drop traces written after.
#[tokio::test]
async fn new_segments_start_past_every_flush_marker() {
    let dir = tempfile::tempdir().unwrap();
    let trace = crate::model::TraceId([5; 16]);
    let body = flushed::encode(7, &[(TenantId::single(), vec![trace])]);
    flushed::write(dir.path(), 7, &body).unwrap();
    let (wal, replay) = Wal::open_lazy(dir.path(), metrics()).unwrap();
    assert_eq!(wal.opened_segment(), 7);
    assert!(!replay.flushed().contains(7, &TenantId::single(), &trace));
    assert!(replay.flushed().contains(6, &TenantId::single(), &trace));
}
