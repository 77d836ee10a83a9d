//! Delivers the SMS outbox: a background task reads due messages, hands each to the
//! configured sink and marks it delivered, or schedules a retry with doubling backoff.
//!
//! Sinks: a log file in the data dir (the default), or Twilio's Messages API
//! (`POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form fields To, From, Body,
//! basic auth) over HTTPS with rustls (ureq, on a blocking thread). Plain `http://` is
//! accepted only to a loopback address (a local relay or a test); anything else would
//! send the account's credentials in clear text. A refusal from the gateway is logged
//! with its error code and message.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use tokio::io::AsyncWriteExt;

use super::now_ms;
use crate::store::ops::WriteOp;
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
    /// Each line's phone and text sealed with the data keys: read with
    /// `branch-node sms-log` ([`read_log`]).
    LogFile(PathBuf, crate::keys::DataKeys),
    /// Twilio's Messages API (or anything that speaks it) at `base_url`.
    Twilio(TwilioConfig),
}

/// Twilio settings; the credentials come from the environment, never from files.
#[derive(Clone)]
pub struct TwilioConfig {
    /// `https://host[:port][/prefix]`, or `http://` to a loopback address.
    pub base_url: String,
    pub account_sid: String,
    pub auth_token: String,
    /// The sending number.
    pub from: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .finish_non_exhaustive()
    }
}

/// Refuses a gateway URL that would carry credentials in clear text over a network.
/// It is parsed as the HTTP client parses it, and the host it would connect to is the
/// one checked (a user part, `http://127.0.0.1:80@elsewhere`, is refused outright).
pub fn check_gateway_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("sms url {url} is not a URL: {e}"))?;
    let Some(authority) = uri.authority() else {
        return Err(format!("sms url has no host: {url}"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "sms url {url} has a user part (user@host): give the host alone; the \
             credentials come from TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
        ));
    }
    if uri.query().is_some() {
        return Err(format!(
            "sms url {url} has a query: give scheme, host, port and path"
        ));
    }
    let host = authority.host();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "sms url {url} is plain http to a host that is not loopback: the account's \
             credentials would cross the network in clear text; use https://"
        )),
        _ => Err(format!("sms url must start with https://: {url}")),
    }
}

/// Whether `host` (a name, an IPv4 address or a bracketed IPv6 one) is this machine.
fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl TwilioConfig {
    /// Reads `TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`, `TWILIO_FROM` and, optionally,
    /// `TWILIO_CA_FILE` (a PEM certificate to trust instead of the public roots: a
    /// gateway with a private certificate, or a test).
    pub fn from_env(base_url: String) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let ca = match std::env::var_os("TWILIO_CA_FILE") {
            Some(path) => Some(std::fs::read(&path).map_err(|e| format!("TWILIO_CA_FILE: {e}"))?),
            None => None,
        };
        TwilioConfig::new(
            base_url,
            var("TWILIO_ACCOUNT_SID")?,
            var("TWILIO_AUTH_TOKEN")?,
            var("TWILIO_FROM")?,
            ca.as_deref(),
        )
    }

    /// A gateway at `base_url` (checked by [`check_gateway_url`]); `ca_pem`, if given, is
    /// the only certificate authority trusted for it.
    pub fn new(
        base_url: String,
        account_sid: String,
        auth_token: String,
        from: String,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, String> {
        check_gateway_url(&base_url)?;
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = ca_pem {
            let cert = ureq::tls::Certificate::from_pem(pem)
                .map_err(|e| format!("ca certificate: {e}"))?;
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(SMS_HTTP_TIMEOUT_MS)))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(TwilioConfig {
            base_url: base_url.trim_end_matches('/').to_owned(),
            account_sid,
            auth_token,
            from,
            agent,
        })
    }
}

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
            .call_local(move |c, _| outbox::due(c, now, NOTIFIER_BATCH_MAX))
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
            let metrics = crate::metrics::get();
            let marked = match result {
                Ok(()) => {
                    metrics.sms_sent.inc();
                    writer
                        .call_write(WriteOp::SmsDelivered { id, now_ms: now })
                        .await
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
                        .call_write(WriteOp::SmsFailed {
                            id,
                            next_attempt_ms: now + wait,
                        })
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
        SmsSink::LogFile(path, keys) => {
            let plain = format!("to={}\t{}", m.phone, m.body);
            let line = crate::store::outbox::sealed_line(keys, now_ms(), &plain);
            let mut f = crate::init::owner_only_append(path)
                .map(tokio::fs::File::from_std)
                .map_err(|e| e.to_string())?;
            f.write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            f.sync_data().await.map_err(|e| e.to_string())
        }
        SmsSink::Twilio(cfg) => {
            let (cfg, to, body) = (cfg.clone(), m.phone.clone(), m.body.clone());
            tokio::task::spawn_blocking(move || twilio_post(&cfg, &to, &body))
                .await
                .map_err(|e| format!("sms delivery task failed: {e}"))?
        }
    }
}

