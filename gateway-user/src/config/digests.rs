//! The certificate digests a server may pin client certificates to, written as Envoy reads
//! them: `verifyCertificateSpki` is the base64 SHA-256 of a certificate's
//! SubjectPublicKeyInfo, `verifyCertificateHash` the hex SHA-256 of the whole certificate
//! (upper or lower case, colons between the bytes allowed).

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// A `verifyCertificateSpki` entry, or Envoy's reason for refusing it.
pub fn spki_digest(text: &str) -> Result<Sha256, String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("invalid base64-encoded SHA-256 {text:?}: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "invalid base64-encoded SHA-256 {text:?}: {} bytes, not 32",
            b.len()
        )
    })
}

/// A `verifyCertificateHash` entry, or Envoy's reason for refusing it.
pub fn certificate_hash(text: &str) -> Result<Sha256, String> {
    let digits: Vec<u8> = text.bytes().filter(|&b| b != b':').collect();
    let refused = || format!("invalid hex-encoded SHA-256 {text:?}: 64 hex digits expected");
    if digits.len() != 64 {
        return Err(refused());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).map_err(|_| refused())?;
        *byte = u8::from_str_radix(text, 16).map_err(|_| refused())?;
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_as_envoy_reads_them() {
        let hash = "DF6FF72FE9116521268F6F2DD4966F51DF479883FE7037B39F75916AC3049D1A";
        let colons = "df:6f:f7:2f:e9:11:65:21:26:8f:6f:2d:d4:96:6f:51:df:47:98:83:fe:70:37:b3:9f:75:91:6a:c3:04:9d:1a";
        assert_eq!(certificate_hash(hash), certificate_hash(colons));
        assert_eq!(certificate_hash(hash).map(|d| d[0]), Ok(0xdf));
        for bad in ["", "DF6F", &hash[1..], &format!("{}zz", &hash[2..])] {
            assert!(certificate_hash(bad).is_err(), "{bad:?}");
        }
        let spki = "NvqYIYSbgK2vCJpQhObf77vv+bQWtc5ek5RIOwPiC9A=";
        assert_eq!(spki_digest(spki).map(|d| d.len()), Ok(32));
        for bad in ["", "not base64!", "AAAA"] {
            assert!(spki_digest(bad).is_err(), "{bad:?}");
        }
    }
}
