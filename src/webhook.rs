//! The webhook: one `POST` of `{"text": "..."}` (what Slack and Mattermost
//! incoming webhooks read) over HTTPS through rustls, trusting the system's
//! roots (`rustls-native-certs`, which honours `SSL_CERT_FILE` / `SSL_CERT_DIR`)
//! plus `hooks.webhook_ca` when given. The caller bounds it in time.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("answered {0}")]
    Status(StatusCode),
}

/// The certificates of a PEM CA bundle; at least one.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, WebhookError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "system root certificates");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(p) = ca {
        for c in load_ca(p).map_err(WebhookError::Tls)? {
            roots.add(c).map_err(|e| WebhookError::Tls(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(WebhookError::Tls(
            "no trusted root certificates (system store empty, no hooks.webhook_ca)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// POSTs `{"text": text}` to `url`; Ok when it answers 2xx.
pub async fn post(url: &Uri, ca: Option<&Path>, text: &str) -> Result<(), WebhookError> {
    let https = url.scheme_str() == Some("https");
    let authority = url.authority().map_or("", |a| a.as_str());
    let host = url.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let body = serde_json::json!({ "text": text }).to_string();
    let req = Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("gatekeeper/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| WebhookError::Http(e.to_string()))?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| WebhookError::Connect(format!("{host}:{port}"), e))?;
    let status = if https {
        let name = ServerName::try_from(host.to_string()).map_err(|e| WebhookError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(client_config(ca)?)
            .connect(name, tcp)
            .await
            .map_err(|e| WebhookError::Tls(e.to_string()))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(WebhookError::Status(status))
    }
}

/// One request on a fresh HTTP/1.1 connection, driven in this future (so
/// dropping it, as a timeout does, drops the connection too).
async fn send<T>(io: T, req: Request<Full<Bytes>>) -> Result<StatusCode, WebhookError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| WebhookError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(http)?;
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = sender.send_request(req) => r.map(|resp| resp.status()).map_err(http),
        c = &mut conn => Err(c.err().map_or_else(|| WebhookError::Http("connection closed before an answer".into()), http)),
    }
}
