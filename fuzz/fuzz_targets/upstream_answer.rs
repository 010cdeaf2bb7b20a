//! A whole backend answer off a connection (interim answers, the head, then a body framed by
//! Content-Length, chunked encoding or the connection's end), read from an in-memory stream.
//!
//! Each input is read twice: arriving in one piece with a large size limit, and in pieces of 1 to 7
//! bytes with a 64-byte limit. How bytes arrive must not change what is read.
#![no_main]

use botbridge::upstream::fuzz_read_answer;
use libfuzzer_sys::fuzz_target;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

type Read = Result<(u16, Vec<u8>, bool), &'static str>;

/// Reads `data` as a backend's answer arriving `piece` bytes at a time, then the connection closes.
fn read(rt: &tokio::runtime::Runtime, data: &[u8], piece: usize, max: usize) -> Read {
    rt.block_on(async {
        let (mut backend, proxy_side) = tokio::io::duplex(piece);
        let bytes = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = backend.write_all(&bytes).await;
            let _ = backend.shutdown().await;
        });
        let mut stream: Stream = Box::new(proxy_side);
        let got = fuzz_read_answer(&mut stream, max).await;
        drop(stream);
        let _ = writer.await;
        got.map(|(e, reuse)| (e.status, e.body.to_vec(), reuse))
    })
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
}

fuzz_target!(|data: &[u8]| {
    RT.with(|rt| {
        let whole = read(rt, data, 64 * 1024, 1 << 20);
        let piecewise = read(rt, data, 1 + data.len() % 7, 64);
        match (&whole, &piecewise) {
            (Ok((status, body, reuse)), Ok((status2, body2, reuse2))) => {
                // Never an interim (1xx) answer; httparse also reads `000`–`099`, which no dialect
                // takes for a success.
                assert!(
                    !(100..200).contains(status) && *status < 1000,
                    "status {status}"
                );
                assert_eq!(
                    (status, body),
                    (status2, body2),
                    "the answer depends on how it arrived"
                );
                // Read whole, bytes after the answer are seen and stop reuse; read in pieces they
                // may not have arrived yet. Without any, both must agree.
                assert!(!reuse || *reuse2, "reusable only when read whole");
            }
            (Ok((_, body, _)), Err(e)) => {
                assert!(body.len() > 64 && *e == "too large", "read in pieces: {e}");
            }
            (Err(e), Ok(p)) => panic!("read whole: {e}, read in pieces: {p:?}"),
            (Err(_), Err(_)) => {}
        }
    });
});
