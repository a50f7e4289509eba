//! [`RequestCut`]: which request a [`Proxy`](super::Proxy) cuts its
//! connection at, and how.

/// A cut at one chosen request (see
/// [`Proxy::cut_request`](super::Proxy::cut_request)): the first
/// request whose bytes contain every needle (a command name, a key, an
/// argument), after `skip` such requests went through.
#[derive(Debug, Clone)]
pub struct RequestCut {
    pub(super) needles: Vec<Vec<u8>>,
    pub(super) skip: usize,
    pub(super) at: CutAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CutAt {
    /// The whole request is forwarded; its reply is dropped, then the
    /// connection is cut.
    AfterRequest,
    /// This many bytes of the request are forwarded (always fewer than its
    /// length), then the connection is cut.
    Within(usize),
}

impl RequestCut {
    /// Matches a request holding `needle` among its bytes (the command's
    /// name, a key, an argument: e.g. `b"EVALSHA"`). By default the server
    /// receives the whole request and the reply is lost
    /// ([`after_request`](Self::after_request)).
    pub fn containing(needle: impl AsRef<[u8]>) -> Self {
        RequestCut {
            needles: vec![needle.as_ref().to_vec()],
            skip: 0,
            at: CutAt::AfterRequest,
        }
    }

    /// Also requires `needle` in the request.
    #[must_use]
    pub fn and(mut self, needle: impl AsRef<[u8]>) -> Self {
        self.needles.push(needle.as_ref().to_vec());
        self
    }

    /// Lets the first `n` matching requests through; the next one is cut.
    #[must_use]
    pub fn skip(mut self, n: usize) -> Self {
        self.skip = n;
        self
    }

    /// The server receives the whole request (and so runs it); the proxy
    /// waits for the reply, drops it, and cuts the connection: the client
    /// sees its connection close with the command in flight.
    #[must_use]
    pub fn after_request(mut self) -> Self {
        self.at = CutAt::AfterRequest;
        self
    }

    /// Only the first `bytes` of the request reach the server (at most its
    /// length less one), then the connection is cut: the server discards
    /// the incomplete command and never runs it. The client sees the same
    /// as with [`after_request`](Self::after_request).
    #[must_use]
    pub fn within(mut self, bytes: usize) -> Self {
        self.at = CutAt::Within(bytes);
        self
    }

    pub(super) fn matches(&self, request: &[u8]) -> bool {
        self.needles
            .iter()
            .all(|n| n.is_empty() || request.windows(n.len()).any(|w| w == n.as_slice()))
    }
}
