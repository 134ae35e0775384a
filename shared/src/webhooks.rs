//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): what a provider signs
//! when it calls us, and what we sign when we call a merchant.
//!
//! A secret is `whsec_` + base64 of its key bytes. A message is signed as the base64
//! HMAC-SHA256 of `"<webhook-id>.<webhook-timestamp>.<body>"` with the key, sent as
//! `webhook-signature: v1,<signature>` (several, space-separated, while a secret rotates).
//! Verification compares in constant time (`hmac`'s `verify_slice`) and refuses a timestamp
//! more than [`TOLERANCE_SECS`] from now either way, so a captured message cannot be replayed
//! later.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a message's timestamp may be from our clock, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

const PREFIX: &str = "whsec_";

/// A signing key, parsed from its `whsec_` form.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret never reaches a log.
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// `whsec_` + base64 of at least 16 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let encoded = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| "a webhook secret starts with whsec_".to_string())?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "a webhook secret is whsec_ and base64".to_string())?;
        if key.len() < 16 {
            return Err("a webhook secret has at least 16 bytes of key".into());
        }
        Ok(Self(key))
    }

    /// A new secret of 32 random bytes (the OS CSPRNG), in its `whsec_` form.
    pub fn generate() -> Result<String, String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness: {e}"))?;
        Ok(format!("{PREFIX}{}", STANDARD.encode(key)))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length: new_from_slice cannot fail for it.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header's value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            STANDARD.encode(self.mac(id, timestamp, body).finalize().into_bytes())
        )
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// A `webhook-*` header is missing or not what the spec allows.
    Malformed(&'static str),
    /// The timestamp is further than [`TOLERANCE_SECS`] from now.
    Stale,
    /// No `v1` signature matches.
    BadSignature,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "{what}"),
            Self::Stale => write!(f, "webhook-timestamp is more than {TOLERANCE_SECS} s from now"),
            Self::BadSignature => f.write_str("no v1 signature in webhook-signature matches the message"),
        }
    }
}

/// The three headers of a signed message, as received.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Checks a message against `secret` at `now` (Unix seconds); the message's id when it holds.
pub fn verify<'a>(secret: &Secret, signed: Signed<'a>, body: &[u8], now: i64) -> Result<&'a str, Rejection> {
    let id = signed
        .id
        .filter(|id| !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(Rejection::Malformed(
            "webhook-id is required: 1 to 255 printable characters",
        ))?;
    let timestamp: i64 = signed
        .timestamp
        .and_then(|t| t.parse().ok())
        .ok_or(Rejection::Malformed("webhook-timestamp is required: Unix seconds"))?;
    let header = signed
        .signature
        .ok_or(Rejection::Malformed("webhook-signature is required"))?;
    if (now - timestamp).abs() > TOLERANCE_SECS {
        return Err(Rejection::Stale);
    }
    let expected = secret.mac(id, timestamp, body);
    let matches = header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| STANDARD.decode(s).ok())
        .any(|candidate| expected.clone().verify_slice(&candidate).is_ok());
    if matches { Ok(id) } else { Err(Rejection::BadSignature) }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification (its reference libraries' test vector).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &str = r#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn signed<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Signed<'a> {
        Signed {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_the_specifications_example_as_the_specification_does() {
        let secret = Secret::parse(SPEC_SECRET).expect("secret");
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY.as_bytes()), SPEC_SIG);
        let ts = SPEC_TS.to_string();
        assert_eq!(
            verify(
                &secret,
                signed(SPEC_ID, &ts, SPEC_SIG),
                SPEC_BODY.as_bytes(),
                SPEC_TS + 10
            ),
            Ok(SPEC_ID)
        );
    }

    #[test]
    fn a_changed_body_id_or_timestamp_or_another_secret_fails_the_signature() {
        let secret = Secret::parse(SPEC_SECRET).expect("secret");
        let ts = SPEC_TS.to_string();
        let body = SPEC_BODY.as_bytes();
        let bad = |id: &str, ts: &str, body: &[u8], secret: &Secret| {
            verify(secret, signed(id, ts, SPEC_SIG), body, SPEC_TS).map(str::to_string)
        };
        assert_eq!(bad(SPEC_ID, &ts, b"{}", &secret), Err(Rejection::BadSignature));
        assert_eq!(bad("msg_other", &ts, body, &secret), Err(Rejection::BadSignature));
        assert_eq!(
            bad(SPEC_ID, &(SPEC_TS + 1).to_string(), body, &secret),
            Err(Rejection::BadSignature)
        );
        let other = Secret::parse(&Secret::generate().expect("random")).expect("secret");
        assert_eq!(bad(SPEC_ID, &ts, body, &other), Err(Rejection::BadSignature));
    }

    #[test]
    fn one_matching_signature_among_several_is_enough_and_other_versions_are_ignored() {
        let secret = Secret::parse(SPEC_SECRET).expect("secret");
        let ts = SPEC_TS.to_string();
        let header = format!("v2,abc v1,AAAA {SPEC_SIG}");
        let ok = verify(&secret, signed(SPEC_ID, &ts, &header), SPEC_BODY.as_bytes(), SPEC_TS);
        assert_eq!(ok, Ok(SPEC_ID));
        let only_v2 = SPEC_SIG.replacen("v1,", "v2,", 1);
        let refused = verify(&secret, signed(SPEC_ID, &ts, &only_v2), SPEC_BODY.as_bytes(), SPEC_TS);
        assert_eq!(refused, Err(Rejection::BadSignature));
    }

    #[test]
    fn timestamps_beyond_five_minutes_either_way_are_stale_even_when_signed() {
        let secret = Secret::parse(SPEC_SECRET).expect("secret");
        let ts = SPEC_TS.to_string();
        let body = SPEC_BODY.as_bytes();
        for now in [SPEC_TS + TOLERANCE_SECS + 1, SPEC_TS - TOLERANCE_SECS - 1] {
            assert_eq!(
                verify(&secret, signed(SPEC_ID, &ts, SPEC_SIG), body, now),
                Err(Rejection::Stale)
            );
        }
        assert!(verify(&secret, signed(SPEC_ID, &ts, SPEC_SIG), body, SPEC_TS + TOLERANCE_SECS).is_ok());
    }

    #[test]
    fn missing_or_malformed_headers_are_refused_before_any_signature_is_computed() {
        let secret = Secret::parse(SPEC_SECRET).expect("secret");
        let ts = SPEC_TS.to_string();
        let none = Signed {
            id: None,
            timestamp: Some(&ts),
            signature: Some(SPEC_SIG),
        };
        assert!(matches!(
            verify(&secret, none, b"", SPEC_TS),
            Err(Rejection::Malformed(_))
        ));
        let words = signed(SPEC_ID, "yesterday", SPEC_SIG);
        assert!(matches!(
            verify(&secret, words, b"", SPEC_TS),
            Err(Rejection::Malformed(_))
        ));
        let unsigned = Signed {
            signature: None,
            ..signed(SPEC_ID, &ts, SPEC_SIG)
        };
        assert!(matches!(
            verify(&secret, unsigned, b"", SPEC_TS),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn secrets_must_carry_the_prefix_and_enough_key() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
        let fresh = Secret::generate().expect("random");
        assert!(fresh.starts_with("whsec_") && Secret::parse(&fresh).is_ok());
        assert_eq!(format!("{:?}", Secret::parse(&fresh).expect("secret")), "Secret(..)");
    }
}
