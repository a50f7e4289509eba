//! A TCP proxy that injects network faults between a client and a server.
//!
//! Killing or freezing Redis ([`RedisServer::stop`](crate::RedisServer::stop),
//! [`pause`](crate::RedisServer::pause)) fails every client at once. Some
//! failures are of one client's connections only, and some never show up as
//! an error: a dropped route leaves a TCP connection half-open, so the client
//! keeps writing and waiting, and nothing fails until it gives up on its own.
//! Putting a [`Proxy`] between one client and the server makes those
//! reproducible: [`blackhole`](Proxy::blackhole), [`set_latency`](Proxy::set_latency)
//! and [`cut`](Proxy::cut). [`blackhole_subscriptions`](Proxy::blackhole_subscriptions)
//! silences only the connections that subscribed (a client's commands go
//! on while its subscription hears nothing), and
//! [`set_upstream`](Proxy::set_upstream) sends new connections elsewhere
//! (a failover behind a stable address).
//!
//! A connection can also be cut at one chosen request
//! ([`cut_request`](Proxy::cut_request)): after the server received all of
//! it (so it ran the command) but before its reply reaches the client, or
//! part way through it (so the server never ran it). These are the two
//! outcomes a client cannot tell apart when its connection drops while a
//! command is in flight. To find request and reply boundaries the proxy
//! reads RESP framing (and forwards bytes untouched); a stream that is not
//! RESP is forwarded as it comes, and never matches a cut.
//!
//! Plain `std` threads (two per connection, one per direction) rather than
//! tokio: aside-test stays free of any async runtime, and tests connect a
//! handful of times, so a thread per direction costs nothing that matters.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::LaunchError;

mod cut;
mod resp;

use cut::CutAt;
pub use cut::RequestCut;

/// Forwards every connection accepted on `127.0.0.1:<port>` to an upstream
/// address, both ways, with faults switched on and off while it runs.
/// Dropping it closes every connection and joins its threads.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on every change of `state`, so held chunks re-check it.
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Where new connections go.
    upstream: SocketAddr,
    blackhole: bool,
    /// Like `blackhole`, for the connections that sent a `SUBSCRIBE` only.
    blackhole_subscriptions: bool,
    latency: Duration,
    /// Bumped by `cut`: a connection accepted under an older epoch ends.
    epoch: u64,
    stopping: bool,
    next_id: u64,
    /// Both sockets of every live connection (clones), so that `cut` and
    /// `drop` can shut them down and unblock the threads reading them.
    conns: Vec<(u64, TcpStream, TcpStream)>,
    pumps: Vec<JoinHandle<()>>,
    /// The cut waiting for its request, if any (one shot).
    armed: Option<RequestCut>,
    /// Requests a [`RequestCut`] fired on.
    requests_cut: u64,
}

/// One connection's two pumps agree here on which replies to drop.
#[derive(Debug, Default)]
struct Link {
    state: Mutex<LinkState>,
    changed: Condvar,
    /// The client sent a `SUBSCRIBE` (or `PSUBSCRIBE`, `SSUBSCRIBE`) on it.
    subscribed: AtomicBool,
}

#[derive(Debug, Default)]
struct LinkState {
    /// Replies from this index on (counted from 0, pushes excepted) are
    /// dropped: the first is the reply to the request being cut.
    drop_from: Option<u64>,
    /// The reply to the request being cut has arrived (and was dropped).
    dropped: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// Takes the armed cut if `request` is the one it waits for.
    fn take_cut(&self, request: &[u8]) -> Option<CutAt> {
        let mut s = self.lock();
        let cut = s.armed.as_mut().filter(|c| c.matches(request))?;
        if cut.skip > 0 {
            cut.skip -= 1;
            return None;
        }
        let at = cut.at;
        s.armed = None;
        s.requests_cut += 1;
        Some(at)
    }

