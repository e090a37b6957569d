//! A TCP proxy in front of the origin that counts the bytes the origin sends (origin
//! egress), and can throttle or cut connections to inject faults.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct ProxyState {
    /// Bytes sent from the origin towards clients.
    pub downstream_bytes: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Cut the next connection once it has carried this many downstream bytes (0 = off).
    pub cut_after: AtomicU64,
    /// Downstream rate limit in bytes per second (0 = unlimited).
    pub rate: AtomicU64,
    /// Refuse (close) new connections.
    pub down: AtomicBool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                st.connections.fetch_add(1, Ordering::SeqCst);
                if st.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    pipe(client, server, st).await;
                });
            }
        });
        Proxy { addr, state, task }
    }

    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn egress(&self) -> u64 {
        self.state.downstream_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, st: Arc<ProxyState>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let st_up = st.clone();
    let up = tokio::spawn(async move {
        // Requests on kept-alive connections must fail too once the origin is "down".
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if st_up.down.load(Ordering::SeqCst) || sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    });
    let cut = st.cut_after.swap(0, Ordering::SeqCst);
    let mut carried = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if st.down.load(Ordering::SeqCst) && up.is_finished() {
            break;
        }
        let n = if cut > 0 {
            n.min((cut - carried) as usize)
        } else {
            n
        };
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        carried += n as u64;
        st.downstream_bytes.fetch_add(n as u64, Ordering::SeqCst);
        if cut > 0 && carried >= cut {
            break; // drop both halves: the client sees a broken body
        }
        let rate = st.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
    }
    up.abort();
}
