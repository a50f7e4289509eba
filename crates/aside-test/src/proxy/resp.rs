//! Just enough RESP (Redis's wire protocol, versions 2 and 3) to find where
//! one message ends, so the proxy can count requests and replies and cut a
//! connection between two of them, or inside one. Nothing is decoded
//! beyond lengths: the bytes are forwarded as they came.

/// The end (exclusive) of the message starting at `at`, `Ok(None)` when
/// `buf` does not hold all of it yet, `Err` when the bytes are not RESP.
pub(super) fn message_end(buf: &[u8], at: usize) -> Result<Option<usize>, ()> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    // Known at the first byte: a stream that is not RESP must not wait for
    // a line end that may never come.
    if !b"+-:_,#($!=*~>%|".contains(&kind) {
        return Err(());
    }
    let Some((header, body)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        // Simple string, error, integer, null, double, boolean, big number.
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(body)),
        // Bulk string, bulk error, verbatim string: a length, then the bytes
        // and CRLF (-1: a null, nothing follows).
        b'$' | b'!' | b'=' => match number(header)? {
            n if n < 0 => Ok(Some(body)),
            n => {
                let end = body + usize::try_from(n).map_err(|_| ())? + 2;
                Ok((end <= buf.len()).then_some(end))
            }
        },
        // Array, set, push: a count of messages; a map: of pairs; an
        // attribute: pairs, then the message they describe.
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = number(header)?;
            if n < 0 {
                return Ok(Some(body));
            }
            let n = usize::try_from(n).map_err(|_| ())?;
            let items = match kind {
                b'%' => 2 * n,
                b'|' => 2 * n + 1,
                _ => n,
            };
            let mut end = body;
            for _ in 0..items {
                match message_end(buf, end)? {
                    Some(e) => end = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        _ => Err(()),
    }
}

/// Whether the message at `buf[at..]` is a RESP3 push (out of band: not the
/// reply to any request).
pub(super) fn is_push(buf: &[u8], at: usize) -> bool {
    buf.get(at) == Some(&b'>')
}

/// The line starting at `at` (without its CRLF) and where the next begins.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ()> {
    let rest = buf.get(at..).ok_or(())?;
    Ok(rest
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| (&rest[..i], at + i + 2)))
}

fn number(text: &[u8]) -> Result<i64, ()> {
    std::str::from_utf8(text)
        .map_err(|_| ())?
        .parse()
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_each_kind_and_waits_for_missing_bytes() {
        let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n";
        assert_eq!(message_end(request, 0), Ok(Some(request.len())));
        for cut in 0..request.len() {
            assert_eq!(message_end(&request[..cut], 0), Ok(None), "{cut}");
        }
        let replies = b"+OK\r\n:12\r\n$-1\r\n*2\r\n$1\r\na\r\n*-1\r\n%1\r\n+a\r\n:1\r\n";
        let mut at = 0;
        let mut ends = Vec::new();
        while let Ok(Some(end)) = message_end(replies, at) {
            ends.push(end);
            at = end;
        }
        assert_eq!(ends, [5, 10, 15, 31, 43]);
        assert_eq!(at, replies.len());
        assert!(is_push(b">2\r\n", 0));
        assert_eq!(message_end(b"PING\r\n", 0), Err(()));
        assert_eq!(message_end(b"hello", 0), Err(()));
        assert_eq!(message_end(b"$x\r\n", 0), Err(()));
    }
}
