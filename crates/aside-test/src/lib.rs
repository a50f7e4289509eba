//! Test support for aside: real `redis-server` and PostgreSQL processes on
//! free ports.
//!
//! Every test that needs Redis starts its own server, so tests are isolated,
//! run in parallel, and can kill, pause and restart "their" Redis to test
//! failures. A server is killed when its [`RedisServer`] is dropped.
//!
//! ```no_run
//! let redis = aside_test::RedisServer::start().expect("redis-server");
//! let url = redis.url(); // redis://127.0.0.1:<port>
//! # let _ = url;
//! ```
//!
//! A [`PgServer`] is a PostgreSQL of its own: `initdb` into a temporary
//! directory, a server on a free port, a database `test`, all gone on drop
//! or when the process exits. `initdb` takes about a second, so the tests of
//! one binary share one ([`pg_url`], [`PgServer::shared`]) and keep out of
//! each other's way with schemas of their own; `ASIDE_TEST_PG_URL` points
//! them at an existing server instead. As root (PostgreSQL refuses to run as
//! root), the server runs as the `postgres` system user.
//!
//! ```no_run
//! let url = aside_test::pg_url().unwrap_or_else(|e| panic!("{e}"));
//! // postgres://postgres@127.0.0.1:<port>/test, or ASIDE_TEST_PG_URL
//! # let _ = url;
//! ```
//!
//! A [`RedisCluster`] is a Redis Cluster of such servers (three primaries,
//! with or without replicas), formed with `redis-cli --cluster create`; it
//! can switch a primary over to its replica (`CLUSTER FAILOVER`).
//!
//! A [`Proxy`] between a client and a server injects faults into that
//! client's connections only: a silent (half-open) connection, latency, or
//! connections closed under it.
//!
//! A [`FaultyBackend`] wraps any [`aside::backend::Backend`] and injects faults into
//! the operations of the kinds a test picks (errors, latency, hangs, an
//! operation applied but reported failed), switched at run time through its
//! [`FaultControl`]: the failures of one operation that a broken connection
//! cannot express.
//!
//! [`conformance`] is the backend conformance suite: run it against your own
//! [`aside::backend::Backend`] to check that it keeps the trait's contract.
//!
//! [`fixtures`] and [`redis_stats`] hold what aside's own tests share: a
//! server or a panic saying why, loader errors, a loader held at a chosen
//! moment, the name a test binary's child process reruns a test by, and
//! what Redis says it ran (`INFO`).

#![warn(missing_docs)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod cluster;
pub mod conformance;
pub mod faulty;
pub mod fixtures;
mod pg;
mod proxy;
pub mod redis_stats;
pub mod staleness;
pub use cluster::RedisCluster;
pub use faulty::{Failure, FaultControl, FaultyBackend, InjectedFault, Op};
pub use pg::{PG_URL_ENV, PgServer, Rows, TEST_DATABASE, pg_url};
pub use proxy::{Proxy, RequestCut};

/// Why a server could not be started.
///
/// `Clone`, so that every test sharing a server ([`PgServer::shared`]) can
/// report why it did not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// `redis-server` is not installed.
    #[error(
        "`redis-server` was not found on PATH (set REDIS_SERVER to its path, or install it: \
         `apt-get update && apt-get install -y redis-server`)"
    )]
    NotInstalled,
    /// `redis-cli` (needed to form a [`RedisCluster`]) is not installed.
    #[error(
        "`redis-cli` was not found on PATH (set REDIS_CLI to its path, or install it: \
         `apt-get update && apt-get install -y redis-tools`, part of redis-server's package)"
    )]
    CliNotInstalled,
    /// PostgreSQL's server programs (or `psql`) are not installed.
    #[error(
        "PostgreSQL's programs (`initdb`, `pg_ctl`, `postgres`, `psql`) were found neither on \
         PATH nor in /usr/lib/postgresql/*/bin (install them: \
         `apt-get update && apt-get install -y postgresql`, or put their directory on PATH)"
    )]
    PgNotInstalled,
    /// The process could not be started, or did not answer in time.
    #[error("redis-server did not start: {0}")]
    Failed(String),
    /// A step of starting or using a [`PgServer`] failed (with its output).
    #[error("PostgreSQL test server: {0}")]
    PgFailed(String),
}

/// A `redis-server` child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
    password: Option<String>,
    tls: Option<Tls>,
}

/// Certificates of a TLS server: a throwaway CA and a server certificate for
/// 127.0.0.1, made with `openssl`, deleted with the server.
#[derive(Debug)]
struct Tls {
    dir: tempfile::TempDir,
    ca_pem: Vec<u8>,
}

/// Builds a [`RedisServer`] with extra `redis-server` arguments.
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct RedisServerBuilder {
    args: Vec<String>,
    password: Option<String>,
    tls: bool,
}

