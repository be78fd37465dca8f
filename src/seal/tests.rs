//! The framing against the age crate in both directions, tampering, keys and lengths.

use std::io::{Read, Write};

use super::*;

fn keys() -> (age::x25519::Identity, Recipients) {
    let id = age::x25519::Identity::generate();
    let r = Recipients(vec![id.to_public()]);
    (id, r)
}

/// A whole object sealed by [`Sealer`], part by part as the uploader does.
fn seal_all(s: &Sealer, plain: &[u8], part_chunks: usize) -> Vec<u8> {
    let mut out = s.header().to_vec();
    let part = part_chunks * CHUNK as usize;
    let total = plain.len() as u64;
    if plain.is_empty() {
        let mut buf = vec![0; sealed_part_len(0)];
        s.seal_in_place(0, 0, 0, &mut buf);
        out.extend_from_slice(&buf);
    }
    for (i, p) in plain.chunks(part).enumerate() {
        let mut buf = p.to_vec();
        buf.resize(sealed_part_len(p.len()), 0);
        s.seal_in_place((i * part_chunks) as u64, p.len(), total, &mut buf);
        out.extend_from_slice(&buf);
    }
    assert_eq!(out.len() as u64, s.sealed_len(total));
    // The first pass of a multipart upload names the same CRC, whatever its read sizes.
    for known in [Some(total), None] {
        let mut c = SealedCrc::new(s, known);
        for piece in plain.chunks(10_007) {
            c.update(piece);
        }
        assert_eq!(
            c.finish(),
            crc32fast::hash(&out),
            "{total} bytes, total {known:?}"
        );
    }
    out
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

const SIZES: &[usize] = &[0, 1, 65535, 65536, 65537, 3 * 65536, 3 * 65536 + 5, 1 << 20];

#[test]
fn what_we_seal_the_age_crate_decrypts() {
    let (id, r) = keys();
    for &n in SIZES {
        let plain = data(n);
        let sealed = seal_all(&Sealer::new(&r), &plain, 2);
        let d = age::Decryptor::new(&sealed[..]).unwrap();
        let mut got = Vec::new();
        d.decrypt(std::iter::once(&id as &dyn age::Identity))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, plain, "{n} bytes");
    }
}

