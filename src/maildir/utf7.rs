//! IMAP modified UTF-7 (RFC 3501 §5.1.3), the encoding Dovecot uses for folder names on disk.
//!
//! Encoding is canonical and decoding is strict, so that every on-disk name maps to exactly one
//! mailbox name and back: decoding rejects what Dovecot's own validator rejects (printable ASCII
//! hidden in a base64 run, two adjacent base64 runs, non-zero padding bits, odd byte counts, lone
//! surrogates, unterminated runs, raw bytes outside printable ASCII).

use base64::alphabet::Alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// The failure of a strict modified UTF-7 decode; the caller adds which name it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utf7Error(pub String);

/// Modified BASE64 from RFC 3501: the usual alphabet with ',' in place of '/', never padded.
fn engine() -> Result<GeneralPurpose, Utf7Error> {
    // The alphabet is a constant, but its constructor is fallible; report rather than panic.
    let alphabet =
        Alphabet::new("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")
            .map_err(|e| Utf7Error(format!("internal: modified base64 alphabet: {e}")))?;
    let config = GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        // Non-zero leftover bits mean the name was not produced by a canonical encoder.
        .with_decode_allow_trailing_bits(false);
    Ok(GeneralPurpose::new(&alphabet, config))
}

/// True for the characters that modified UTF-7 writes as themselves.
fn is_direct(c: char) -> bool {
    (' '..='~').contains(&c)
}

/// Encodes UTF-8 text as modified UTF-7. Every string is representable.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending: Vec<u16> = Vec::new();
    for c in text.chars() {
        if is_direct(c) {
            flush(&mut out, &mut pending);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut pending);
    out
}

/// Writes a pending run of UTF-16 code units as "&<base64>-".
fn flush(out: &mut String, pending: &mut Vec<u16>) {
    if pending.is_empty() {
        return;
    }
    let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    out.push_str(&encode_run(&bytes));
    out.push('-');
    pending.clear();
}

/// Modified base64 without padding. Written by hand (a dozen lines) so that encoding cannot
/// fail; decoding goes through the `base64` crate, whose strictness we rely on.
fn encode_run(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
    let sym = |v: u32| char::from(ALPHABET[(v & 0x3f) as usize]);
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = u32::from(chunk.first().copied().unwrap_or(0));
        let b1 = u32::from(chunk.get(1).copied().unwrap_or(0));
        let b2 = u32::from(chunk.get(2).copied().unwrap_or(0));
        let n = (b0 << 16) | (b1 << 8) | b2;
        s.push(sym(n >> 18));
        s.push(sym(n >> 12));
        if chunk.len() > 1 {
            s.push(sym(n >> 6));
        }
        if chunk.len() > 2 {
            s.push(sym(n));
        }
    }
    s
}

/// Decodes modified UTF-7 strictly, rejecting every non-canonical or malformed form.
pub fn decode(text: &str) -> Result<String, Utf7Error> {
    let engine = engine()?;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // Remembers that the previous token was a base64 run, to reject "&..-&..-" (RFC 3501 says
    // consecutive runs must be merged, and Dovecot refuses them).
    let mut after_run = false;
    while let Some(c) = rest.chars().next() {
        if c != '&' {
            if !is_direct(c) {
                return Err(Utf7Error(format!(
                    "character {c:?} must be base64-encoded in modified UTF-7"
                )));
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
            after_run = false;
            continue;
        }
        let body_and_rest = &rest[1..];
        let Some(end) = body_and_rest.find('-') else {
            return Err(Utf7Error("unterminated '&' shift sequence".into()));
        };
        let body = &body_and_rest[..end];
        rest = &body_and_rest[end + 1..];
        if body.is_empty() {
            out.push('&');
            after_run = false;
            continue;
        }
        if after_run {
            return Err(Utf7Error(
                "two adjacent base64 runs (they must be one run)".into(),
            ));
        }
        let bytes = engine
            .decode(body)
            .map_err(|e| Utf7Error(format!("bad modified base64 {body:?}: {e}")))?;
        if bytes.len() % 2 != 0 {
            return Err(Utf7Error(format!(
                "base64 run {body:?} is not a whole number of UTF-16 units"
            )));
        }
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .filter_map(|p| <[u8; 2]>::try_from(p).ok())
            .map(u16::from_be_bytes)
            .collect();
        for decoded in char::decode_utf16(units) {
            let ch = decoded
                .map_err(|_| Utf7Error(format!("base64 run {body:?} holds a lone surrogate")))?;
            if is_direct(ch) {
                return Err(Utf7Error(format!(
                    "base64 run {body:?} encodes printable ASCII {ch:?}, which must be written directly"
                )));
            }
            out.push(ch);
        }
        after_run = true;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_and_dovecot_examples_round_trip() {
        let cases = [
            ("", ""),
            ("INBOX", "INBOX"),
            ("&&x&&", "&-&-x&-&-"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("tietä&jä&", "tiet&AOQ-&-j&AOQ-&-"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("😀", "&2D3eAA-"),
        ];
        for (utf8, mutf7) in cases {
            assert_eq!(encode(utf8), mutf7, "encode {utf8:?}");
            assert_eq!(decode(mutf7).as_deref(), Ok(utf8), "decode {mutf7:?}");
        }
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let bad = [
            "&",                  // unterminated
            "&Jjo",               // unterminated
            "&Jjo!",              // '!' is not base64 and no '-'
            "&U,BTFw-&ZeVnLIqe-", // unnecessary shift
            "&AGE-",              // 'a' encoded in base64
            "&AOR-",              // non-zero trailing bits
            "&AO-",               // odd number of bytes
            "&2D0-",              // lone high surrogate
            "p\u{e4}\u{e4}",      // raw non-ASCII
            "a\tb",               // raw control character
            "&A===-",             // padding is not allowed
        ];
        for input in bad {
            assert!(decode(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn every_single_octet_run_is_rejected() {
        const MB64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";
        for i in 0..=255usize {
            let s = format!(
                "&{}{}-",
                char::from(MB64[i >> 2]),
                char::from(MB64[(i & 3) << 4])
            );
            assert!(decode(&s).is_err(), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(s in "\\PC*") {
            let enc = encode(&s);
            prop_assert!(enc.chars().all(is_direct));
            prop_assert_eq!(decode(&enc), Ok(s));
        }

        #[test]
        fn decode_never_panics(s in "[&A-Za-z0-9+,\\-]{0,40}") {
            let _ = decode(&s);
        }
    }
}
