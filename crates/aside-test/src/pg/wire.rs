//! Just enough of PostgreSQL's wire protocol (version 3, simple queries, no
//! password, no TLS) to create databases and check that a server answers,
//! without a client library: a throwaway server trusts local connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::Rows;

/// Protocol version 3.0.
const PROTOCOL: i32 = 196_608;
/// A message longer than this is not one this client asked for.
const MAX_MESSAGE: usize = 1 << 26;

/// Connects as `user` to `database` on 127.0.0.1:`port`, runs `sql`, and
/// returns the rows it produced (of the last statement that produced any).
pub(super) fn simple_query(
    port: u16,
    user: &str,
    database: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Rows, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut conn = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(timeout))
        .and_then(|()| conn.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;

    let mut startup = PROTOCOL.to_be_bytes().to_vec();
    for value in ["user", user, "database", database] {
        push_cstr(&mut startup, value);
    }
    startup.push(0);
    send(&mut conn, None, &startup)?;
    loop {
        let (tag, body) = receive(&mut conn)?;
        match tag {
            b'R' => match int32(&body) {
                Some(0) => {}
                code => return Err(format!("the server asks for authentication ({code:?})")),
            },
            // Also what a server that is still starting up answers.
            b'E' => return Err(error_text(&body)),
            b'Z' => break,
            // Parameter status, backend key, notices.
            _ => {}
        }
    }

    let mut query = Vec::new();
    push_cstr(&mut query, sql);
    send(&mut conn, Some(b'Q'), &query)?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = receive(&mut conn)?;
        match tag {
            // A new result set: keep only the last one's rows.
            b'T' => rows.clear(),
            b'D' => rows.push(data_row(&body)?),
            // The server still ends the query with ReadyForQuery.
            b'E' => error = Some(error_text(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    // Terminate; the server closes the connection either way.
    let _ = send(&mut conn, Some(b'X'), &[]);
    error.map_or(Ok(rows), Err)
}

fn push_cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

fn send(conn: &mut TcpStream, tag: Option<u8>, body: &[u8]) -> Result<(), String> {
    let len = i32::try_from(body.len() + 4).map_err(|_| "message too long".to_owned())?;
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.extend(tag);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(body);
    conn.write_all(&msg).map_err(|e| e.to_string())
}

fn receive(conn: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).map_err(|e| e.to_string())?;
    let [tag, a, b, c, d] = head;
    let len = usize::try_from(i32::from_be_bytes([a, b, c, d]))
        .ok()
        .and_then(|l| l.checked_sub(4))
        .filter(|l| *l <= MAX_MESSAGE)
        .ok_or_else(|| format!("a malformed message ({tag:#x})"))?;
    let mut body = vec![0; len];
    conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((tag, body))
}

fn int32(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(..4)?.try_into().ok()?))
}

/// `DataRow`: a count of columns, then each as a length (-1: NULL) and bytes.
fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let malformed = || "a malformed data row".to_owned();
    let count = body
        .get(..2)
        .and_then(|c| <[u8; 2]>::try_from(c).ok())
        .map(u16::from_be_bytes)
        .ok_or_else(malformed)?;
    let mut at = 2;
    let mut row = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = int32(body.get(at..).ok_or_else(malformed)?).ok_or_else(malformed)?;
        at += 4;
        match usize::try_from(len) {
            Err(_) => row.push(None),
            Ok(len) => {
                let value = body.get(at..at + len).ok_or_else(malformed)?;
                row.push(Some(String::from_utf8_lossy(value).into_owned()));
                at += len;
            }
        }
    }
    Ok(row)
}

/// `ErrorResponse`: fields of a type byte and a string; keeps the severity,
/// the message and the SQLSTATE.
fn error_text(body: &[u8]) -> String {
    let (mut severity, mut message, mut code) = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0) {
        let Some((kind, text)) = field.split_first() else {
            continue;
        };
        let text = String::from_utf8_lossy(text);
        match kind {
            b'S' => severity = text.into_owned(),
            b'M' => message = text.into_owned(),
            b'C' => code = text.into_owned(),
            _ => {}
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}
