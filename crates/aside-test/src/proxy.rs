//! A TCP proxy that injects network faults between a client and a server.
//!
//! Killing or freezing Redis ([`RedisServer::stop`](crate::RedisServer::stop),
//! [`pause`](crate::RedisServer::pause)) fails every client at once. Some
//! failures are of one client's connections only, and some never show up as
//! an error: a dropped route leaves a TCP connection half-open, so the client
//! keeps writing and waiting, and nothing fails until it gives up on its own.
//! Putting a [`Proxy`] between one client and the server makes those
//! reproducible: [`blackhole`](Proxy::blackhole), [`set_latency`](Proxy::set_latency)
//! and [`cut`](Proxy::cut).
//!
//! Plain `std` threads (two per connection, one per direction) rather than
//! tokio: aside-test stays free of any async runtime, and tests connect a
//! handful of times, so a thread per direction costs nothing that matters.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LaunchError;

/// Forwards every connection accepted on `127.0.0.1:<port>` to an upstream
/// address, both ways, with faults switched on and off while it runs.
/// Dropping it closes every connection and joins its threads.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of `state`, so held chunks re-check it.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    blackhole: bool,
    latency: Duration,
    /// Bumped by `cut`: a connection accepted under an older epoch ends.
    epoch: u64,
    stopping: bool,
    next_id: u64,
    /// Both sockets of every live connection (clones), so that `cut` and
    /// `drop` can shut them down and unblock the threads reading them.
    conns: Vec<(u64, TcpStream, TcpStream)>,
    pumps: Vec<JoinHandle<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Holds a chunk read by a connection of `epoch` while the blackhole is
    /// on, then for the latency. False when the connection was cut (or the
    /// proxy is stopping) meanwhile: the chunk is not forwarded.
    fn hold(&self, epoch: u64) -> bool {
        let live = |s: &State| !s.stopping && s.epoch == epoch;
        let mut s = self.lock();
        loop {
            while s.blackhole && live(&s) {
                s = self.changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            let until = Instant::now() + s.latency;
            while live(&s) && Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                s = (self.changed.wait_timeout(s, left))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            // Blackholed again during the latency: hold on.
            if !live(&s) || !s.blackhole {
                return live(&s);
            }
        }
    }
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when it cannot listen.
    pub fn start(upstream: impl Into<SocketAddr>) -> Result<Self, LaunchError> {
        let upstream = upstream.into();
        let failed = |e: std::io::Error| LaunchError::Failed(format!("proxy: {e}"));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("aside-test-proxy".into())
            .spawn(move || accept_loop(&listener, upstream, &s))
            .map_err(failed)?;
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// [`start`](Self::start) to `127.0.0.1:<port>`, e.g. a [`RedisServer`](crate::RedisServer)'s.
    ///
    /// # Errors
    /// As `start`.
    pub fn to_port(port: u16) -> Result<Self, LaunchError> {
        Self::start((Ipv4Addr::LOCALHOST, port))
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// On: no byte is forwarded either way, and no socket is closed: both
    /// peers see a silent, open connection (a half-open connection, or a
    /// partition). Bytes are held, not dropped (at most one chunk per
    /// direction in the proxy, the rest in the kernel's buffers), so turning
    /// it off delivers them late, as TCP does when a route comes back. New
    /// connections are still accepted while it is on, and stay silent.
    pub fn blackhole(&self, on: bool) {
        self.shared.update(|s| s.blackhole = on);
    }

    /// Delays every chunk forwarded from now on (either way) by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.update(|s| s.latency = latency);
    }

    /// Closes every current connection, both sides (shutdown: the peers read
    /// EOF or get a reset on their next write). New connections are accepted
    /// and forwarded as before.
    pub fn cut(&self) {
        self.shared.update(|s| {
            s.epoch += 1;
            for (_, client, upstream) in s.conns.drain(..) {
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
            }
        });
    }

    /// Connections open now (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.shared.lock().conns.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.update(|s| s.stopping = true);
        self.cut();
        // `accept` blocks: wake it with a connection of our own, which it
        // drops on seeing `stopping`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let pumps = std::mem::take(&mut self.shared.lock().pumps);
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let Ok(client) = client else { continue };
        // The client sees a refused upstream as a connection closed at once.
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
            continue;
        };
        // Small writes (one command, one reply) must not wait for Nagle.
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let mut s = shared.lock();
        if s.stopping {
            return;
        }
        let (id, epoch) = (s.next_id, s.epoch);
        s.next_id += 1;
        s.conns.push((id, c3, s3));
        s.pumps.retain(|p| !p.is_finished());
        for (from, to) in [(client, s2), (server, c2)] {
            let shared = Arc::clone(shared);
            s.pumps.push(std::thread::spawn(move || {
                pump(from, to, epoch, &shared);
                shared.lock().conns.retain(|(c, _, _)| *c != id);
            }));
        }
    }
}

/// Copies `from` to `to` chunk by chunk until either side closes or the
/// connection is cut, then closes both (so the other direction ends too).
fn pump(mut from: TcpStream, mut to: TcpStream, epoch: u64, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !shared.hold(epoch) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
