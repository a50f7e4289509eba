//! A minimal HTTP/1.1 GET over a TCP stream: enough to read a Prometheus
//! text page from a service's `/metrics`, with every wait bounded. (A full
//! HTTP client would add a large dependency tree for one plain request.)
//! `https://` is not supported: scrape endpoints are plain HTTP as a rule,
//! and the command says so instead of failing obscurely.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The largest page read (a Prometheus page of a busy service is a few
/// hundred KiB).
const MAX_RESPONSE: u64 = 32 * 1024 * 1024;

/// Where to send the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// As written in the URL (an IPv6 address keeps its brackets).
    pub host: String,
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

/// Parses `http://host[:port][/path]`.
pub(crate) fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("--metrics-url {url:?} is not a URL (expected http://host:port/metrics)");
    };
    if !scheme.eq_ignore_ascii_case("http") {
        bail!("--metrics-url {url:?}: only http:// is supported, not {scheme}://");
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_owned()),
        Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
        None => (rest, "/".to_owned()),
    };
    ensure!(
        !authority.contains('@'),
        "--metrics-url: user information in the URL is not supported"
    );
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            bail!("--metrics-url {url:?}: unclosed '[' in the host");
        };
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    ensure!(
        !host.is_empty() && host != "[]",
        "--metrics-url {url:?} has no host"
    );
    let port = match port {
        None => 80,
        Some(p) => p
            .parse()
            .with_context(|| format!("--metrics-url {url:?}: invalid port {p:?}"))?,
    };
    Ok(Target { host, port, path })
}

/// GETs `url` and returns the body, within `timeout` for the connection
/// and again for the whole response.
pub(crate) async fn get(url: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let target = parse_url(url)?;
    let address = (target.host.trim_matches(['[', ']']), target.port);
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| anyhow::anyhow!("no connection to {url} within {timeout:?}"))?
        .with_context(|| format!("could not connect to {url}"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nAccept: text/plain\r\nUser-Agent: aside-cli\r\nConnection: close\r\n\r\n",
        target.path, target.host, target.port
    );
    let response = tokio::time::timeout(timeout, async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut response)
            .await?;
        Ok::<_, std::io::Error>(response)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no complete answer from {url} within {timeout:?}"))?
    .with_context(|| format!("could not read from {url}"))?;
    ensure!(
        response.len() as u64 <= MAX_RESPONSE,
        "the answer from {url} is larger than {MAX_RESPONSE} bytes"
    );
    body(&response).with_context(|| format!("bad answer from {url}"))
}

/// The body of a complete HTTP/1.x response, checked to be a 200.
pub(crate) fn body(response: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("not an HTTP response (no end of headers)");
    };
    let head = std::str::from_utf8(&response[..end]).context("headers are not UTF-8")?;
    let rest = &response[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next().unwrap_or_default(), parts.next());
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 response: {status:?}"
    );
    ensure!(
        code == Some("200"),
        "HTTP status {:?}",
        status.get(version.len() + 1..).unwrap_or(status)
    );
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("content-encoding") && value != "identity" {
            bail!("compressed answer ({value}) though none was asked for");
        }
    }
    if chunked {
        return dechunk(rest);
    }
    match length {
        Some(n) => {
            ensure!(
                rest.len() >= n,
                "answer cut short: {} of {n} bytes",
                rest.len()
            );
            Ok(rest[..n].to_vec())
        }
        // Without a length the body runs to the end of the connection.
        None => Ok(rest.to_vec()),
    }
}

/// Decodes a chunked body (RFC 9112 section 7.1); trailers are ignored.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            bail!("chunked answer cut short");
        };
        let line = std::str::from_utf8(&rest[..eol]).context("bad chunk size")?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size, 16).with_context(|| format!("bad chunk size {size:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(rest.len() >= size + 2, "chunked answer cut short");
        body.extend_from_slice(&rest[..size]);
        ensure!(
            &rest[size..size + 2] == b"\r\n",
            "chunk not followed by CRLF"
        );
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        match parse_url(url) {
            Ok(t) => t,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let t = target("http://127.0.0.1:9000/metrics");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 9000, "/metrics")
        );
        let t = target("http://shop");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("shop", 80, "/")
        );
        let t = target("http://[::1]:9100/m?x=1");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("[::1]", 9100, "/m?x=1")
        );
        for bad in [
            "https://x/metrics",
            "x:9000",
            "http://:80/",
            "http://h:port/",
            "http://u:p@h/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bodies_by_length_chunks_or_close_and_errors() {
        let ok = |r: &str| match body(r.as_bytes()) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) => panic!("{r:?}: {e}"),
        };
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef"),
            "abc"
        );
        assert_eq!(ok("HTTP/1.0 200 OK\r\n\r\nto the end"), "to the end");
        assert_eq!(
            ok(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n"
            ),
            "Wikipedia"
        );
        let err = |r: &str| match body(r.as_bytes()) {
            Ok(b) => panic!("{r:?} accepted: {b:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err("HTTP/1.1 404 Not Found\r\n\r\n").contains("404 Not Found"));
        assert!(err("SSH-2.0-OpenSSH\r\n\r\n").contains("not an HTTP/1 response"));
        assert!(err("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").contains("cut short"));
        assert!(
            err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc")
                .contains("cut short")
        );
        assert!(err("HTTP/1.1 200 OK").contains("no end of headers"));
    }
}
