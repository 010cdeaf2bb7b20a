//! An open-loop load generator for bench/overload.py: sends POSTs at a fixed rate whatever the
//! answers take, and measures each answer's latency from the moment it was *due* to be sent.
//!
//! Each request due takes an idle keep-alive connection, or opens a new one if none is idle (up to
//! MAX_CONNECTIONS in flight), so a request never waits behind its own connection's previous answer:
//! what its latency counts is the server's queue (plus a new connection's connect, and up to 1 ms of
//! this generator's timer), not the generator's. (A generator with a fixed set
//! of connections, each sending its next request only after the last answer, counts that wait too:
//! past saturation it measures its own backlog, which grows without bound whatever the server does.)
//! A request due when MAX_CONNECTIONS are all in flight is counted as `not_sent`. Prints one JSON
//! line: requests sent, answers by status, and p50/p99/max latency of the 2xx answers and of the
//! others.
//!
//! `cargo run --release --example open_loop -- ADDR PATH RATE SECONDS MAX_CONNECTIONS BODY [HEADER: VALUE]...`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Seen {
    sent: u64,
    not_sent: u64,
    by_status: BTreeMap<u16, u64>,
    ok_us: Vec<u64>,
    other_us: Vec<u64>,
    errors: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 6 {
        eprintln!(
            "usage: open_loop ADDR PATH RATE SECONDS MAX_CONNECTIONS BODY [HEADER: VALUE]..."
        );
        std::process::exit(2);
    }
    let addr: SocketAddr = args[0].parse().expect("ADDR");
    let rate: f64 = args[2].parse().expect("RATE");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let connections: usize = args[4].parse().expect("MAX_CONNECTIONS");
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        args[1],
        args[5].len()
    );
    for h in &args[6..] {
        head.push_str(h);
        head.push_str("\r\n");
    }
    let request = format!("{head}\r\n{}", args[5]).into_bytes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let began = Instant::now();
    let seen = rt.block_on(run(addr, request, rate, seconds, connections));
    // Answers/s over the whole run, including the time the last answers took past the schedule.
    let elapsed = began.elapsed().as_secs_f64() - 0.2;
    print_json(&seen, elapsed);
}

/// The connections not in use, and how many are in flight.
#[derive(Default)]
struct Pool {
    idle: Vec<TcpStream>,
    busy: usize,
}

async fn run(addr: SocketAddr, request: Vec<u8>, rate: f64, seconds: f64, max: usize) -> Seen {
    let start = Instant::now() + Duration::from_millis(200);
    let every = Duration::from_secs_f64(1.0 / rate);
    let end = start + Duration::from_secs_f64(seconds);
    let request = Arc::new(request);
    let pool = Arc::new(Mutex::new(Pool::default()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    let mut due = start;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        let idle = {
            let mut p = pool.lock().unwrap();
            if p.busy >= max {
                None
            } else {
                p.busy += 1;
                Some(p.idle.pop())
            }
        };
        match idle {
            None => seen.lock().unwrap().not_sent += 1,
            Some(stream) => {
                let (request, pool, seen) = (request.clone(), pool.clone(), seen.clone());
                tasks.push(tokio::spawn(one(addr, stream, request, due, pool, seen)));
            }
        }
        due += every;
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
}

/// One request due at `due`, on `stream` or a new connection; the connection goes back to the pool
/// if it stays open.
async fn one(
    addr: SocketAddr,
    stream: Option<TcpStream>,
    request: Arc<Vec<u8>>,
    due: Instant,
    pool: Arc<Mutex<Pool>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let stream = match stream {
        Some(s) => Some(s),
        None => TcpStream::connect(addr).await.ok().inspect(|s| {
            let _ = s.set_nodelay(true);
        }),
    };
    let (answer, stream) = match stream {
        Some(mut s) => (exchange(&mut s, &request, &mut buf).await, Some(s)),
        None => (None, None),
    };
    let took = due.elapsed().as_micros() as u64;
    {
        let mut seen = seen.lock().unwrap();
        seen.sent += 1;
        match answer {
            Some((status, _)) => {
                *seen.by_status.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    seen.ok_us.push(took);
                } else {
                    seen.other_us.push(took);
                }
            }
            None => seen.errors += 1,
        }
    }
    let mut p = pool.lock().unwrap();
    p.busy -= 1;
    if let (Some(s), Some((_, true))) = (stream, answer) {
        p.idle.push(s);
    }
}

/// Writes the request and reads one answer: its status and whether the connection stays open.
async fn exchange(s: &mut TcpStream, request: &[u8], buf: &mut [u8]) -> Option<(u16, bool)> {
    s.write_all(request).await.ok()?;
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            if have == buf.len() {
                return None;
            }
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).ok()?.to_ascii_lowercase();
        let status: u16 = head.get(9..12)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let keep = !head.contains("connection: close");
        let mut body = have - (end + 4);
        while body < length {
            let n = s.read(buf).await.ok()?;
            if n == 0 {
                return None;
            }
            body += n;
        }
        return Some((status, keep));
    }
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i] as f64 / 1000.0
}

fn print_json(seen: &Seen, elapsed: f64) {
    let mut ok = seen.ok_us.clone();
    let mut other = seen.other_us.clone();
    let statuses: Vec<String> = (seen.by_status.iter())
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    println!(
        "{{\"sent\": {}, \"not_sent\": {}, \"errors\": {}, \"elapsed_s\": {:.2}, \"statuses\": {{{}}}, \"goodput_per_s\": {:.1}, \
         \"ok_p50_ms\": {:.2}, \"ok_p99_ms\": {:.2}, \"ok_max_ms\": {:.2}, \"other_p99_ms\": {:.2}}}",
        seen.sent,
        seen.not_sent,
        seen.errors,
        elapsed,
        statuses.join(", "),
        ok.len() as f64 / elapsed,
        pct(&mut ok, 0.50),
        pct(&mut ok, 0.99),
        pct(&mut ok, 1.0),
        pct(&mut other, 0.99),
    )
}