#[test]
fn what_the_age_crate_encrypts_we_open_whole_and_by_ranges() {
    let (id, _) = keys();
    let other = age::x25519::Identity::generate();
    let ids = Identities(vec![other.clone(), id.clone()]);
    for &n in SIZES {
        let plain = data(n);
        let recips: Vec<Box<dyn age::Recipient>> =
            vec![Box::new(other.to_public()), Box::new(id.to_public())];
        let e = age::Encryptor::with_recipients(recips.iter().map(|r| r.as_ref() as _)).unwrap();
        let mut sealed = Vec::new();
        let mut w = e.wrap_output(&mut sealed).unwrap();
        w.write_all(&plain).unwrap();
        w.finish().unwrap();
        // Whole, fed in odd pieces.
        let mut s = StreamOpener::new(sealed.len() as u64);
        let mut got = Vec::new();
        for piece in sealed.chunks(7777) {
            s.feed(&ids, piece, &mut |b| {
                got.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        assert!(s.finished(), "{n}");
        assert_eq!(got, plain, "{n} bytes");
        // The header a byte at a time, then the rest whole.
        let mut s = StreamOpener::new(sealed.len() as u64);
        let mut again = Vec::new();
        let split = 300.min(sealed.len());
        for piece in sealed[..split]
            .chunks(1)
            .chain(std::iter::once(&sealed[split..]))
        {
            s.feed(&ids, piece, &mut |b| {
                again.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        }
        assert!(s.finished() && again == plain, "{n} bytes fed byte by byte");
        // By ranges of plaintext.
        let o = Opener::open(&sealed, &ids).unwrap().unwrap();
        let total = o.plain_len(sealed.len() as u64).unwrap();
        assert_eq!(total, n as u64);
        let mut back = vec![0u8; n];
        let step = 2 * CHUNK;
        let mut at = 0;
        loop {
            let want = at..(at + step).min(total);
            let (chunks, bytes) = sealed_range(o.payload_start(), want.clone(), total);
            let mut ro = RangeOpener::new(&o, chunks, total);
            ro.feed(
                &sealed[bytes.start as usize..bytes.end as usize],
                &mut |off, b| {
                    back[off as usize..off as usize + b.len()].copy_from_slice(b);
                    Ok(())
                },
            )
            .unwrap();
            assert!(ro.finished());
            at += step;
            if at >= total {
                break;
            }
        }
        assert_eq!(back, plain, "{n} bytes by ranges");
    }
}

#[test]
fn every_flipped_byte_is_found() {
    let (id, r) = keys();
    let ids = Identities(vec![id]);
    let plain = data(2 * CHUNK as usize + 100);
    let sealed = seal_all(&Sealer::new(&r), &plain, 1);
    // Every byte of the header, and a spread of payload bytes (every tag included).
    let mut at: Vec<usize> = (0..Sealer::new(&r).header().len()).collect();
    at.extend((0..sealed.len()).step_by(997));
    at.extend((1..=3).map(|k| (k * SEALED_CHUNK as usize - 1).min(sealed.len() - 1)));
    for i in at {
        let mut bad = sealed.clone();
        bad[i] ^= 0x20;
        let mut s = StreamOpener::new(bad.len() as u64);
        let r = s.feed(&ids, &bad, &mut |_| Ok(()));
        assert!(
            r.is_err() || !s.finished(),
            "flipped byte {i} went unnoticed"
        );
    }
    // A truncated or extended object is not a payload either.
    for len in [sealed.len() - 1, sealed.len() - 17] {
        let mut s = StreamOpener::new(len as u64);
        let r = s.feed(&ids, &sealed[..len], &mut |_| Ok(()));
        assert!(r.is_err() || !s.finished(), "truncated to {len}");
    }
}

#[test]
fn the_wrong_identity_is_told_apart_from_a_bad_header() {
    let (_, r) = keys();
    let sealed = seal_all(&Sealer::new(&r), b"hello", 1);
    let other = Identities(vec![age::x25519::Identity::generate()]);
    assert!(matches!(
        Opener::open(&sealed, &other),
        Err(SealError::WrongIdentity)
    ));
    assert!(matches!(
        Opener::open(b"SSTable bytes, not age", &other),
        Err(SealError::Header { .. })
    ));
    // Every prefix of the header asks for more, none is an error.
    let hl = Sealer::new(&r).header().len();
    for n in 0..hl {
        assert!(
            matches!(Opener::open(&sealed[..n], &other), Ok(None)),
            "prefix {n}"
        );
    }
}

#[test]
fn recipients_and_identities_parse_as_the_age_tool_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let id = age::x25519::Identity::generate();
    let idf = dir.path().join("key.txt");
    std::fs::write(
        &idf,
        format!(
            "# created: today\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_string().expose_secret()
        ),
    )
    .unwrap();
    let rf = dir.path().join("recipients.txt");
    std::fs::write(&rf, format!("# team\n\n{}\n", id.to_public())).unwrap();
    let r = Recipients::parse(&[id.to_public().to_string()], std::slice::from_ref(&rf)).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        Identities::read(std::slice::from_ref(&idf))
            .unwrap()
            .0
            .len(),
        1
    );
    // A bad recipient is named; a bad identity line is numbered, never quoted.
    let e = Recipients::parse(&["age1nope".into()], &[]).unwrap_err();
    assert!(e.to_string().contains("\"age1nope\""), "{e}");
    std::fs::write(&idf, "AGE-SECRET-KEY-1SECRETBUTBROKEN\n").unwrap();
    let e = Identities::read(&[idf]).unwrap_err().to_string();
    assert!(
        e.contains("line 1") && !e.contains("SECRETBUTBROKEN"),
        "{e}"
    );
    std::fs::write(&rf, "# nobody\n").unwrap();
    assert!(
        Recipients::parse(&[], &[rf])
            .unwrap_err()
            .to_string()
            .contains("names no recipient")
    );
}

#[test]
fn plain_lengths_round_trip_and_impossible_lengths_are_refused() {
    let (_, r) = keys();
    let s = Sealer::new(&r);
    let h = s.header().len() as u64;
    for &n in SIZES {
        assert_eq!(plain_len(h, s.sealed_len(n as u64)).unwrap(), n as u64);
    }
    // Too short for a tag; a trailing tag-only chunk after a full one.
    assert!(plain_len(h, h + 15).is_err());
    assert!(plain_len(h, h + SEALED_CHUNK + TAG).is_err());
}

#[test]
fn the_header_length_is_fixed_by_the_number_of_recipients() {
    for k in 1..5u64 {
        let r = Recipients(
            (0..k)
                .map(|_| age::x25519::Identity::generate().to_public())
                .collect(),
        );
        let s = Sealer::new(&r);
        assert_eq!(s.header().len() as u64, x25519_header_len(k));
        for &n in SIZES {
            assert!(could_be_sealed(s.sealed_len(n as u64), n as u64));
            assert!(!could_be_sealed(s.sealed_len(n as u64) + 1, n as u64));
            assert!(!could_be_sealed(n as u64, n as u64));
        }
    }
}
