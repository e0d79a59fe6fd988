//! The spool on its own: order, bounds, recovery (no broker needed).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use chrono::DateTime;
use rskafka::record::Record;

use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("streamtract-spool-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn record(i: usize) -> Record {
    let mut headers = BTreeMap::new();
    headers.insert("n".to_string(), i.to_string().into_bytes());
    Record {
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(vec![b'x'; 100 + i % 50]),
        headers,
        timestamp: DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64).unwrap(),
    }
}

fn keys(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
        .collect()
}

/// Drains everything in batches of `n`, returning the keys in order.
fn drain(p: &mut PartitionSpool, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while !p.is_empty() {
        let peeked = p.peek(n, 1 << 20).unwrap();
        assert!(!peeked.records.is_empty());
        out.extend(keys(&peeked.records));
        p.consume(peeked.records.len() as u64, peeked.next).unwrap();
    }
    out
}

#[test]
fn records_come_back_in_order_across_segments_and_leave_nothing_behind() {
    let d = dir("order");
    let spool = Spool::open(SpoolConfig::new(&d, 8 << 20)).unwrap();
    let mut p = spool.partition("scores", 0).unwrap();
    let all: Vec<Record> = (0..20_000).map(record).collect();
    for chunk in all.chunks(700) {
        assert_eq!(p.append(chunk.iter()).unwrap(), chunk.len());
    }
    let segments = fs::read_dir(spool.partition_dir("scores", 0))
        .unwrap()
        .count();
    assert!(segments > 2, "expected several segments, found {segments}");
    let reading = spool.status().read();
    assert_eq!(reading.records, 20_000);
    assert!(reading.bytes > 0 && reading.bytes <= reading.max_bytes);
    assert!(reading.oldest.is_some());

    let got = drain(&mut p, 333);
    assert_eq!(got, keys(&all));
    let reading = spool.status().read();
    assert_eq!(
        (reading.records, reading.bytes, reading.oldest),
        (0, 0, None)
    );
    let left: Vec<_> = fs::read_dir(spool.partition_dir("scores", 0))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "drained spool left files: {left:?}");
}

#[test]
fn appends_stop_at_the_bound_and_resume_after_a_drain() {
    let d = dir("bound");
    let spool = Spool::open(SpoolConfig::new(&d, MIN_SPOOL_BYTES)).unwrap();
    let mut a = spool.partition("scores", 0).unwrap();
    let mut b = spool.partition("scores", 1).unwrap();
    let all: Vec<Record> = (0..20_000).map(record).collect();
    let n = a.append(all.iter()).unwrap();
    assert!(n > 0 && n < all.len(), "stored {n}");
    // The bound is shared: the other partition has no room either.
    assert_eq!(b.append(all.iter().take(1)).unwrap(), 0);
    assert!(spool.status().read().bytes <= MIN_SPOOL_BYTES);
    let drained = drain(&mut a, 1000);
    assert_eq!(drained, keys(&all[..n]));
    assert_eq!(b.append(all.iter().take(1)).unwrap(), 1);
}

#[test]
fn a_restart_resumes_after_the_drained_records() {
    let d = dir("cursor");
    {
        let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
        let mut p = spool.partition("scores", 3).unwrap();
        let all: Vec<Record> = (0..1000).map(record).collect();
        p.append(all.iter()).unwrap();
        let peeked = p.peek(400, 1 << 20).unwrap();
        p.consume(400, peeked.next).unwrap();
    }
    let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
    let mut p = spool.partition("scores", 3).unwrap();
    assert_eq!(p.records(), 600);
    assert_eq!(spool.status().read().records, 600);
    let want: Vec<String> = keys(&(400..1000).map(record).collect::<Vec<_>>());
    assert_eq!(drain(&mut p, 250), want);
}

#[test]
fn a_torn_last_record_is_cut_and_never_read() {
    let d = dir("torn");
    let seg;
    {
        let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
        let mut p = spool.partition("scores", 0).unwrap();
        let all: Vec<Record> = (0..50).map(record).collect();
        p.append(all.iter()).unwrap();
        seg = fs::read_dir(spool.partition_dir("scores", 0))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
    }
    // A crash in the middle of appending record 50: half a frame at the end.
    let good = fs::metadata(&seg).unwrap().len();
    let mut half = Vec::new();
    frame::encode(&record(50), 0, &mut half);
    half.truncate(half.len() / 2);
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&half);
    fs::write(&seg, &bytes).unwrap();

    let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
    let mut p = spool.partition("scores", 0).unwrap();
    assert_eq!(p.records(), 50);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good, "torn tail not cut");
    // Appends after the cut follow the good records.
    p.append([record(99)].iter()).unwrap();
    let mut want = keys(&(0..50).map(record).collect::<Vec<_>>());
    want.push("key-99".into());
    assert_eq!(drain(&mut p, 17), want);
}

#[test]
fn a_flipped_bit_in_the_last_record_is_cut_too() {
    let d = dir("flip");
    let seg;
    {
        let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
        let mut p = spool.partition("scores", 0).unwrap();
        p.append((0..10).map(record).collect::<Vec<_>>().iter())
            .unwrap();
        seg = spool
            .partition_dir("scores", 0)
            .join(format!("{:020}.seg", 0));
    }
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let spool = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
    let mut p = spool.partition("scores", 0).unwrap();
    assert_eq!(p.records(), 9);
    assert_eq!(
        drain(&mut p, 100),
        keys(&(0..9).map(record).collect::<Vec<_>>())
    );
}

#[test]
fn bad_configurations_are_refused_with_what_to_do() {
    let small = Spool::open(SpoolConfig::new(dir("small"), 1000)).unwrap_err();
    assert!(matches!(small, SpoolError::TooSmall { .. }));
    assert!(small.to_string().contains("--spool-max-bytes"), "{small}");

    let file = dir("file");
    fs::write(&file, b"not a directory").unwrap();
    let e = Spool::open(SpoolConfig::new(file.join("spool"), 16 << 20)).unwrap_err();
    assert!(matches!(e, SpoolError::NotWritable { .. }), "{e:?}");
    assert!(e.to_string().contains("not usable"), "{e}");

    let d = dir("locked");
    let _first = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap();
    let e = Spool::open(SpoolConfig::new(&d, 16 << 20)).unwrap_err();
    assert!(matches!(e, SpoolError::Locked { .. }), "{e:?}");
}
