//! [`RedisCluster`]: a Redis Cluster of `redis-server` processes on free
//! ports, made with `redis-cli --cluster create`, stopped on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{LaunchError, RedisServer};

fn cli_binary() -> PathBuf {
    std::env::var_os("REDIS_CLI").map_or_else(|| PathBuf::from("redis-cli"), PathBuf::from)
}

/// A Redis Cluster: `masters` primaries (the slots split evenly between
/// them) and `replicas` replicas of each, every node a [`RedisServer`]
/// without persistence. Stopped (every node killed) on drop.
///
/// ```no_run
/// let cluster = aside_test::RedisCluster::start(3, 0).expect("redis cluster");
/// let urls = cluster.urls(); // redis://127.0.0.1:<port> of every node
/// # let _ = urls;
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    // Holds the nodes' cluster configuration files; removed on drop.
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` primaries with `replicas` replicas each, and waits
    /// until every node reports `cluster_state:ok`.
    ///
    /// # Errors
    /// [`LaunchError::NotInstalled`] without `redis-server`,
    /// [`LaunchError::CliNotInstalled`] without `redis-cli`, and
    /// [`LaunchError::Failed`] when the cluster does not form within 30 s.
    pub fn start(masters: usize, replicas: usize) -> Result<Self, LaunchError> {
        // A port probed free can be taken before a node binds it (by another
        // test's server, or a client's ephemeral port): a node then joins
        // the wrong party. Start again with fresh nodes, a few times.
        let mut last = LaunchError::Failed("no attempt".into());
        for _ in 0..3 {
            match Self::try_start(masters, replicas) {
                Ok(cluster) => return Ok(cluster),
                Err(e @ (LaunchError::NotInstalled | LaunchError::CliNotInstalled)) => {
                    return Err(e);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn try_start(masters: usize, replicas: usize) -> Result<Self, LaunchError> {
        let dir = tempfile::tempdir().map_err(|e| LaunchError::Failed(e.to_string()))?;
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let conf = dir.path().join(format!("nodes-{i}.conf"));
            nodes.push(
                RedisServer::builder()
                    .arg("--cluster-enabled")
                    .arg("yes")
                    .arg("--cluster-config-file")
                    .arg(conf.to_string_lossy())
                    // Replication writes an RDB file even without `save`:
                    // keep it in the cluster's directory (a `dump.rdb` left in
                    // the working directory would be loaded by the next
                    // server started there).
                    .arg("--dir")
                    .arg(dir.path().to_string_lossy())
                    .arg("--dbfilename")
                    .arg(format!("dump-{i}.rdb"))
                    // The bus port on a free port of its own: the default
                    // (port + 10000) may be taken, or past 65535.
                    .arg("--cluster-port")
                    .arg(crate::free_port()?.to_string())
                    // Quick failure detection, for the failover tests.
                    .arg("--cluster-node-timeout")
                    .arg("2000")
                    .start()?,
            );
        }
        let cluster = RedisCluster { nodes, _dir: dir };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        args.extend([
            "--cluster-replicas".into(),
            replicas.to_string(),
            "--cluster-yes".into(),
        ]);
        run_cli(&args)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            wait(deadline, || {
                Ok(cluster
                    .command_on(node.port(), &["CLUSTER", "INFO"])?
                    .contains("cluster_state:ok"))
            })?;
            // A replica serves (and can take over) once it has synced.
            if cluster
                .command_on(node.port(), &["ROLE"])?
                .starts_with("slave")
            {
                wait(deadline, || {
                    Ok(cluster
                        .command_on(node.port(), &["INFO", "replication"])?
                        .contains("master_link_status:up"))
                })?;
            }
        }
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, in the order they were started (`redis-cli` made the first
    /// `masters` of them primaries).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Runs a command with `redis-cli` on the node at `port` and returns
    /// its output.
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when `redis-cli` fails.
    pub fn command_on(&self, port: u16, args: &[&str]) -> Result<String, LaunchError> {
        let mut all: Vec<String> = vec!["-p".into(), port.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_cli(&all)
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when `redis-cli` fails or answers oddly.
    pub fn keyslot(&self, key: &str) -> Result<u16, LaunchError> {
        let port = self.first_port()?;
        let out = self.command_on(port, &["CLUSTER", "KEYSLOT", key])?;
        out.trim()
            .parse()
            .map_err(|_| LaunchError::Failed(format!("CLUSTER KEYSLOT answered {out:?}")))
    }

    /// The port of the primary serving `slot` now, as the first running
    /// node sees it.
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when no node claims it.
    pub fn primary_of_slot(&self, slot: u16) -> Result<u16, LaunchError> {
        let port = self.first_port()?;
        // `CLUSTER SLOTS` lists: start, end, then the primary's ip and port.
        let slots = self.command_on(port, &["CLUSTER", "SLOTS"])?;
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end), Ok(p)) = (
                lines[i].parse::<u16>(),
                lines[i + 1].parse::<u16>(),
                lines[i + 3].parse::<u16>(),
            ) && lines[i + 2] == "127.0.0.1"
                && (start..=end).contains(&slot)
            {
                return Ok(p);
            }
            i += 1;
        }
        Err(LaunchError::Failed(format!(
            "no primary serves slot {slot}"
        )))
    }

    /// Promotes a replica of the primary at `primary_port` with
    /// `CLUSTER FAILOVER` (a coordinated switch: no acknowledged write is
    /// lost), and waits until it serves as primary. Returns its port.
    ///
    /// # Errors
    /// [`LaunchError::Failed`] when the primary has no replica or the switch
    /// does not complete within 30 s.
    pub fn failover(&self, primary_port: u16) -> Result<u16, LaunchError> {
        let id = self
            .command_on(primary_port, &["CLUSTER", "MYID"])?
            .trim()
            .to_owned();
        let replica = self
            .nodes
            .iter()
            .map(RedisServer::port)
            .find(|&p| {
                p != primary_port
                    && self.command_on(p, &["ROLE"]).is_ok_and(|r| {
                        r.starts_with("slave") && r.contains(&primary_port.to_string())
                    })
            })
            .ok_or_else(|| LaunchError::Failed(format!("no replica of {id} ({primary_port})")))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The replica must have caught up before it can take over.
        wait(deadline, || {
            Ok(self
                .command_on(replica, &["INFO", "replication"])?
                .contains("master_link_status:up"))
        })?;
        self.command_on(replica, &["CLUSTER", "FAILOVER"])?;
        wait(deadline, || {
            Ok(self.command_on(replica, &["ROLE"])?.starts_with("master"))
        })?;
        for node in &self.nodes {
            wait(deadline, || {
                Ok(self
                    .command_on(node.port(), &["CLUSTER", "INFO"])?
                    .contains("cluster_state:ok"))
            })?;
        }
        Ok(replica)
    }

    /// Kills the node at `index` (in [`nodes`](Self::nodes) order), as a
    /// crash would; its replica, if any, takes over after the node timeout
    /// (2 s).
    pub fn stop_node(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.stop();
        }
    }

    /// The first node still running (asked about the cluster's state: a
    /// node stopped by [`stop_node`](Self::stop_node) cannot answer).
    fn first_port(&self) -> Result<u16, LaunchError> {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(RedisServer::port)
            .ok_or_else(|| LaunchError::Failed("a cluster without running nodes".into()))
    }
}

fn run_cli(args: &[String]) -> Result<String, LaunchError> {
    let out = Command::new(cli_binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LaunchError::CliNotInstalled,
            _ => LaunchError::Failed(e.to_string()),
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || stdout.starts_with("ERR") {
        return Err(LaunchError::Failed(format!(
            "redis-cli {}: {stdout}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

fn wait(
    deadline: Instant,
    mut done: impl FnMut() -> Result<bool, LaunchError>,
) -> Result<(), LaunchError> {
    loop {
        let last = done();
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LaunchError::Failed(format!(
                "the cluster did not settle in time (last: {last:?})"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_primaries_cover_every_slot() -> Result<(), LaunchError> {
        let cluster = RedisCluster::start(3, 1)?;
        assert_eq!(cluster.urls().len(), 6);
        let port = cluster.first_port()?;
        let info = cluster.command_on(port, &["CLUSTER", "INFO"])?;
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:6"), "{info}");
        assert!(info.contains("cluster_size:3"), "{info}");
        let owner = cluster.primary_of_slot(cluster.keyslot("foo")?)?;
        assert!(cluster.nodes().iter().any(|n| n.port() == owner));
        Ok(())
    }

    #[test]
    fn missing_cli_says_how_to_install() {
        let e = LaunchError::CliNotInstalled.to_string();
        assert!(e.contains("apt-get install -y redis-tools"), "{e}");
    }
}
