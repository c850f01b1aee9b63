//! The TLS ClientHello, as far as routing by SNI needs it: a pure function over the bytes
//! a connection has received so far (peeked, not consumed), which says "complete, with this
//! server name", "need more bytes", or why the connection is refused.
//!
//! Real clients spread a ClientHello over several TCP segments (a post-quantum key share
//! makes it 1.5-2 KiB) and may split it over several TLS records; both are reassembled. The
//! records carrying it may take at most [`MAX_CLIENT_HELLO`] bytes (Envoy's and nginx's
//! default limit): nothing here reads past its input, allocates more than that, or panics
//! (unit, property and fuzz tests). The file has no dependencies: the fuzz target
//! (`fuzz/`) compiles it on its own.

/// Bytes of TLS records that may carry a ClientHello before it is refused as too large.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// The largest TLSPlaintext fragment (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 1 << 14;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// DNS names are at most 253 characters; RFC 6066 allows up to 2^16, nobody sends that.
const MAX_SERVER_NAME: usize = 255;

/// How far the bytes received so far go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Complete(ClientHello),
    /// More is needed: nothing can change before the input is `needed` bytes long (the end
    /// of the record, or of the next record header), so a reader can sleep until then.
    Incomplete {
        needed: usize,
    },
}

/// What a complete ClientHello tells the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `server_name` extension's host name in ASCII lower case; `None` without one.
    pub server_name: Option<String>,
    /// Bytes of the TLS records that carry the ClientHello (what the client has sent so
    /// far may be more).
    pub len: usize,
}

/// Why a connection's first bytes are not a ClientHello Sluice routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The first record is not a TLS handshake record (plain text, SSLv2, another record).
    NotTls,
    /// The ClientHello needs more than [`MAX_CLIENT_HELLO`] bytes.
    TooLarge,
    /// A TLS handshake whose structure is broken, and where.
    Malformed(&'static str),
}

impl Refusal {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Refusal::NotTls => "not_tls",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed(_) => "malformed",
        }
    }
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::NotTls => f.write_str("not a TLS handshake"),
            Refusal::TooLarge => write!(f, "ClientHello larger than {MAX_CLIENT_HELLO} bytes"),
            Refusal::Malformed(why) => write!(f, "malformed ClientHello: {why}"),
        }
    }
}

/// Parses the bytes received so far: complete, incomplete, or refused (it never will be).
pub fn parse(input: &[u8]) -> Result<Parsed, Refusal> {
    let mut pos = 0;
    // The handshake message, reassembled only when it spans records.
    let mut joined: Vec<u8> = Vec::new();
    let mut message_len: Option<usize> = None;
    loop {
        let Some(rest) = input.get(pos..) else {
            return Ok(Parsed::Incomplete {
                needed: pos + RECORD_HEADER,
            });
        };
        check_record_start(rest, pos == 0)?;
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return Ok(Parsed::Incomplete {
                needed: pos + RECORD_HEADER,
            });
        };
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 {
            return Err(Refusal::Malformed("empty handshake record"));
        }
        if length > MAX_FRAGMENT {
            return Err(Refusal::Malformed("record longer than 2^14 bytes"));
        }
        let end = pos + RECORD_HEADER + length;
        if end > MAX_CLIENT_HELLO {
            return Err(Refusal::TooLarge);
        }
        let Some(fragment) = input.get(pos + RECORD_HEADER..end) else {
            return Ok(Parsed::Incomplete { needed: end });
        };
        let first = pos == 0;
        pos = end;
        // A ClientHello in one record (nearly always): parsed in place.
        if first
            && let Some(total) = message_total(fragment)?
            && fragment.len() >= total
        {
            return body(&fragment[HANDSHAKE_HEADER..total]).map(|server_name| {
                Parsed::Complete(ClientHello {
                    server_name,
                    len: pos,
                })
            });
        }
        if joined.len() + fragment.len() > MAX_CLIENT_HELLO {
            return Err(Refusal::TooLarge);
        }
        joined.extend_from_slice(fragment);
        if message_len.is_none() {
            message_len = message_total(&joined)?;
        }
        if let Some(total) = message_len
            && joined.len() >= total
        {
            return body(&joined[HANDSHAKE_HEADER..total]).map(|server_name| {
                Parsed::Complete(ClientHello {
                    server_name,
                    len: pos,
                })
            });
        }
    }
}

