//! What the end-to-end tests of the admin commands share: running the
//! binary with a bound on how long it may take, and reading its output.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a run of `aside` left.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The stdout of a successful run, parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        assert!(self.ok(), "aside failed: {self:?}");
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout is not one JSON document ({e}):\n{}", self.stdout),
        }
    }

    /// The one-line message of a failed run.
    pub fn error(&self) -> &str {
        assert!(!self.ok(), "aside succeeded: {self:?}");
        assert_ne!(self.code, None, "killed by a signal: {self:?}");
        let message = self.stderr.trim();
        assert_eq!(message.lines().count(), 1, "not one line: {message:?}");
        assert!(message.starts_with("error: "), "{message:?}");
        assert!(!message.contains("panicked"), "{message:?}");
        message
    }
}

/// Runs `aside args...`; a run still going after a minute (a hang: every
/// wait of the commands is bounded far below that) is killed and fails.
pub fn aside(args: &[&str]) -> Run {
    let mut child = spawn(args);
    let mut stdout = child.stdout.take().map(reader);
    let mut stderr = child.stderr.take().map(reader);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("aside {args:?} hung");
            }
            Err(e) => panic!("{e}"),
        }
    };
    let text = |h: &mut Option<std::thread::JoinHandle<String>>| {
        h.take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    };
    Run {
        code: status.code(),
        stdout: text(&mut stdout),
        stderr: text(&mut stderr),
    }
}

/// Starts `aside args...` with its stdout and stderr piped, for a test that
/// reads them while it runs.
pub fn spawn(args: &[&str]) -> std::process::Child {
    match Command::new(env!("CARGO_BIN_EXE_aside"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("could not run the aside binary: {e}"),
    }
}

/// Reads a pipe to its end in a thread (so a full pipe never blocks the
/// child).
fn reader(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("{e}"),
    }
}

/// The body of `GET url` (http://host:port/path), read to the end of the
/// connection; a panic unless the answer is a 200.
pub fn scrape(url: &str) -> String {
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("GET {url}: {what}: {e}") };
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| fail("not an http URL", &""));
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream =
        std::net::TcpStream::connect(host).unwrap_or_else(|e| fail("could not connect", &e));
    if let Err(e) = stream.set_read_timeout(Some(Duration::from_secs(5))) {
        fail("read timeout", &e);
    }
    if let Err(e) = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    ) {
        fail("could not send", &e);
    }
    let mut response = String::new();
    if let Err(e) = stream.read_to_string(&mut response) {
        fail("could not read", &e);
    }
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "GET {url}: {response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}
