//! Throwaway PostgreSQL servers: `initdb` into a temporary directory, a
//! server on a free port of 127.0.0.1, stopped and deleted when done.
//!
//! PostgreSQL refuses to run as root (`initdb`, `pg_ctl` and `postgres` all
//! check). When this process runs as root (a container, CI), the server's
//! programs run as the `postgres` system user instead, which the `postgresql`
//! packages create; its temporary directory is handed to that user (so the
//! directories above it, `/tmp` or `$TMPDIR`, must be searchable by it).
//!
//! Cleanup does not depend on `Drop` alone: a server in a `static` (see
//! [`PgServer::shared`]) is never dropped, and a test process can be killed.
//! So each server has a watchdog, a small shell process that reads a pipe
//! from this process until it closes, which happens on drop, on exit and on
//! SIGKILL alike, and then stops the server (`pg_ctl stop -m immediate`) and
//! deletes its directory. Only a kill of the watchdog itself (SIGKILL to the
//! whole process group) leaves a server behind.
//!
//! Queries ([`PgServer::query`], [`PgServer::create_database`],
//! [`PgServer::ping`]) run `psql`, from the same directory as the server's
//! programs, as the same OS user, and are killed when they outlast their
//! timeout.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::LaunchError;

/// Rows of a query, every value in PostgreSQL's text format (`None` for
/// NULL).
pub type Rows = Vec<Vec<Option<String>>>;

/// Set to a PostgreSQL URL, tests use that server (its database must exist)
/// instead of starting one: see [`pg_url`].
pub const PG_URL_ENV: &str = "ASIDE_TEST_PG_URL";

/// The database every server creates; [`PgServer::url`] points at it.
pub const TEST_DATABASE: &str = "test";

/// The superuser `initdb` creates, whichever OS user runs the server.
const SUPERUSER: &str = "postgres";

/// The OS user that runs the server when this process is root.
const OS_USER: &str = "postgres";

/// The programs a server needs, all from one directory (one version).
const TOOLS: [&str; 4] = ["initdb", "pg_ctl", "postgres", "psql"];

/// Searched, highest version first, after PATH (Debian and Ubuntu keep the
/// server programs here, off PATH).
const VERSIONED_ROOT: &str = "/usr/lib/postgresql";

/// The tests of one binary share a server and run in parallel threads (as
/// many as the machine has cores, by default): a consistency test holds up to 13 connections, a bridge test
/// about 10, a multi-process run about 40. 300 leaves room for as many
/// parallel tests as a large machine runs (PostgreSQL's default is 100).
const MAX_CONNECTIONS: u32 = 300;

/// How long `pg_ctl` may take to start or stop a server on a busy machine.
const PG_CTL_TIMEOUT_S: &str = "60";

/// How `psql` prints results (unaligned): control characters that test data
/// does not contain. A value equal to [`NULL_MARK`], or containing
/// [`RESULT_MARK`] followed by [`RECORD_SEP`], would be misread.
const FIELD_SEP: char = '\u{1f}';
const RECORD_SEP: char = '\u{1e}';
/// Printed for NULL.
const NULL_MARK: &str = "\u{1d}N";
/// The title `psql` prints before each result set (then its header line).
const RESULT_MARK: &str = "\u{1d}R";

/// Reads stdin until it closes, then stops the server and deletes its
/// directory. `$1` is `pg_ctl`, `$2` the data directory, `$3` the temporary
/// directory. It ignores the signals a terminal or a test runner sends the
/// whole process group (and `cat` inherits that), so a Ctrl-C that kills
/// the tests still leaves it to clean up.
const WATCHDOG: &str = r#"trap '' HUP INT TERM
cat >/dev/null
if [ -f "$2/postmaster.pid" ]; then
  "$1" stop -D "$2" -m immediate -w -t 60 >/dev/null 2>&1
fi
rm -rf "$3"
"#;

