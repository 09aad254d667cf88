use super::*;
use std::os::unix::fs::PermissionsExt;

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = BlobStore::open(dir.path().join("blobs")).unwrap();
    (dir, s)
}

fn tmp_entries(s: &BlobStore) -> usize {
    fs::read_dir(s.root().join("tmp")).unwrap().count()
}

#[test]
fn digest_parse_and_display() {
    let d = Digest::of(b"abc");
    let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(d.to_hex(), hex);
    assert_eq!(hex.parse::<Digest>().unwrap(), d);
    assert_eq!(hex.to_uppercase().parse::<Digest>().unwrap(), d);
    assert_eq!(format!("sha256:{hex}").parse::<Digest>().unwrap(), d);
    for bad in [
        "",
        "zz",
        &hex[..63],
        &format!("{hex}0"),
        "é".repeat(32).as_str(),
    ] {
        assert!(bad.parse::<Digest>().is_err(), "{bad:?}");
    }
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(json, format!("\"{hex}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    assert!(serde_json::from_str::<Digest>("\"nope\"").is_err());
}

#[test]
fn put_bytes_stores_once_under_digest() {
    let (_d, s) = store();
    let a = s.put_bytes(b"kernel image").unwrap();
    assert!(a.created);
    assert_eq!(a.size, 12);
    assert_eq!(a.digest, Digest::of(b"kernel image"));
    let b = s.put_bytes(b"kernel image").unwrap();
    assert!(!b.created, "identical content is stored once");
    assert_eq!(s.list().unwrap(), vec![(a.digest, 12)]);
    assert_eq!(&s.read(&a.digest).unwrap()[..], b"kernel image");
    assert!(s.has(&a.digest));
    assert_eq!(s.size(&a.digest).unwrap(), Some(12));
    let p = s.get(&a.digest).unwrap();
    assert!(p.ends_with(format!("sha256/{}/{}", &a.digest.to_hex()[..2], a.digest)));
    assert_eq!(tmp_entries(&s), 0, "no temp debris");
}

#[test]
fn empty_blob_is_fine() {
    let (_d, s) = store();
    let a = s.put_bytes(b"").unwrap();
    assert_eq!(a.size, 0);
    s.verify(&a.digest).unwrap();
}

#[test]
fn put_stream_checks_expected_digest() {
    let (_d, s) = store();
    let wrong = Digest::of(b"other");
    let err = s.put_stream(&b"payload"[..], Some(&wrong)).unwrap_err();
    assert!(matches!(err, BlobError::DigestMismatch { expected, .. } if expected == wrong));
    assert!(s.list().unwrap().is_empty(), "mismatch stores nothing");
    assert_eq!(tmp_entries(&s), 0);
    let right = Digest::of(b"payload");
    let info = s.put_stream(&b"payload"[..], Some(&right)).unwrap();
    assert_eq!(info.digest, right);
}

#[test]
fn put_stream_reports_source_errors() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("connection reset"))
        }
    }
    let (_d, s) = store();
    assert!(matches!(
        s.put_stream(Broken, None),
        Err(BlobError::Source(_))
    ));
    assert_eq!(tmp_entries(&s), 0);
}

#[test]
fn put_file_reports_progress() {
    let (d, s) = store();
    let src = d.path().join("big.img");
    let data: Vec<u8> = (0..(CHUNK * 2 + 123)).map(|i| (i % 251) as u8).collect();
    fs::write(&src, &data).unwrap();
    let mut calls = Vec::new();
    let info = s
        .put_file(&src, |done, total| calls.push((done, total)))
        .unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.digest, Digest::of(&data));
    let total = data.len() as u64;
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.len() >= 3);
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "monotonic");
    assert!(matches!(
        s.put_file(d.path().join("missing"), |_, _| {}),
        Err(BlobError::Io { op: "open", .. })
    ));
}

#[test]
fn aborted_writer_leaves_nothing() {
    let (_d, s) = store();
    let mut w = s.writer().unwrap();
    w.write_all(b"half an upl").unwrap();
    assert_eq!(tmp_entries(&s), 1);
    drop(w);
    assert_eq!(tmp_entries(&s), 0);
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn open_clears_crash_debris() {
    let (d, s) = store();
    fs::write(s.root().join("tmp/123-0.part"), b"torn").unwrap();
    let s2 = BlobStore::open(d.path().join("blobs")).unwrap();
    assert_eq!(tmp_entries(&s2), 0);
}

#[test]
fn verify_detects_corruption_and_damaged_copy_is_replaced() {
    let (_d, s) = store();
    let info = s.put_bytes(b"ramdisk").unwrap();
    s.verify(&info.digest).unwrap();
    let path = s.path_of(&info.digest);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o444
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"ramdisX").unwrap();
    assert!(matches!(
        s.verify(&info.digest),
        Err(BlobError::Corrupt { expected, .. }) if expected == info.digest
    ));
    // A damaged copy of the same size is found by hashing and replaced by a fresh put.
    let again = s.put_bytes(b"ramdisk").unwrap();
    assert!(again.created && again.repaired, "{again:?}");
    s.verify(&info.digest).unwrap();
    let kept = s.put_bytes(b"ramdisk").unwrap();
    assert!(!kept.created && !kept.repaired, "intact: kept");
    // A truncated copy (length differs) is replaced by a fresh put.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&path, b"ram").unwrap();
    assert!(s.put_bytes(b"ramdisk").unwrap().created);
    s.verify(&info.digest).unwrap();
    let missing = Digest::of(b"never stored");
    assert!(matches!(s.verify(&missing), Err(BlobError::NotFound(_))));
    assert!(matches!(s.read(&missing), Err(BlobError::NotFound(_))));
}

#[test]
fn remove_and_list() {
    let (_d, s) = store();
    let a = s.put_bytes(b"a").unwrap().digest;
    let b = s.put_bytes(b"b").unwrap().digest;
    fs::write(s.root().join("sha256/not-a-digest"), b"x").unwrap();
    let mut want = vec![(a, 1), (b, 1)];
    want.sort();
    assert_eq!(s.list().unwrap(), want);
    assert!(s.remove(&a).unwrap());
    assert!(!s.remove(&a).unwrap());
    assert!(!s.has(&a));
    assert_eq!(s.list().unwrap(), vec![(b, 1)]);
}