/// Refuses a record whose first bytes already show it is not a TLS handshake record, even
/// before its header is complete (so a plain-text client is refused at its first byte).
fn check_record_start(rest: &[u8], first: bool) -> Result<(), Refusal> {
    let refusal = if first {
        Refusal::NotTls
    } else {
        Refusal::Malformed("another record type inside the ClientHello")
    };
    match rest.first() {
        Some(&t) if t != CONTENT_HANDSHAKE => return Err(refusal),
        _ => {}
    }
    match rest.get(1) {
        // TLS 1.0-1.3 all say major version 3 (SSL 3.0's number) in the record header.
        Some(&major) if major != 3 => Err(if first {
            Refusal::NotTls
        } else {
            Refusal::Malformed("record version")
        }),
        _ => Ok(()),
    }
}

/// The whole handshake message's length (header included) once its header is there.
fn message_total(handshake: &[u8]) -> Result<Option<usize>, Refusal> {
    let Some(header) = handshake.get(..HANDSHAKE_HEADER) else {
        return Ok(None);
    };
    if header[0] != HANDSHAKE_CLIENT_HELLO {
        return Err(Refusal::Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    let length =
        usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    let total = HANDSHAKE_HEADER + length;
    // Each record adds its header, so this bounds the records' bytes from below.
    if total + RECORD_HEADER > MAX_CLIENT_HELLO {
        return Err(Refusal::TooLarge);
    }
    Ok(Some(total))
}

/// Bounds-checked reads over a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Refusal> {
        if n > self.bytes.len() {
            return Err(Refusal::Malformed(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Refusal> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Refusal> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `width`-byte length prefix.
    fn vector(&mut self, width: usize, what: &'static str) -> Result<&'a [u8], Refusal> {
        let len = match width {
            1 => usize::from(self.u8(what)?),
            _ => usize::from(self.u16(what)?),
        };
        self.take(len, what)
    }
}

/// The ClientHello body (RFC 8446 §4.1.2) -> the server name, if any.
fn body(message: &[u8]) -> Result<Option<String>, Refusal> {
    let mut r = Reader { bytes: message };
    let version = r.u16("legacy_version")?;
    if version >> 8 != 3 {
        return Err(Refusal::Malformed("legacy_version"));
    }
    r.take(32, "random")?;
    let session_id = r.vector(1, "legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(Refusal::Malformed("legacy_session_id longer than 32 bytes"));
    }
    let suites = r.vector(2, "cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(Refusal::Malformed("cipher_suites"));
    }
    if r.vector(1, "legacy_compression_methods")?.is_empty() {
        return Err(Refusal::Malformed("legacy_compression_methods"));
    }
    if r.bytes.is_empty() {
        return Ok(None); // no extensions (SSL 3.0-style): no SNI
    }
    let extensions = r.vector(2, "extensions")?;
    if !r.bytes.is_empty() {
        return Err(Refusal::Malformed("bytes after the extensions"));
    }
    let mut r = Reader { bytes: extensions };
    let mut server_name = None;
    let mut seen_server_name = false;
    while !r.bytes.is_empty() {
        let kind = r.u16("extension type")?;
        let data = r.vector(2, "extension length")?;
        if kind == EXTENSION_SERVER_NAME {
            if seen_server_name {
                return Err(Refusal::Malformed("two server_name extensions"));
            }
            seen_server_name = true;
            server_name = sni(data)?;
        }
    }
    Ok(server_name)
}

/// The `server_name` extension (RFC 6066 §3): the host name, lower-cased.
fn sni(data: &[u8]) -> Result<Option<String>, Refusal> {
    let mut r = Reader { bytes: data };
    let list = r.vector(2, "server_name_list")?;
    if !r.bytes.is_empty() {
        return Err(Refusal::Malformed("bytes after the server_name_list"));
    }
    let mut r = Reader { bytes: list };
    let mut host = None;
    while !r.bytes.is_empty() {
        let kind = r.u8("name_type")?;
        let name = r.vector(2, "server name")?;
        if kind != NAME_TYPE_HOST {
            continue; // unknown name types are skipped, as RFC 6066 asks
        }
        if host.is_some() {
            return Err(Refusal::Malformed("two host names in server_name"));
        }
        if name.is_empty() || name.len() > MAX_SERVER_NAME {
            return Err(Refusal::Malformed("server name length"));
        }
        // Printable ASCII without spaces: what a DNS name (or a wildcard label) may hold.
        if !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(Refusal::Malformed("server name characters"));
        }
        host = Some(
            name.iter()
                .map(|b| char::from(b.to_ascii_lowercase()))
                .collect(),
        );
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello with `extensions` (type, data), as one handshake message (no record
    /// headers).
    pub(super) fn message(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]);
        body.extend([1, 0]);
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    pub(super) fn server_name(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![NAME_TYPE_HOST];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (EXTENSION_SERVER_NAME, data)
    }

    /// `message` in records of at most `chunk` bytes each.
    pub(super) fn records(message: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in message.chunks(chunk) {
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend((part.len() as u16).to_be_bytes());
            out.extend(part);
        }
        out
    }

    /// The ClientHello, if `bytes` hold a complete one.
    fn complete(bytes: &[u8]) -> Option<ClientHello> {
        match parse(bytes) {
            Ok(Parsed::Complete(hello)) => Some(hello),
            _ => None,
        }
    }

    fn hello(name: &[u8]) -> Vec<u8> {
        records(
            &message(&[(10, vec![0, 2, 0, 29]), server_name(name)]),
            1 << 14,
        )
    }

    #[test]
    fn the_server_name_of_a_complete_hello() {
        let bytes = hello(b"Api.Example.COM");
        let parsed = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed,
            Parsed::Complete(ClientHello {
                server_name: Some("api.example.com".into()),
                len: bytes.len()
            })
        );
        // What follows the ClientHello (early data, the next record) is not counted.
        let mut more = bytes.clone();
        more.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(complete(&more).map(|h| h.len), Some(bytes.len()));
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let bytes = hello(b"a.example.com");
        for end in 0..bytes.len() {
            let Ok(Parsed::Incomplete { needed }) = parse(&bytes[..end]) else {
                panic!("prefix of {end} bytes: {:?}", parse(&bytes[..end]));
            };
            // Never more than the whole, never what is already there.
            assert!(needed > end && needed <= bytes.len(), "{end}: {needed}");
        }
        assert_eq!(parse(&bytes[..3]), Ok(Parsed::Incomplete { needed: 5 }));
        assert_eq!(
            parse(&bytes[..7]),
            Ok(Parsed::Incomplete {
                needed: bytes.len()
            })
        );
    }

    #[test]
    fn records_split_anywhere_reassemble() {
        let message = message(&[server_name(b"b.example.com"), (43, vec![2, 3, 4])]);
        for chunk in [1, 2, 3, 5, 64, message.len() - 1] {
            let bytes = records(&message, chunk);
            assert_eq!(
                complete(&bytes).map(|h| (h.server_name, h.len)),
                Some((Some("b.example.com".into()), bytes.len())),
                "records of {chunk} bytes"
            );
            assert!(complete(&bytes[..bytes.len() - 1]).is_none());
        }
    }

    #[test]
    fn no_server_name_is_a_complete_hello_without_one() {
        let bytes = records(&message(&[(10, vec![0, 2, 0, 29])]), 1 << 14);
        assert_eq!(complete(&bytes).map(|h| h.server_name), Some(None));
        // No extensions at all.
        let mut bare = message(&[]);
        bare.truncate(bare.len() - 2);
        let len = (bare.len() - HANDSHAKE_HEADER) as u32;
        bare[1..4].copy_from_slice(&len.to_be_bytes()[1..]);
        assert_eq!(
            complete(&records(&bare, 100)).map(|h| h.server_name),
            Some(None)
        );
    }

    #[test]
    fn refusals_name_their_reason() {
        let refused = |bytes: &[u8]| parse(bytes).err();
        assert_eq!(refused(b"GET / HTTP/1.1\r\n"), Some(Refusal::NotTls));
        assert_eq!(refused(b"G"), Some(Refusal::NotTls), "at the first byte");
        assert_eq!(refused(&[0x80, 0x2e, 0x01]), Some(Refusal::NotTls), "SSLv2");
        assert_eq!(
            refused(&[23, 3, 3, 0, 5]),
            Some(Refusal::NotTls),
            "app data"
        );
        assert_eq!(refused(&[22, 2, 0]), Some(Refusal::NotTls), "version 2");
        assert!(matches!(
            refused(&[22, 3, 1, 0, 0]),
            Some(Refusal::Malformed("empty handshake record"))
        ));
        assert!(matches!(
            refused(&[22, 3, 1, 0x40, 0x01]),
            Some(Refusal::Malformed(_))
        ));
        // A ServerHello where a ClientHello belongs.
        let mut server_hello = hello(b"a.example.com");
        server_hello[5] = 2;
        assert!(matches!(
            refused(&server_hello),
            Some(Refusal::Malformed(_))
        ));
        // A ClientHello announcing 64 KiB.
        assert_eq!(
            refused(&[22, 3, 1, 0, 4, 1, 1, 0, 0]),
            Some(Refusal::TooLarge)
        );
        // A message under the cap whose records' headers take it over.
        let base = message(&[server_name(b"a.example.com"), (21, vec![])]).len();
        let big = message(&[
            server_name(b"a.example.com"),
            (21, vec![0; MAX_CLIENT_HELLO - 100 - base]),
        ]);
        assert_eq!(big.len(), MAX_CLIENT_HELLO - 100);
        assert_eq!(refused(&records(&big, 100)), Some(Refusal::TooLarge));
        // An alert record between the ClientHello's records.
        let whole = message(&[server_name(b"a.example.com")]);
        let mut split = records(&whole[..10], 100);
        split.extend([21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(refused(&split), Some(Refusal::Malformed(_))));
        // Two server_name extensions; a name with a space; an empty name.
        for bad in [
            records(
                &message(&[server_name(b"a.b"), server_name(b"c.d")]),
                1 << 14,
            ),
            hello(b"a b.example.com"),
            hello(b""),
        ] {
            assert!(
                matches!(refused(&bad), Some(Refusal::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_hello_just_under_the_cap_parses() {
        let name = server_name(b"a.example.com");
        // 2 records: headers 10 bytes; message header 4; the rest is padding.
        let base = message(&[name.clone(), (21, vec![])]).len();
        let pad = MAX_CLIENT_HELLO - 2 * RECORD_HEADER - base;
        let message = message(&[name, (21, vec![0; pad])]);
        let bytes = records(&message, message.len().div_ceil(2));
        assert_eq!(bytes.len(), MAX_CLIENT_HELLO);
        assert_eq!(
            complete(&bytes).map(|h| h.server_name),
            Some(Some("a.example.com".into()))
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::{complete, message, records, server_name};
        use crate::proxy::sni::client_hello::{MAX_CLIENT_HELLO, Parsed, parse};

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9]{1,20}(\\.[a-z0-9-]{1,20}){0,4}"
        }

        fn extensions() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
            prop::collection::vec(
                (1u16..0xffff, prop::collection::vec(any::<u8>(), 0..300)),
                0..8,
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
                match parse(&bytes) {
                    Ok(Parsed::Complete(hello)) => prop_assert!(hello.len <= bytes.len()),
                    Ok(Parsed::Incomplete { needed }) => {
                        prop_assert!(needed > bytes.len() && needed <= MAX_CLIENT_HELLO + 5)
                    }
                    Err(_) => {}
                }
            }

            #[test]
            fn split_hellos_route_by_their_name(
                host in name(),
                others in extensions(),
                at in 0usize..8,
                chunk in 1usize..600,
            ) {
                let mut exts = others;
                exts.insert(at.min(exts.len()), server_name(host.as_bytes()));
                let bytes = records(&message(&exts), chunk);
                prop_assume!(bytes.len() <= MAX_CLIENT_HELLO);
                let parsed = complete(&bytes).map(|h| (h.server_name, h.len));
                prop_assert_eq!(parsed, Some((Some(host), bytes.len())));
                for end in [0, 1, 5, bytes.len() / 2, bytes.len() - 1] {
                    let incomplete = matches!(
                        parse(&bytes[..end]),
                        Ok(Parsed::Incomplete { needed }) if needed > end && needed <= bytes.len()
                    );
                    prop_assert!(incomplete, "prefix of {}", end);
                }
            }

            #[test]
            fn mutated_hellos_never_panic(
                host in name(),
                chunk in 1usize..400,
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = records(&message(&[server_name(host.as_bytes())]), chunk);
                for (at, value) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                let end = cut.index(bytes.len() + 1);
                let _ = parse(&bytes[..end]);
            }
        }
    }
}