impl RedisServerBuilder {
    /// Adds a `redis-server` argument, e.g. `.arg("--maxmemory").arg("10mb")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Requires this password (`requirepass`) for the default user.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        let p = password.into();
        self.args.push("--requirepass".into());
        self.args.push(p.clone());
        self.password = Some(p);
        self
    }

    /// Serves TLS only (`rediss://`), with a certificate signed by a fresh CA;
    /// see [`RedisServer::ca_pem`]. Needs `openssl` on PATH.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the server on a free port.
    ///
    /// # Errors
    /// [`LaunchError::NotInstalled`] when there is no `redis-server`.
    pub fn start(self) -> Result<RedisServer, LaunchError> {
        let tls = if self.tls {
            Some(make_certificates()?)
        } else {
            None
        };
        let mut tls = tls;
        let mut last = String::new();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisServer {
                port,
                args: self.args.clone(),
                child: None,
                password: self.password.clone(),
                tls: tls.take(),
            };
            match server.spawn_and_wait(Duration::from_secs(10)) {
                Ok(()) => return Ok(server),
                Err(LaunchError::Failed(e)) => {
                    last = e;
                    tls = server.tls.take();
                }
                Err(e) => return Err(e),
            }
        }
        Err(LaunchError::Failed(last))
    }
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it.
fn make_certificates() -> Result<Tls, LaunchError> {
    let dir = tempfile::tempdir().map_err(|e| LaunchError::Failed(e.to_string()))?;
    let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    std::fs::write(
        path("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .map_err(|e| LaunchError::Failed(e.to_string()))?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec[..],
            &["-days", "2", "-subj", "/CN=aside-test-ca"],
        ]
        .concat()
        .iter()
        .map(|s| (*s).to_owned())
        .chain([
            "-keyout".into(),
            path("ca.key"),
            "-out".into(),
            path("ca.crt"),
        ])
        .collect(),
        [&["req"][..], &ec[..], &["-subj", "/CN=localhost"]]
            .concat()
            .iter()
            .map(|s| (*s).to_owned())
            .chain([
                "-keyout".into(),
                path("server.key"),
                "-out".into(),
                path("server.csr"),
            ])
            .collect(),
        vec![
            "x509".into(),
            "-req".into(),
            "-days".into(),
            "2".into(),
            "-in".into(),
            path("server.csr"),
            "-CA".into(),
            path("ca.crt"),
            "-CAkey".into(),
            path("ca.key"),
            "-CAcreateserial".into(),
            "-extfile".into(),
            path("server.ext"),
            "-out".into(),
            path("server.crt"),
        ],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    LaunchError::Failed("`openssl` not found (apt-get install -y openssl)".into())
                }
                _ => LaunchError::Failed(e.to_string()),
            })?;
        if !out.status.success() {
            return Err(LaunchError::Failed(format!(
                "openssl {}: {}",
                args.first().map_or("", String::as_str),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    let ca_pem = std::fs::read(path("ca.crt")).map_err(|e| LaunchError::Failed(e.to_string()))?;
    Ok(Tls { dir, ca_pem })
}

fn free_port() -> Result<u16, LaunchError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| LaunchError::Failed(e.to_string()))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| LaunchError::Failed(e.to_string()))
}

fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

impl RedisServer {
    /// Starts a server with no persistence on a free port.
    ///
    /// # Errors
    /// [`LaunchError::NotInstalled`] when there is no `redis-server`.
    pub fn start() -> Result<Self, LaunchError> {
        Self::builder().start()
    }

    /// A builder for a server with extra arguments.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The port it listens on (kept across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server), with the
    /// password if one was set.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|t| t.ca_pem.as_slice())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn_and_wait(&mut self, within: Duration) -> Result<(), LaunchError> {
        let mut cmd = Command::new(binary());
        match &self.tls {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(tls) => {
                let f = |name: &str| tls.dir.path().join(name);
                cmd.args(["--port", "0", "--tls-auth-clients", "no"])
                    .arg("--tls-port")
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(f("server.crt"))
                    .arg("--tls-key-file")
                    .arg(f("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(f("ca.crt"));
            }
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LaunchError::NotInstalled,
                _ => LaunchError::Failed(e.to_string()),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + within;
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(LaunchError::Failed(format!(
                    "exited with {status} on port {}",
                    self.port
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchError::Failed(format!(
                    "no answer on port {} within {within:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the server answers PING (or asks for a password, which also
    /// means it is up). A TLS server is up when it accepts connections.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.port).into(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"),
            _ => false,
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit. Its data is lost.
    pub fn stop(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port, empty.
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when it does not answer within 10 s.
    pub fn restart(&mut self) -> Result<(), LaunchError> {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait(Duration::from_secs(5)) {
                Ok(()) => return Ok(()),
                // The old socket may linger for a moment.
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is
    /// answered, like a Redis stuck in a slow command.
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn pause(&self) -> Result<(), LaunchError> {
        self.signal("-STOP")
    }

    /// Resumes a paused server (SIGCONT).
    ///
    /// # Errors
    /// When the signal cannot be sent.
    pub fn resume(&self) -> Result<(), LaunchError> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> Result<(), LaunchError> {
        let pid = self
            .pid()
            .ok_or_else(|| LaunchError::Failed("server is not running".into()))?;
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .map_err(|e| LaunchError::Failed(e.to_string()))?;
        if status.success() {
            Ok(())
        } else {
            Err(LaunchError::Failed(format!("kill {sig} {pid}: {status}")))
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server ignores SIGKILL until... it does not: SIGKILL always
        // works, but resume first so the kernel reaps it promptly.
        if self.child.is_some() {
            let _ = self.resume();
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_restarts_on_the_same_port() -> Result<(), LaunchError> {
        let mut r = RedisServer::start()?;
        assert!(r.ping());
        let port = r.port();
        r.stop();
        assert!(!r.ping());
        r.restart()?;
        assert_eq!(r.port(), port);
        assert!(r.ping());
        Ok(())
    }

    #[test]
    fn tls_server_starts_with_its_ca() -> Result<(), LaunchError> {
        let r = RedisServer::builder().tls().start()?;
        assert!(r.url().starts_with("rediss://127.0.0.1:"));
        assert!(
            r.ca_pem()
                .is_some_and(|p| p.starts_with(b"-----BEGIN CERTIFICATE"))
        );
        assert!(r.ping());
        Ok(())
    }

    #[test]
    fn missing_binary_says_how_to_install() {
        let e = LaunchError::NotInstalled.to_string();
        assert!(e.contains("apt-get install -y redis-server"), "{e}");
    }
}
