//! What a run costs besides its latency: Redis commands and scripts, and
//! the CPU time of `redis-server` and of this process.

use redis::aio::ConnectionManager;

/// What a run cost outside the latency: Redis commands processed, CPU time
/// of `redis-server` (`INFO cpu`) and of this process (`/proc/self/stat`),
/// as deltas over the run. Per operation, they say where the time of a
/// contender goes on a machine whose two cores run the client, Redis and
/// the database at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// Every command Redis ran, the ones inside scripts included.
    pub commands: u64,
    /// Script calls (`EVALSHA`): a round trip each, and most of Redis's
    /// extra CPU for aside.
    pub scripts: u64,
    pub redis_cpu_s: f64,
    pub client_cpu_s: f64,
}

impl Cost {
    pub async fn now(conn: &ConnectionManager) -> Self {
        let info = info(conn, "all").await;
        let field = |name: &str| info_field(&info, name);
        Self {
            commands: field("total_commands_processed:") as u64,
            scripts: info
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
                .and_then(|l| l.split(',').next())
                .map_or(0, |n| n.parse().unwrap()),
            redis_cpu_s: field("used_cpu_user:") + field("used_cpu_sys:"),
            client_cpu_s: own_cpu_s(),
        }
    }

    pub fn since(self, before: Self) -> Self {
        Self {
            // The INFO call that ends the run counts once.
            commands: self.commands - before.commands - 1,
            scripts: self.scripts - before.scripts,
            redis_cpu_s: self.redis_cpu_s - before.redis_cpu_s,
            client_cpu_s: self.client_cpu_s - before.client_cpu_s,
        }
    }
}

/// User + system CPU time of this process, from `/proc/self/stat` (clock
/// ticks of 10 ms; a 2 s run uses a second or more of CPU).
fn own_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A numeric field of an `INFO` reply (`name` with its colon).
pub fn info_field(info: &str, name: &str) -> f64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in INFO"))
        .trim()
        .parse()
        .unwrap()
}

/// Redis's `INFO section` reply.
pub async fn info(conn: &ConnectionManager, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn.clone())
        .await
        .unwrap()
}