/// A PostgreSQL server in a temporary directory, on a free port, with a
/// database [`TEST_DATABASE`] and the superuser `postgres` (trust
/// authentication). Stopped, and its directory deleted, on drop (a panicking
/// test's too), or when this process exits, however it exits.
///
/// ```no_run
/// // The error says what is missing, e.g. how to install PostgreSQL.
/// let pg = aside_test::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
/// let url = pg.url(); // postgres://postgres@127.0.0.1:<port>/test
/// # let _ = url;
/// ```
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    run_as: Option<RunAs>,
    /// Dropped after the watchdog has deleted it: removes whatever is left.
    dir: tempfile::TempDir,
    /// Its stdin is the pipe whose end stops the server.
    watchdog: Option<Child>,
}

/// An unprivileged OS user to run PostgreSQL's programs as.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl PgServer {
    /// Runs `initdb` in a new temporary directory, starts the server on a
    /// free port and creates the database [`TEST_DATABASE`]. Takes about a
    /// second, most of it `initdb`.
    ///
    /// # Errors
    /// [`LaunchError::PgNotInstalled`] when PostgreSQL's programs are not
    /// found; [`LaunchError::PgFailed`] when a step fails (with its output).
    pub fn start() -> Result<Self, LaunchError> {
        let bin = bin_dir()?;
        let run_as = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("aside-pg-")
            .tempdir()
            .map_err(|e| failed("create a temporary directory", e))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))
                .map_err(|e| failed("hand the temporary directory to `postgres`", e))?;
        }
        let mut server = PgServer {
            port: 0,
            bin,
            run_as,
            dir,
            watchdog: None,
        };
        // First, so that whatever happens next is cleaned up.
        server.watchdog = Some(server.spawn_watchdog()?);
        server.initdb()?;
        server.configure()?;
        server.listen()?;
        server.create_database(TEST_DATABASE)?;
        Ok(server)
    }

    /// The server of this process: started by the first call, shared by
    /// every later one (tests run in parallel threads of one process, and
    /// isolate themselves with schemas or [`PgServer::create_database`]).
    /// One `initdb` per test binary instead of one per test. It is never
    /// dropped: its watchdog stops it when the process exits.
    ///
    /// # Errors
    /// As [`PgServer::start`]; every call returns the first call's error.
    pub fn shared() -> Result<&'static PgServer, LaunchError> {
        static SHARED: OnceLock<Result<PgServer, LaunchError>> = OnceLock::new();
        SHARED
            .get_or_init(PgServer::start)
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/test`.
    pub fn url(&self) -> String {
        self.url_for(TEST_DATABASE)
    }

    /// The URL of another database of this server.
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The temporary directory: the data directory `data`, the Unix socket,
    /// and the server's log `server.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates a database (for tests that need one of their own rather than
    /// a schema) and returns its URL.
    ///
    /// # Errors
    /// [`LaunchError::PgFailed`] with the server's message.
    pub fn create_database(&self, name: &str) -> Result<String, LaunchError> {
        let quoted = name.replace('"', "\"\"");
        self.query("postgres", &format!("CREATE DATABASE \"{quoted}\""))?;
        Ok(self.url_for(name))
    }

    /// Runs SQL (one or more statements, sent together as one query string
    /// by `psql -c`) as the superuser on `database`; returns the rows of the
    /// last statement that returned a result set (`psql` before version 15:
    /// of the last statement).
    ///
    /// # Errors
    /// [`LaunchError::PgFailed`] when the server cannot be reached or reports
    /// an error (with `psql`'s message), or `psql` outlasts 30 seconds.
    pub fn query(&self, database: &str, sql: &str) -> Result<Rows, LaunchError> {
        self.psql(database, sql, Duration::from_secs(30))
            .map_err(|e| LaunchError::PgFailed(format!("port {}: {e}", self.port)))
    }

    /// Whether the server answers a query.
    pub fn ping(&self) -> bool {
        self.psql("postgres", "SELECT 1", Duration::from_secs(2))
            .is_ok()
    }

    /// Runs `psql -c sql`, killed if it outlasts `timeout`.
    fn psql(&self, database: &str, sql: &str, timeout: Duration) -> Result<Rows, String> {
        let mut child = self
            .command("psql")
            .args(["-X", "-q", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-F")
            .arg(FIELD_SEP.to_string())
            .arg("-R")
            .arg(RECORD_SEP.to_string())
            .args(["-P", "footer=off", "-P"])
            .arg(format!("null={NULL_MARK}"))
            .arg("-P")
            .arg(format!("title={RESULT_MARK}"))
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", database, "-c", sql])
            .env("PGCONNECT_TIMEOUT", timeout.as_secs().max(2).to_string())
            .env("PGCLIENTENCODING", "UTF8")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not run psql: {e}"))?;
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("psql did not finish within {timeout:?}"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!("could not wait for psql: {e}"));
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        let status = status?;
        if status.success() {
            Ok(parse_psql_output(&String::from_utf8_lossy(&stdout)))
        } else {
            Err(format!(
                "psql exited with {status}: {}",
                String::from_utf8_lossy(&stderr).trim()
            ))
        }
    }

    /// One of PostgreSQL's programs, run as the server's OS user, in the
    /// temporary directory (the current one may be closed to that user).
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn_watchdog(&self) -> Result<Child, LaunchError> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("aside-pg-watchdog")
            .arg(self.bin.join("pg_ctl"))
            .arg(self.data_dir())
            .arg(self.dir.path())
            .current_dir("/")
            .stdin(Stdio::piped())
            // Not this process's stdout: whoever reads the test output would
            // wait for the watchdog too.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.spawn()
            .map_err(|e| failed("start the watchdog (sh)", e))
    }

    fn initdb(&self) -> Result<(), LaunchError> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"])
            // A throwaway cluster: nothing to flush to disk.
            .arg("--no-sync")
            .output()
            .map_err(|e| failed("run initdb", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LaunchError::PgFailed(format!(
                "initdb exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Appends this server's settings to `postgresql.conf` (later lines win).
    fn configure(&self) -> Result<(), LaunchError> {
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        // Durability is worth nothing here: the data is deleted with the
        // server. Without fsync and full-page writes a test's DDL and
        // writes cost no disk flushes.
        let settings = format!(
            "\n# aside-test: local only, fast, disposable.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = {MAX_CONNECTIONS}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n"
        );
        OpenOptions::new()
            .append(true)
            .open(self.data_dir().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .map_err(|e| failed("write postgresql.conf", e))
    }

    /// Starts the server on a free port and waits until it answers queries.
    fn listen(&mut self) -> Result<(), LaunchError> {
        let mut last = String::new();
        // A free port can be taken between our probe and the server's bind:
        // try a few.
        for _ in 0..5 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return self.wait_until_it_answers(Duration::from_secs(30)),
                Err(e) => last = e,
            }
        }
        Err(LaunchError::PgFailed(last))
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // A file, not a pipe: `pg_ctl` leaves the server running, and a
        // server holding our pipe would block reading it.
        let out_path = self.dir.path().join("pg_ctl.out");
        let out = File::create(&out_path).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let status = self
            .command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", PG_CTL_TIMEOUT_S, "-o"])
            .arg(format!("-p {}", self.port))
            .stdout(out)
            .stderr(err)
            .status()
            .map_err(|e| format!("could not run pg_ctl: {e}"))?;
        if status.success() {
            return Ok(());
        }
        let said = std::fs::read_to_string(out_path).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        Err(format!(
            "pg_ctl start on port {} exited with {status}: {}\nserver log:\n{}",
            self.port,
            said.trim(),
            log.trim()
        ))
    }

    fn wait_until_it_answers(&self, within: Duration) -> Result<(), LaunchError> {
        let deadline = Instant::now() + within;
        loop {
            match self.query("postgres", "SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for PgServer {
    /// Closes the watchdog's pipe and waits for it to stop the server and
    /// delete the directory: when this returns, the port is closed.
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.wait();
        }
    }
}

/// The PostgreSQL URL for tests: [`PG_URL_ENV`] when it is set, else the
/// database [`TEST_DATABASE`] of this process's [`PgServer::shared`] server.
///
/// # Errors
/// As [`PgServer::start`], when there is no override.
pub fn pg_url() -> Result<String, LaunchError> {
    match std::env::var(PG_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => PgServer::shared().map(PgServer::url),
    }
}

/// Reads a child's pipe to its end in a thread (so that neither pipe fills
/// up while the other is read).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// The rows of the last result set `psql` printed. Each result set is
/// [`RESULT_MARK`], the header line, then the rows, every record ended by
/// [`RECORD_SEP`] but the last, which a newline ends.
fn parse_psql_output(out: &str) -> Rows {
    let start = format!("{RESULT_MARK}{RECORD_SEP}");
    let Some((_, last)) = out.rsplit_once(start.as_str()) else {
        return Rows::new();
    };
    let last = last.strip_suffix('\n').unwrap_or(last);
    // The header line, then the rows.
    last.split(RECORD_SEP)
        .skip(1)
        .map(|record| {
            record
                .split(FIELD_SEP)
                .map(|value| (value != NULL_MARK).then(|| value.to_owned()))
                .collect()
        })
        .collect()
}

fn free_port() -> Result<u16, LaunchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| failed("find a free port", e))
}

fn failed(what: &str, e: std::io::Error) -> LaunchError {
    LaunchError::PgFailed(format!("could not {what}: {e}"))
}

/// The first directory with all of [`TOOLS`]: PATH, then
/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn bin_dir() -> Result<PathBuf, LaunchError> {
    let path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path.into_iter()
        .chain(versioned_bin_dirs(Path::new(VERSIONED_ROOT)))
        .find(|dir| TOOLS.iter().all(|tool| is_executable(&dir.join(tool))))
        .ok_or(LaunchError::PgNotInstalled)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `<root>/<version>/bin` for every version-named directory (`15`, `9.6`),
/// highest version first.
fn versioned_bin_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// `None` unless this process is root; then the `postgres` user.
fn run_as() -> Result<Option<RunAs>, LaunchError> {
    if id(&["-u"]) != Some(0) {
        return Ok(None);
    }
    match (id(&["-u", OS_USER]), id(&["-g", OS_USER])) {
        (Some(uid), Some(gid)) if uid != 0 => Ok(Some(RunAs { uid, gid })),
        _ => Err(LaunchError::PgFailed(format!(
            "this process runs as root, which PostgreSQL refuses, and there is no \
             unprivileged `{OS_USER}` user to run it as (installing PostgreSQL creates \
             one: `apt-get install -y postgresql`)"
        ))),
    }
}

/// A number `id` prints (the user database, not just `/etc/passwd`).
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_searched_highest_first() -> std::io::Result<()> {
        let root = tempfile::tempdir()?;
        for name in ["9.6", "15", "16", "10", "not-a-version"] {
            std::fs::create_dir(root.path().join(name))?;
        }
        let found = versioned_bin_dirs(root.path());
        let names: Vec<_> = found
            .iter()
            .filter_map(|d| d.parent()?.file_name()?.to_str())
            .collect();
        assert_eq!(names, ["16", "15", "10", "9.6"]);
        assert!(versioned_bin_dirs(&root.path().join("absent")).is_empty());
        Ok(())
    }

    #[test]
    fn psql_output_gives_the_last_result_set() {
        let out =
            "\u{1d}R\u{1e}a\u{1f}b\u{1f}c\u{1e}1\u{1f}\u{1d}N\u{1f}\u{1e}x\ny\u{1f}2\u{1f}3\n";
        assert_eq!(
            parse_psql_output(out),
            [
                vec![Some("1".to_owned()), None, Some(String::new())],
                vec![
                    Some("x\ny".to_owned()),
                    Some("2".to_owned()),
                    Some("3".to_owned())
                ],
            ]
        );
        let two = format!("{out}\u{1d}R\u{1e}?column?\u{1e}2\n");
        assert_eq!(parse_psql_output(&two), [[Some("2".to_owned())]]);
        let empty = format!("{out}\u{1d}R\u{1e}?column?\n");
        assert!(parse_psql_output(&empty).is_empty());
        assert!(parse_psql_output("").is_empty());
    }

    #[test]
    fn missing_programs_say_how_to_install() {
        let e = LaunchError::PgNotInstalled.to_string();
        assert!(e.contains("apt-get install -y postgresql"), "{e}");
    }
}
