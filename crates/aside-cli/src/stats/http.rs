//! GET of a service's Prometheus page, through hyper's HTTP/1 client (the
//! binary has hyper already, for `--metrics-addr`), with every wait
//! bounded and the page's size capped. `https://` is not supported:
//! scrape endpoints are plain HTTP as a rule, and the command says so
//! instead of failing obscurely.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_ENCODING, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The largest page read (a Prometheus page of a busy service is a few
/// hundred KiB).
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// Parses `http://host[:port][/path]`.
pub(crate) fn parse_url(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url.parse().with_context(|| {
        format!("--metrics-url {url:?} is not a URL (expected http://host:port/metrics)")
    })?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) => bail!("--metrics-url {url:?}: only http:// is supported, not {s}://"),
        None => bail!("--metrics-url {url:?} is not a URL (expected http://host:port/metrics)"),
    }
    let Some(authority) = uri.authority() else {
        bail!("--metrics-url {url:?} has no host");
    };
    ensure!(
        !authority.as_str().contains('@'),
        "--metrics-url: user information in the URL is not supported"
    );
    ensure!(
        !authority.host().is_empty(),
        "--metrics-url {url:?} has no host"
    );
    // `Uri` keeps a port it cannot read as a number: say so here rather
    // than fail to connect to port 80.
    let after_host = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    ensure!(
        after_host.is_empty() || authority.port_u16().is_some(),
        "--metrics-url {url:?}: invalid port {:?}",
        after_host.trim_start_matches(':')
    );
    Ok(uri)
}

/// GETs `url` and returns the body, within `timeout` for the connection
/// and again for the whole response.
pub(crate) async fn get(url: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let uri = parse_url(url)?;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeout));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let request = Request::get(uri)
        .header(ACCEPT, "text/plain")
        .header(USER_AGENT, "aside-cli")
        .body(Empty::new())
        .with_context(|| format!("--metrics-url {url:?}"))?;
    let page = tokio::time::timeout(timeout, async {
        let response = client
            .request(request)
            .await
            .with_context(|| format!("could not connect to {url}"))?;
        let status = response.status();
        ensure!(
            status == StatusCode::OK,
            "bad answer from {url}: HTTP status {status}"
        );
        if let Some(encoding) = response.headers().get(CONTENT_ENCODING)
            && encoding != "identity"
        {
            bail!(
                "bad answer from {url}: compressed ({}) though no compression was asked for",
                String::from_utf8_lossy(encoding.as_bytes())
            );
        }
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("could not read the page at {url}: {e}"))?;
        Ok(body.to_bytes().to_vec())
    })
    .await
    .map_err(|_| anyhow::anyhow!("no complete answer from {url} within {timeout:?}"))??;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken() {
        for good in [
            "http://127.0.0.1:9000/metrics",
            "http://shop",
            "HTTP://[::1]:9100/m?x=1",
        ] {
            assert!(parse_url(good).is_ok(), "{good} refused");
        }
        for (bad, says) in [
            ("https://x/metrics", "only http://"),
            ("x:9000", "is not a URL"),
            ("not a url", "is not a URL"),
            ("http://:80/", ""),
            ("http://h:port/", "invalid port \"port\""),
            ("http://u:p@h/", "user information"),
        ] {
            match parse_url(bad) {
                Ok(u) => panic!("{bad} accepted as {u}"),
                Err(e) => assert!(format!("{e:#}").contains(says), "{bad}: {e:#}"),
            }
        }
    }
}
