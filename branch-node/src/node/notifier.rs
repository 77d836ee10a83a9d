//! Delivers the SMS outbox: a background task reads due messages, hands each to the
//! configured sink and marks it delivered, or schedules a retry with doubling backoff.
//!
//! Sinks: a log file in the data dir (the default), or Twilio's Messages API over HTTP
//! (`POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form fields To, From, Body,
//! basic auth). The HTTP client is a few lines over a TCP stream and speaks plain
//! `http://` only: point it at a local relay or test server; TLS is not built in.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::now_ms;
use crate::store::outbox::{self, OutboxMessage};
use crate::store::writer::WriterHandle;

/// How often the notifier looks for due messages, in milliseconds.
pub const NOTIFIER_POLL_MS: u64 = 500;
/// Most messages one poll delivers.
pub const NOTIFIER_BATCH_MAX: usize = 64;
/// First retry wait after a failed delivery, in milliseconds; doubles per attempt.
pub const NOTIFIER_RETRY_MS: u64 = 1_000;
/// Longest retry wait, in milliseconds.
pub const NOTIFIER_RETRY_MAX_MS: u64 = 10 * 60 * 1_000;
/// How long one HTTP delivery may take, in milliseconds.
pub const SMS_HTTP_TIMEOUT_MS: u64 = 10_000;
/// Largest HTTP response read from the SMS gateway, in bytes.
const SMS_RESPONSE_BYTES_MAX: u64 = 64 * 1024;

/// Where SMS messages go.
#[derive(Clone, Debug)]
pub enum SmsSink {
    /// Append one line per message to this file.
    LogFile(PathBuf),
    /// Twilio's Messages API (or anything that speaks it) at `base_url`.
    Twilio(TwilioConfig),
}

/// Twilio settings; the credentials come from the environment, never from files.
#[derive(Clone)]
pub struct TwilioConfig {
    /// `http://host:port[/prefix]`.
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: String,
    /// The sending number.
    pub from: String,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

impl TwilioConfig {
    /// Reads `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN` and `TWILIO_FROM`.
    pub fn from_env(base_url: String) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        Ok(TwilioConfig {
            base_url,
            account_sid: var("TWILIO_ACCOUNT_SID")?,
            auth_token: var("TWILIO_AUTH_TOKEN")?,
            from: var("TWILIO_FROM")?,
        })
    }
}

/// Runs until `shutdown` resolves.
pub async fn run(
    writer: WriterHandle,
    sink: SmsSink,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_millis(NOTIFIER_POLL_MS)) => {}
        }
        let now = now_ms();
        let due = match writer
            .call(move |c, _| outbox::due(c, now, NOTIFIER_BATCH_MAX))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("notifier cannot read the outbox: {e}");
                continue;
            }
        };
        for m in due {
            let id = m.id;
            let result = deliver(&sink, &m).await;
            let now = now_ms();
            let metrics = super::metrics::get();
            let marked = match result {
                Ok(()) => {
                    metrics.sms_sent.inc();
                    writer.call(move |c, _| outbox::delivered(c, id, now)).await
                }
                Err(e) => {
                    metrics.sms_failures.inc();
                    let wait = NOTIFIER_RETRY_MS
                        .saturating_mul(1 << m.attempts.min(20))
                        .min(NOTIFIER_RETRY_MAX_MS);
                    tracing::warn!(
                        id,
                        attempts = m.attempts + 1,
                        wait_ms = wait,
                        "sms delivery failed: {e}"
                    );
                    writer
                        .call(move |c, _| outbox::failed(c, id, now + wait))
                        .await
                }
            };
            if let Err(e) = marked {
                tracing::warn!("notifier cannot update the outbox: {e}");
            }
        }
    }
}

