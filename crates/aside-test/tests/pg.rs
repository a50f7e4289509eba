//! Throwaway PostgreSQL servers: several at once, each its own; gone (port
//! closed, directory deleted) after a drop, a panic, or the death of the
//! process that started them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aside_test::{LaunchError, PgServer};

/// Set in the environment of the child process of
/// [`a_killed_process_leaves_no_server`].
const CHILD_ENV: &str = "ASIDE_TEST_PG_CHILD";

/// The value, or a panic with the error's message (which says, for one,
/// how to install PostgreSQL).
fn ok<T>(result: Result<T, LaunchError>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn answers(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// Polls until the port is closed and the directory deleted.
fn gone_within(port: u16, dir: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while answers(port) || dir.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn two_servers_at_once_each_answer_and_are_gone_after_drop() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::start);
        let b = s.spawn(PgServer::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    let (a, b) = (ok(a), ok(b));
    assert_ne!(a.port(), b.port());
    for server in [&a, &b] {
        assert!(server.url().ends_with(&format!(":{}/test", server.port())));
        let rows = ok(server.query("test", "SELECT current_database(), 6 * 7, NULL"));
        assert_eq!(
            rows,
            [[Some("test".to_owned()), Some("42".to_owned()), None]]
        );
        let settings = ok(server.query(
            "test",
            "SELECT current_setting('fsync'), current_setting('max_connections')::int >= 200",
        ));
        assert_eq!(settings, [[Some("off".to_owned()), Some("t".to_owned())]]);
    }
    // Two servers, not one seen twice.
    ok(a.query("test", "CREATE TABLE only_in_a (x int)"));
    let e = b.query("test", "SELECT * FROM only_in_a").unwrap_err();
    assert!(
        e.to_string().contains("\"only_in_a\" does not exist"),
        "{e}"
    );
    // Several statements: the rows of the last result set, values as they are.
    let rows = ok(a.query(
        "test",
        "SELECT 1; INSERT INTO only_in_a VALUES (7); SELECT x, '', E'a\\nb' FROM only_in_a; \
         CREATE TABLE also_in_a ()",
    ));
    assert_eq!(
        rows,
        [[
            Some("7".to_owned()),
            Some(String::new()),
            Some("a\nb".to_owned())
        ]]
    );
    assert!(ok(a.query("test", "SELECT 1 WHERE false")).is_empty());
    // A database of a test's own.
    let url = ok(b.create_database("mine"));
    assert!(url.ends_with("/mine"), "{url}");
    assert_eq!(ok(b.query("mine", "SELECT 1")), [[Some("1".to_owned())]]);

    let gone: Vec<(u16, PathBuf)> = [&a, &b]
        .iter()
        .map(|s| (s.port(), s.dir().to_owned()))
        .collect();
    drop(a);
    drop(b);
    for (port, dir) in gone {
        // Drop waits for the server to stop: no polling needed.
        assert!(!answers(port), "port {port} still answers after drop");
        assert!(!dir.exists(), "{} is still there", dir.display());
    }
}

#[test]
fn a_panicking_test_leaves_no_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let server = ok(PgServer::start());
        tx.send((server.port(), server.dir().to_owned())).unwrap();
        panic!("a failing test");
    });
    assert!(test.join().is_err());
    let (port, dir) = rx.recv().expect("the server started");
    assert!(!answers(port), "port {port} still answers after the panic");
    assert!(!dir.exists(), "{} is still there", dir.display());
}

#[test]
fn the_shared_server_is_one_server() {
    let first = ok(PgServer::shared());
    let second = ok(PgServer::shared());
    assert!(std::ptr::eq(first, second));
    assert!(first.ping());
}

/// The body of the child process: starts the shared server (never dropped),
/// says where it is, and waits to be killed.
#[test]
fn child_with_a_shared_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let server = ok(PgServer::shared());
    println!("shared-server {} {}", server.port(), server.dir().display());
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_process_leaves_no_server() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_with_a_shared_server", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("shared-server "));
    // SIGKILL: no destructor, no exit handler runs.
    let _ = child.kill();
    child.wait().unwrap();
    let line = line.expect("the child reported its server");
    let mut parts = line.splitn(3, ' ').skip(1);
    let port: u16 = parts.next().unwrap().parse().unwrap();
    let dir = PathBuf::from(parts.next().unwrap());
    assert!(
        gone_within(port, &dir, Duration::from_secs(30)),
        "port {port} or {} outlived the process",
        dir.display()
    );
}
