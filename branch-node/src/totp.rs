//! One-time codes, RFC 6238 (TOTP): HMAC-SHA1 over the 30-second time step, six
//! digits, as every authenticator app computes them. Pure: time is an argument.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use client::uri_escape;
use wire::limits::{OTP_DIGITS, OTP_DRIFT_STEPS, OTP_STEP_MS};

/// Bytes of a TOTP secret (160 bits, RFC 4226's recommended length).
pub const SECRET_BYTES: usize = 20;

/// A fresh random secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    rand::random()
}

/// The time step that `now_ms` falls in.
pub fn step_at(now_ms: u64) -> u64 {
    now_ms / OTP_STEP_MS
}

/// The code for `secret` at time step `step` (RFC 4226 HOTP with the step as counter).
pub fn code_at(secret: &[u8], step: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let word = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    let modulus = 10u32.pow(u32::try_from(OTP_DIGITS).unwrap_or(6));
    format!("{:0width$}", word % modulus, width = OTP_DIGITS)
}

/// The step whose code `code` is, within [`OTP_DRIFT_STEPS`] of now and later than
/// `last_used` (a code works once), or `None`.
pub fn matching_step(secret: &[u8], code: &str, now_ms: u64, last_used: u64) -> Option<u64> {
    let now = step_at(now_ms);
    let first = now.saturating_sub(OTP_DRIFT_STEPS).max(last_used + 1);
    (first..=now + OTP_DRIFT_STEPS)
        .find(|&s| constant_time_eq(code_at(secret, s).as_bytes(), code.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `otpauth://` URI an authenticator app takes (Key Uri Format), for `login` at
/// the branch called `issuer`.
pub fn otpauth_uri(secret: &[u8], issuer: &str, login: &str) -> String {
    let (issuer, login) = (uri_escape(issuer), uri_escape(login));
    format!(
        "otpauth://totp/{issuer}:{login}?secret={}&issuer={issuer}&algorithm=SHA1&digits={OTP_DIGITS}&period={}",
        base32(secret),
        OTP_STEP_MS / 1000
    )
}

/// RFC 4648 base32 without padding, as the Key Uri Format wants the secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA1 column, last six digits of each eight-digit code.
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (seconds, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            let code = code_at(secret, step_at(seconds * 1000));
            assert_eq!(code, eight[2..], "t={seconds}");
        }
    }

    #[test]
    fn a_code_works_within_the_drift_window_and_only_once() {
        let secret = [7u8; SECRET_BYTES];
        let now = 1_700_000_000_000;
        let step = step_at(now);
        let code = code_at(&secret, step);
        assert_eq!(matching_step(&secret, &code, now, 0), Some(step));
        assert_eq!(matching_step(&secret, &code, now, step), None, "used");
        let late = code_at(&secret, step - 1);
        assert_eq!(matching_step(&secret, &late, now, 0), Some(step - 1));
        let stale = code_at(&secret, step - 2);
        assert_eq!(matching_step(&secret, &stale, now, 0), None);
        assert_eq!(matching_step(&secret, "000000x", now, 0), None);
    }

    #[test]
    fn base32_and_uri_follow_rfc_4648_and_the_key_uri_format() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
        let uri = otpauth_uri(b"foobar", "Mumbai Fort", "admin");
        assert_eq!(
            uri,
            "otpauth://totp/Mumbai%20Fort:admin?secret=MZXW6YTBOI&issuer=Mumbai%20Fort&algorithm=SHA1&digits=6&period=30"
        );
    }
}
