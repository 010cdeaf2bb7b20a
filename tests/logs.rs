//! The batched log writer, on the real binary: every access line of a burst of concurrent requests
//! is written whole, and the lines of a graceful stop are all written before the process exits; a
//! stderr nobody reads never stops the proxy.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{haptik_body, series_value, shipped_config, SpawnedProxy};

const REQUESTS: usize = 2_000;
const CONNECTIONS: usize = 8;

/// Sends `count` Haptik requests on one keep-alive connection; each answer must be a 200.
fn chat(port: u16, count: usize) {
    let body = haptik_body("log-user", "hello", 343);
    let request = format!(
        "POST /chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer demo-token\r\nclient-id: demo-client\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    for i in 0..count {
        conn.write_all(request.as_bytes()).unwrap();
        buf.clear();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = conn
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("request {i}: no answer ({e}): the proxy stalled"));
            assert!(n > 0, "request {i}: the proxy closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let len: usize = text[..head_end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if buf.len() >= head_end + 4 + len {
                    break head_end;
                }
            }
        };
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "request {i}: {}",
            String::from_utf8_lossy(&buf[..end])
        );
    }
}

#[test]
fn every_line_of_a_burst_and_of_a_graceful_stop_is_written() {
    let proxy = SpawnedProxy::start(
        &shipped_config().replace("grace_period_seconds = 5", "grace_period_seconds = 0"),
    );
    let port = proxy.port;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || chat(port, REQUESTS / CONNECTIONS)))
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut proxy = proxy;
    while proxy.alive() {
        assert!(Instant::now() < deadline, "still running 20 s after TERM");
        std::thread::sleep(Duration::from_millis(25));
    }
    let logs = proxy.logs();
    let access: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("botbridge::access"))
        .collect();
    assert_eq!(access.len(), REQUESTS, "one access line per request");
    // Batched lines are written whole, never cut or run together.
    for line in &access {
        assert!(
            line.starts_with("20")
                && line.ends_with("bytes_out=703")
                && line.matches("request_id=").count() == 1,
            "a damaged line: {line}"
        );
    }
    // pingora's last line, logged just before the process exits.
    assert!(
        logs.contains("All runtimes exited, exiting now"),
        "the last lines of the stop are missing:\n{logs}"
    );
}

/// The proxy's metrics page.
fn metrics(admin_port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn a_stderr_nobody_reads_never_stops_the_proxy() {
    // stderr is a pipe (64 KiB) nobody reads; one megabyte waits in the proxy: 6,000 access lines
    // of about 330 bytes are twice that.
    let mut proxy = SpawnedProxy::start_with_stderr_pipe(&shipped_config());
    let mut stderr = proxy.take_stderr();
    let port = proxy.port;
    let workers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || chat(port, 1_500)))
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let dropped = series_value(
        &metrics(proxy.admin_port),
        "botbridge_log_lines_dropped_total",
    );
    assert!(
        dropped.unwrap_or(0.0) > 0.0,
        "lines past the bound are counted: {dropped:?}"
    );
    // A reader comes back: what waited is written, then a line says how many were dropped.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut chunk = [0u8; 65536];
        while let Ok(n) = stderr.read(&mut chunk) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&text).contains("log lines dropped") {
                break;
            }
        }
        let _ = tx.send(String::from_utf8_lossy(&text).into_owned());
    });
    // Lines go out as the proxy logs more: a few requests at a time until the notice is read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        chat(port, 5);
        if let Ok(text) = rx.recv_timeout(Duration::from_millis(20)) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting lines were not written"
        );
    };
    let notice = text
        .lines()
        .find(|l| l.contains("log lines dropped: stderr was not taking them"))
        .unwrap_or_else(|| {
            panic!(
                "no line reports the dropped lines ({} bytes read)",
                text.len()
            )
        });
    assert!(notice.contains(" WARN "), "{notice}");
    // The lines that waited came out whole.
    let access = text.lines().filter(|l| l.contains("botbridge::access"));
    assert!(
        access.clone().count() > 3_000,
        "the megabyte that waited was written"
    );
    for line in access {
        assert!(
            line.starts_with("20") && line.ends_with("bytes_out=703"),
            "damaged: {line}"
        );
    }
}