    /// Holds a chunk read by a connection of `epoch` while the blackhole is
    /// on (for it), then for the latency. False when the connection was cut
    /// (or the proxy is stopping) meanwhile: the chunk is not forwarded.
    fn hold(&self, epoch: u64, link: &Link) -> bool {
        let live = |s: &State| !s.stopping && s.epoch == epoch;
        let silent = |s: &State| {
            s.blackhole || (s.blackhole_subscriptions && link.subscribed.load(Ordering::Relaxed))
        };
        let mut s = self.lock();
        loop {
            while silent(&s) && live(&s) {
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
            if !live(&s) || !silent(&s) {
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
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                upstream,
                blackhole: false,
                blackhole_subscriptions: false,
                latency: Duration::ZERO,
                epoch: 0,
                stopping: false,
                next_id: 0,
                conns: Vec::new(),
                pumps: Vec::new(),
                armed: None,
                requests_cut: 0,
            }),
            changed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("aside-test-proxy".into())
            .spawn(move || accept_loop(&listener, &s))
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

    /// [`blackhole`](Self::blackhole) for the connections on which the
    /// client subscribed (sent `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE`)
    /// only: a subscription that hears nothing, not even its own pings'
    /// replies, while the same client's other connections work.
    pub fn blackhole_subscriptions(&self, on: bool) {
        self.shared.update(|s| s.blackhole_subscriptions = on);
    }

    /// Sends connections accepted from now on to `upstream`; the current
    /// ones stay where they are until [`cut`](Self::cut). With both, a
    /// failover behind a stable address (a virtual IP, a DNS name).
    pub fn set_upstream(&self, upstream: impl Into<SocketAddr>) {
        let upstream = upstream.into();
        self.shared.update(|s| s.upstream = upstream);
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

    /// Arms `cut`: the next request it matches, on any connection, is cut
    /// there (that connection only; the others and new ones go on). One
    /// shot; arming again replaces a cut that has not fired yet.
    ///
    /// ```no_run
    /// # use aside_test::{Proxy, RequestCut};
    /// # fn f(proxy: &Proxy) {
    /// // The server runs the script, the client never hears back.
    /// proxy.cut_request(RequestCut::containing(b"EVALSHA").and(b"{ns:k}"));
    /// // The script never arrives: 10 bytes of it do.
    /// proxy.cut_request(RequestCut::containing(b"EVALSHA").within(10));
    /// # }
    /// ```
    pub fn cut_request(&self, cut: RequestCut) {
        self.shared.update(|s| s.armed = Some(cut));
    }

    /// [`cut_request`](Self::cut_request) of the next request containing
    /// `needle`, after the server received it, before its reply comes back.
    pub fn cut_after_request_containing(&self, needle: impl AsRef<[u8]>) {
        self.cut_request(RequestCut::containing(needle));
    }

    /// How many armed cuts have fired (a test checks its fault happened).
    pub fn requests_cut(&self) -> u64 {
        self.shared.lock().requests_cut
    }

    /// Whether a cut is armed and has not fired yet.
    pub fn cut_pending(&self) -> bool {
        self.shared.lock().armed.is_some()
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        let upstream = {
            let s = shared.lock();
            if s.stopping {
                return;
            }
            s.upstream
        };
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
        let link = Arc::new(Link::default());
        for (from, to, requests) in [(client, s2, true), (server, c2, false)] {
            let (shared, link) = (Arc::clone(shared), Arc::clone(&link));
            s.pumps.push(std::thread::spawn(move || {
                let pump = Pump {
                    from,
                    to,
                    epoch,
                    shared: &shared,
                    link: &link,
                };
                if requests {
                    pump.requests();
                } else {
                    pump.replies();
                }
                shared.lock().conns.retain(|(c, _, _)| *c != id);
            }));
        }
    }
}

/// One direction of a connection: client to server (requests) or back
/// (replies). Bytes go through as read, except that a message is only
/// forwarded once complete, so that a cut falls between two messages or
/// where the cut says.
struct Pump<'a> {
    from: TcpStream,
    to: TcpStream,
    epoch: u64,
    shared: &'a Shared,
    link: &'a Link,
}

/// How long a cut after a request waits for its reply (the server may be
/// paused, or the command slow) before cutting anyway.
const REPLY_WAIT: Duration = Duration::from_secs(10);

impl Pump<'_> {
    /// Requests, checked against the armed cut one by one.
    fn requests(self) {
        let mut sent: u64 = 0;
        self.run(|pump, pending, at, end| {
            if contains(&pending[at..end], b"SUBSCRIBE") {
                pump.link.subscribed.store(true, Ordering::Relaxed);
            }
            let Some(cut) = pump.shared.take_cut(&pending[at..end]) else {
                sent += 1;
                return Step::Forward;
            };
            // What came before this request goes through first.
            if pump.to.write_all(&pending[..at]).is_err() {
                return Step::Close;
            }
            match cut {
                CutAt::Within(bytes) => {
                    let part = bytes.min(end - at - 1);
                    let _ = pump.to.write_all(&pending[at..at + part]);
                    let _ = pump.to.flush();
                }
                CutAt::AfterRequest => {
                    pump.link.lock().drop_from = Some(sent);
                    if pump.to.write_all(&pending[at..end]).is_ok() {
                        let mut l = pump.link.lock();
                        let until = Instant::now() + REPLY_WAIT;
                        while !l.dropped && Instant::now() < until {
                            let left = until.saturating_duration_since(Instant::now());
                            l = (pump.link.changed.wait_timeout(l, left))
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                        }
                    }
                }
            }
            Step::Close
        });
    }

    /// Replies, dropped from the one to a request being cut.
    fn replies(self) {
        let mut received: u64 = 0;
        self.run(|pump, pending, at, _| {
            if resp::is_push(pending, at) {
                return Step::Forward;
            }
            let i = received;
            received += 1;
            let mut l = pump.link.lock();
            match l.drop_from {
                Some(from) if i >= from => {
                    if i == from {
                        l.dropped = true;
                        pump.link.changed.notify_all();
                    }
                    Step::Drop
                }
                _ => Step::Forward,
            }
        });
    }

    /// Reads chunks (held while blackholed or delayed), splits them into
    /// messages and lets `each` decide each message's fate, until either
    /// side closes, the connection is cut, or `each` closes it. Then closes
    /// both sockets, so the other direction ends too.
    fn run(mut self, mut each: impl FnMut(&mut Self, &[u8], usize, usize) -> Step) {
        let mut buf = [0u8; 16 * 1024];
        // Read and not yet forwarded: the start of an incomplete message.
        let mut pending: Vec<u8> = Vec::new();
        // Not RESP: forward as it comes.
        let mut raw = false;
        'read: loop {
            let n = match self.from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !self.shared.hold(self.epoch, self.link) {
                break;
            }
            if raw {
                if self.to.write_all(&buf[..n]).is_err() {
                    break;
                }
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            // `pending[..at]` is decided: gathered in `out` or dropped.
            let (mut at, mut out) = (0, Vec::with_capacity(pending.len()));
            loop {
                match resp::message_end(&pending, at) {
                    Err(()) => {
                        raw = true;
                        out.extend_from_slice(&pending[at..]);
                        at = pending.len();
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(end)) => {
                        // `each` gets what was decided before the message
                        // (not written yet) and then the message, from
                        // `start`: it may write the first part itself.
                        let mut view = std::mem::take(&mut out);
                        let start = view.len();
                        view.extend_from_slice(&pending[at..end]);
                        match each(&mut self, &view, start, view.len()) {
                            Step::Forward => out = view,
                            Step::Drop => {
                                view.truncate(start);
                                out = view;
                            }
                            Step::Close => break 'read,
                        }
                        at = end;
                    }
                }
            }
            pending.drain(..at);
            if !out.is_empty() && self.to.write_all(&out).is_err() {
                break;
            }
        }
        let _ = self.from.shutdown(Shutdown::Both);
        let _ = self.to.shutdown(Shutdown::Both);
    }
}

/// Whether `needle` occurs in `haystack`, ASCII case aside.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// What a pump does with one message.
enum Step {
    Forward,
    Drop,
    /// The message was handled (or partly forwarded) by the caller: close
    /// the connection now.
    Close,
}