async fn deliver(sink: &SmsSink, m: &OutboxMessage) -> Result<(), String> {
    match sink {
        SmsSink::LogFile(path) => {
            let line = format!("{}\tto={}\t{}\n", now_ms(), m.phone, m.body);
            let mut f = crate::init::owner_only_append(path)
                .map(tokio::fs::File::from_std)
                .map_err(|e| e.to_string())?;
            f.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            f.sync_data().await.map_err(|e| e.to_string())
        }
        SmsSink::Twilio(cfg) => tokio::time::timeout(
            Duration::from_millis(SMS_HTTP_TIMEOUT_MS),
            twilio_post(cfg, &m.phone, &m.body),
        )
        .await
        .map_err(|_| "sms gateway timed out".to_string())?,
    }
}

/// Splits `http://host:port/prefix` into (`host:port`, `/prefix`).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("sms url must start with http://: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if host.is_empty() {
        return Err(format!("sms url has no host: {url}"));
    }
    Ok((host, path.trim_end_matches('/')))
}

async fn twilio_post(cfg: &TwilioConfig, to: &str, body: &str) -> Result<(), String> {
    let (host, prefix) = split_url(&cfg.base_url)?;
    let form = format!(
        "To={}&From={}&Body={}",
        form_encode(to),
        form_encode(&cfg.from),
        form_encode(body)
    );
    let auth = base64(format!("{}:{}", cfg.account_sid, cfg.auth_token).as_bytes());
    let request = format!(
        "POST {prefix}/2010-04-01/Accounts/{sid}/Messages.json HTTP/1.1\r\nHost: {host}\r\n\
         Authorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{form}",
        sid = form_encode(&cfg.account_sid),
        len = form.len(),
    );
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("cannot reach {host}: {e}"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(SMS_RESPONSE_BYTES_MAX)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let status_line = String::from_utf8_lossy(&response);
    let status = status_line
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("sms gateway sent no http status")?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("sms gateway answered http {status}"))
    }
}

/// `application/x-www-form-urlencoded` for one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Standard base64 with padding (for the basic auth header).
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"ACxx:tok"), "QUN4eDp0b2s=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(form_encode("+91 98 & ü"), "%2B91+98+%26+%C3%BC");
        assert_eq!(
            split_url("http://127.0.0.1:8/x/"),
            Ok(("127.0.0.1:8", "/x"))
        );
        assert!(split_url("https://api.twilio.com").is_err());
    }

    /// Serves one HTTP request on 127.0.0.1 with `status`, returning what was sent.
    async fn one_request(status: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/relay", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 8192];
            let mut got = Vec::new();
            loop {
                let n = s.read(&mut buf).await.expect("read");
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if n == 0 || text.contains("\r\n\r\n") && text.ends_with("Body=hi+there%21") {
                    break;
                }
            }
            let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            s.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&got).to_string()
        });
        (url, server)
    }

    fn config(base_url: String) -> TwilioConfig {
        TwilioConfig {
            base_url,
            account_sid: "ACxx".into(),
            auth_token: "tok".into(),
            from: "+15550000".into(),
        }
    }

    #[tokio::test]
    async fn twilio_sink_posts_the_messages_api_form_with_basic_auth() {
        let (url, server) = one_request("201 Created").await;
        twilio_post(&config(url), "+91 98", "hi there!")
            .await
            .expect("delivered");
        let sent = server.await.expect("server");
        assert!(
            sent.starts_with("POST /relay/2010-04-01/Accounts/ACxx/Messages.json HTTP/1.1\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("Authorization: Basic QUN4eDp0b2s=\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("Content-Type: application/x-www-form-urlencoded"),
            "{sent}"
        );
        assert!(
            sent.ends_with("To=%2B91+98&From=%2B15550000&Body=hi+there%21"),
            "{sent}"
        );
    }

    #[tokio::test]
    async fn twilio_errors_and_unreachable_gateways_are_failures_to_retry() {
        let (url, server) = one_request("401 Unauthorized").await;
        let e = twilio_post(&config(url), "+91 98", "hi there!").await;
        assert_eq!(e, Err("sms gateway answered http 401".into()));
        server.await.expect("server");
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        assert!(twilio_post(&config(url), "1", "x").await.is_err());
    }
}
