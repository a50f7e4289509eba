//! The fault proxy, against an echo server and a real redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use aside_test::{Proxy, RedisServer, RequestCut};

/// An echo server on a free port, for as long as the test binary runs.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads exactly `n` bytes, or fails with the read's error (a timeout too).
fn read_n(s: &mut TcpStream, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[test]
fn forwards_both_ways() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&proxy);
    for msg in [&b"hello"[..], b"again", &[7u8; 40_000]] {
        s.write_all(msg).unwrap();
        assert_eq!(read_n(&mut s, msg.len()).unwrap(), msg);
    }
}

#[test]
fn blackhole_is_silent_and_keeps_the_connection_then_delivers_late() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&proxy);
    s.write_all(b"before").unwrap();
    assert_eq!(read_n(&mut s, 6).unwrap(), b"before");

    proxy.blackhole(true);
    // Writes succeed and nothing comes back: no EOF, no reset, a timeout.
    s.write_all(b"during").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let e = s.read(&mut byte).unwrap_err();
    assert!(is_timeout(&e), "expected silence, got {e}");
    assert_eq!(proxy.connections(), 1, "no socket may be closed");
    // A connection made during the blackhole is accepted and silent too.
    let mut fresh = connect(&proxy);
    fresh.write_all(b"x").unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(is_timeout(&fresh.read(&mut byte).unwrap_err()));

    // Held, not dropped: the bytes arrive once the route is back.
    proxy.blackhole(false);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(read_n(&mut s, 6).unwrap(), b"during");
    s.write_all(b"after").unwrap();
    assert_eq!(read_n(&mut s, 5).unwrap(), b"after");
}

#[test]
fn latency_delays_each_chunk() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&proxy);
    proxy.set_latency(Duration::from_millis(100));
    let start = Instant::now();
    s.write_all(b"slow").unwrap();
    assert_eq!(read_n(&mut s, 4).unwrap(), b"slow");
    // Once there, once back.
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    proxy.set_latency(Duration::ZERO);
    let start = Instant::now();
    s.write_all(b"fast").unwrap();
    assert_eq!(read_n(&mut s, 4).unwrap(), b"fast");
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn cut_closes_current_connections_and_accepts_new_ones() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut old = connect(&proxy);
    old.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut old, 4).unwrap(), b"ping");

    proxy.cut();
    let mut byte = [0u8; 1];
    match old.read(&mut byte) {
        Ok(0) => {}
        Err(e) if !is_timeout(&e) => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    let mut new = connect(&proxy);
    new.write_all(b"pong").unwrap();
    assert_eq!(read_n(&mut new, 4).unwrap(), b"pong");
}

#[test]
fn cut_releases_a_blackholed_connection() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let mut s = connect(&proxy);
    proxy.blackhole(true);
    s.write_all(b"held").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    proxy.cut();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => {}
        Err(e) if !is_timeout(&e) => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
}

#[test]
fn drop_closes_connections_and_stops_listening() {
    let proxy = Proxy::start(echo_server()).unwrap();
    let addr = proxy.addr();
    let mut s = connect(&proxy);
    proxy.blackhole(true);
    let start = Instant::now();
    drop(proxy);
    // Joined its threads, a blackholed one included, without waiting on it.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let mut byte = [0u8; 1];
    assert!(!matches!(s.read(&mut byte), Ok(n) if n > 0));
    assert!(TcpStream::connect(addr).is_err());
}

/// Sends one inline command and reads one reply line.
fn redis_command(s: &mut TcpStream, cmd: &str) -> std::io::Result<String> {
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match s.read(&mut byte)? {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_owned())
}

#[test]
fn through_a_redis_server() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::to_port(redis.port()).unwrap();
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}", proxy.addr().port())
    );
    let mut s = connect(&proxy);
    assert_eq!(redis_command(&mut s, "PING").unwrap(), "+PONG");
    assert_eq!(redis_command(&mut s, "SET k v").unwrap(), "+OK");

    proxy.blackhole(true);
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let e = redis_command(&mut s, "GET k").unwrap_err();
    assert!(is_timeout(&e), "expected silence, got {e}");
    // Redis itself is fine: only this path is down.
    assert!(redis.ping());

    proxy.blackhole(false);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The GET sent during the blackhole is answered now.
    assert_eq!(read_n(&mut s, 7).unwrap(), b"$1\r\nv\r\n");
    assert_eq!(redis_command(&mut s, "PING").unwrap(), "+PONG");
}

/// A command as a RESP array (what clients send; the proxy frames these).
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Sends `SET key v` through a cut armed for it, and returns what the
/// client read (nothing: EOF) and whether Redis ran it.
fn cut_set(cut: RequestCut) -> (usize, bool) {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let mut s = connect(&proxy);
    // A request before it goes through, answered.
    s.write_all(&resp(&["PING"])).unwrap();
    assert_eq!(read_n(&mut s, 7).unwrap(), b"+PONG\r\n");
    proxy.cut_request(cut);
    assert!(proxy.cut_pending());
    s.write_all(&resp(&["SET", "cut:k", "v"])).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(proxy.requests_cut(), 1);
    assert!(!proxy.cut_pending());
    // Other connections, and new ones, are not cut.
    let mut t = connect(&proxy);
    t.write_all(&resp(&["EXISTS", "cut:k"])).unwrap();
    let ran = match read_n(&mut t, 4).unwrap().as_slice() {
        b":1\r\n" => true,
        b":0\r\n" => false,
        other => panic!("{other:?}"),
    };
    (rest.len(), ran)
}

#[test]
fn a_request_cut_after_it_arrived_runs_and_its_reply_is_dropped() {
    assert_eq!(
        cut_set(RequestCut::containing(b"SET").and(b"cut:k")),
        (0, true)
    );
}

#[test]
fn a_request_cut_part_way_never_runs() {
    for bytes in [0, 10, usize::MAX] {
        assert_eq!(
            cut_set(RequestCut::containing(b"cut:k").within(bytes)),
            (0, false),
            "{bytes} bytes"
        );
    }
}

#[test]
fn skip_lets_matching_requests_through_first() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let proxy = Proxy::to_port(redis.port()).unwrap();
    let mut s = connect(&proxy);
    proxy.cut_request(RequestCut::containing(b"INCR").skip(2));
    for n in 1..=2 {
        s.write_all(&resp(&["INCR", "n"])).unwrap();
        assert_eq!(read_n(&mut s, 4).unwrap(), format!(":{n}\r\n").as_bytes());
    }
    s.write_all(&resp(&["INCR", "n"])).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
    let mut t = connect(&proxy);
    t.write_all(&resp(&["GET", "n"])).unwrap();
    assert_eq!(read_n(&mut t, 7).unwrap(), b"$1\r\n3\r\n", "the third ran");
}
