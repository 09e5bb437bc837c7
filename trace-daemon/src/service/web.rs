//! The metrics endpoint: `/metrics` over HTTP or TLS, behind basic auth when
//! the web config names users. The config is read again on SIGHUP
//! ([`WebState::replace`]): new connections take the new certificates and
//! users; one that fails to load keeps the running config.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
    routing::get,
};
use base64::Engine as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::{metrics::Metrics, web_config::WebConfig};

/// A TLS handshake that takes longer is dropped: a stalled client cannot
/// hold a connection slot.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(10);
/// Checked credentials remembered (bcrypt is slow by design: a scrape every
/// few seconds must not pay it each time); cleared when full.
const AUTH_CACHE: usize = 256;

pub struct WebState {
    current: RwLock<Arc<WebConfig>>,
    checked: Mutex<HashMap<(String, String, String), bool>>,
}

impl WebState {
    pub fn new(c: WebConfig) -> Arc<WebState> {
        Arc::new(WebState {
            current: RwLock::new(Arc::new(c)),
            checked: Mutex::new(HashMap::new()),
        })
    }

    pub fn replace(&self, c: WebConfig) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
    }

    fn get(&self) -> Arc<WebConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether an `Authorization` header passes (any passes without users).
    fn authorized(&self, header: Option<&str>) -> bool {
        let c = self.get();
        if c.users.is_empty() {
            return true;
        }
        let Some((user, password)) = header.and_then(basic_credentials) else {
            return false;
        };
        let Some(hash) = c.users.get(&user) else {
            return false;
        };
        let key = (user, password, hash.clone());
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ok) = checked.get(&key) {
            return *ok;
        }
        let ok = bcrypt::verify(&key.1, hash).unwrap_or(false);
        if checked.len() >= AUTH_CACHE {
            checked.clear();
        }
        checked.insert(key, ok);
        ok
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(h: &str) -> Option<(String, String)> {
    let b64 = h.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

async fn auth(State(web): State<Arc<WebState>>, req: Request, next: Next) -> Response {
    let h = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if web.authorized(h) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"kvscope\"")],
            "Unauthorized\n",
        )
            .into_response()
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, web: Arc<WebState>) {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.encode()) }
            }),
        )
        .route("/", get(|| async { "kvscope: metrics at /metrics\n" }))
        .layer(axum::middleware::from_fn_with_state(web.clone(), auth));
    let endpoint = match Endpoint::start(listener, web) {
        Ok(e) => e,
        Err(e) => return eprintln!("kvscope: metrics server: {e}"),
    };
    if let Err(e) = axum::serve(endpoint, app).await {
        eprintln!("kvscope: metrics server stopped: {e}");
    }
}

/// Accepted connections, TLS handshakes done beside the accept loop.
struct Endpoint {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl Endpoint {
    fn start(listener: TcpListener, web: Arc<WebState>) -> std::io::Result<Endpoint> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("metrics endpoint: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(tls) = web.get().tls.clone() else {
                    if tx.send((Io::Plain(tcp), peer)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(HANDSHAKE_BOUND, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((Io::Tls(Box::new(s)), peer)).await;
                        }
                        Ok(Err(e)) => {
                            log::info!("metrics endpoint: TLS handshake with {peer}: {e}")
                        }
                        Err(_) => {
                            log::info!("metrics endpoint: TLS handshake with {peer} timed out")
                        }
                    }
                });
            }
        });
        Ok(Endpoint { rx, local })
    }
}

impl axum::serve::Listener for Endpoint {
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (it does not): wait forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// A connection, plain or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_decode_and_check_against_bcrypt() {
        let hdr = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret:x")
        );
        assert_eq!(
            basic_credentials(&hdr),
            Some(("alice".into(), "s3cret:x".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        let mut c = WebConfig::open();
        c.users
            .insert("alice".into(), bcrypt::hash("s3cret:x", 4).unwrap());
        let w = WebState::new(c);
        assert!(w.authorized(Some(&hdr)));
        assert!(!w.authorized(None));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:nope")
        );
        assert!(!w.authorized(Some(&wrong)));
        // A reload without users opens it again.
        w.replace(WebConfig::open());
        assert!(w.authorized(None));
    }
}