/// Posts one message; a gateway's refusal comes back with its code and message.
fn twilio_post(cfg: &TwilioConfig, to: &str, body: &str) -> Result<(), String> {
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        cfg.base_url, cfg.account_sid
    );
    let credentials = format!("{}:{}", cfg.account_sid, cfg.auth_token);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    let mut response = cfg
        .agent
        .post(&url)
        .header("Authorization", &auth)
        .send_form([("To", to), ("From", cfg.from.as_str()), ("Body", body)])
        .map_err(|e| format!("cannot reach the sms gateway: {e}"))?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = response
        .body_mut()
        .with_config()
        .limit(SMS_RESPONSE_BYTES_MAX)
        .read_to_string()
        .unwrap_or_default();
    Err(format!(
        "sms gateway answered http {status}{}",
        gateway_error(&text)
    ))
}

/// `: error CODE: MESSAGE` from a Twilio error body, or nothing.
fn gateway_error(body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return String::new();
    };
    match (v.get("code"), v.get("message").and_then(|m| m.as_str())) {
        (Some(code), Some(message)) => format!(": error {code}: {message}"),
        (None, Some(message)) => format!(": {message}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn only_https_or_loopback_http_carries_the_credentials() {
        for ok in [
            "https://api.twilio.com",
            "http://127.0.0.1:8/relay",
            "http://localhost:8",
            "http://[::1]:9",
        ] {
            assert_eq!(check_gateway_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://api.twilio.com",
            "http://10.0.0.1:80",
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1:80@192.0.2.2",
            "http://user:pw@127.0.0.1:8",
            "https://127.0.0.1@api.twilio.com",
            "http://127.0.0.1:8/relay?x=1",
            "ftp://x",
            "https://",
            "not a url",
        ] {
            assert!(check_gateway_url(bad).is_err(), "{bad}");
        }
    }

    /// Serves one request on a loopback `listener` (wrapped by `tls`, if given) with
    /// `reply`; returns what was sent.
    fn serve_one(
        listener: std::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        reply: String,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let Ok((tcp, _)) = listener.accept() else {
                return String::new();
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            let mut stream: Box<dyn ReadWrite> = match tls {
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(cfg).expect("tls");
                    Box::new(rustls::StreamOwned::new(conn, tcp))
                }
                None => Box::new(tcp),
            };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).ends_with("Body=hi+there!") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(reply.as_bytes());
            let _ = stream.flush();
            String::from_utf8_lossy(&got).to_string()
        })
    }

    trait ReadWrite: Read + Write + Send {}
    impl<T: Read + Write + Send> ReadWrite for T {}

    fn http_reply(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn config(base_url: String, ca: Option<&[u8]>) -> TwilioConfig {
        TwilioConfig::new(
            base_url,
            "ACxx".into(),
            "tok".into(),
            "+15550000".into(),
            ca,
        )
        .expect("config")
    }

    fn loopback() -> (std::net::TcpListener, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        (l, port)
    }

    #[test]
    fn the_messages_api_form_goes_with_basic_auth() {
        let (l, port) = loopback();
        let server = serve_one(l, None, http_reply("201 Created", "{}"));
        twilio_post(
            &config(format!("http://127.0.0.1:{port}/relay"), None),
            "+91 98",
            "hi there!",
        )
        .expect("delivered");
        let sent = server.join().expect("server").to_lowercase();
        assert!(
            sent.starts_with("post /relay/2010-04-01/accounts/acxx/messages.json http/1.1\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("authorization: basic qun4edp0b2s=\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("content-type: application/x-www-form-urlencoded"),
            "{sent}"
        );
        assert!(
            sent.ends_with("to=%2b91+98&from=%2b15550000&body=hi+there!"),
            "{sent}"
        );
    }

    #[test]
    fn a_refusal_is_told_with_the_gateways_code_and_message() {
        let (l, port) = loopback();
        let body = r#"{"code":21211,"message":"The 'To' number is not a valid phone number.","status":400}"#;
        let server = serve_one(l, None, http_reply("400 Bad Request", body));
        let e = twilio_post(
            &config(format!("http://127.0.0.1:{port}"), None),
            "+91 98",
            "hi there!",
        );
        server.join().expect("server");
        assert_eq!(
            e,
            Err("sms gateway answered http 400: error 21211: The 'To' number is not a valid phone number.".into())
        );
        let (closed, port) = loopback();
        drop(closed);
        let e = twilio_post(&config(format!("http://127.0.0.1:{port}"), None), "1", "x");
        assert!(e.is_err_and(|e| e.starts_with("cannot reach the sms gateway")));
    }

    #[test]
    fn https_with_a_trusted_certificate_delivers_and_an_untrusted_one_does_not() {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
        let der = made.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .expect("server config");
        let tls = Arc::new(tls);
        let pem = made.cert.pem();

        let (l, port) = loopback();
        let server = serve_one(l, Some(tls.clone()), http_reply("201 Created", "{}"));
        let url = format!("https://127.0.0.1:{port}");
        twilio_post(
            &config(url.clone(), Some(pem.as_bytes())),
            "+91 98",
            "hi there!",
        )
        .expect("delivered over TLS");
        assert!(server.join().expect("server").contains("Body=hi+there!"));

        // The public roots do not know this certificate: nothing is sent.
        let (l, port) = loopback();
        let server = serve_one(l, Some(tls), http_reply("201 Created", "{}"));
        let e = twilio_post(
            &config(format!("https://127.0.0.1:{port}"), None),
            "+91 98",
            "hi there!",
        );
        assert!(e.is_err(), "an untrusted certificate must fail");
        assert!(
            !server.join().expect("server").contains("Body="),
            "no credentials sent"
        );
    }
}
