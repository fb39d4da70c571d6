//! The "tokio-floor" contestant of the benchmark suite (`bench/run.sh`): what tokio alone costs.
//! It does what `bench/c/ceiling.c` does (no milter library: reads frames, answers OPTNEG with
//! fixed bits, CONTINUE to every command that wants a reply, ADD_HEADER `X-Bench: 1` then CONTINUE
//! at end of message, one write per turn), but as a Rust server usually does it: one tokio task
//! per connection on a one-thread runtime, and a read timeout, as every server needs (a `Sleep`
//! per connection, re-armed only when it rings; so the timeout is between one and two periods).
//!
//! It is not a milter library and not an alternative to one: it shows how much of milterkit's
//! cost per message, and of its memory per idle connection, is the runtime's.
//!
//! Usage: `tokio_floor [--no-timeout] SPEC` (`unix:/path` or `inet:PORT@HOST`); it stops on
//! SIGINT or SIGTERM.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The read timeout: libmilter's default, as milterkit's.
const READ_TIMEOUT: Duration = Duration::from_secs(7_210);

/// Largest frame accepted (libmilter's largest negotiable size).
const MAX_FRAME: usize = 1 << 20;

fn main() -> io::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let timeout = !args.iter().any(|a| a == "--no-timeout");
    args.retain(|a| a != "--no-timeout");
    let spec = args.pop().unwrap_or_else(|| "inet:7357@127.0.0.1".into());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(spec, timeout))
}

async fn serve(spec: String, timeout: bool) -> io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    if let Some(path) = spec.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(connection(stream, timeout));
                    }
                }
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    let rest = spec.strip_prefix("inet:").unwrap_or(&spec);
    let (port, host) = rest.split_once('@').unwrap_or((rest, "127.0.0.1"));
    let listener = tokio::net::TcpListener::bind((host, port.parse().unwrap_or(7357))).await?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, timeout));
                }
            }
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Serves one connection until QUIT, end of stream, an error or the read timeout.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, timeout: bool) {
    let mut input: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut timer = std::pin::pin!(tokio::time::sleep(READ_TIMEOUT));
    let mut active = false;
    loop {
        let read = if timeout {
            tokio::select! {
                r = stream.read_buf(&mut input) => r,
                _ = timer.as_mut() => {
                    if !active {
                        return; // quiet for a whole period
                    }
                    active = false;
                    timer.as_mut().reset(Instant::now() + READ_TIMEOUT);
                    continue;
                }
            }
        } else {
            stream.read_buf(&mut input).await
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => active = true,
        }
        let (used, quit) = answer(&input, &mut out);
        input.drain(..used);
        if input.len() > MAX_FRAME + 4 {
            return;
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if quit {
            return;
        }
    }
}

/// Answers every whole frame in `input` into `out`: the bytes used, and whether QUIT came.
fn answer(input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut at = 0;
    while let Some(prefix) = input.get(at..at + 4) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let Some(&command) = input.get(at + 4).filter(|_| input.len() - at - 4 >= len) else {
            break;
        };
        at += 4 + len;
        match command {
            // Version 6, SMFIF_ADDHDRS, no protocol flags: every stage is sent and answered.
            b'O' => out.extend_from_slice(&[0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0]),
            b'C' | b'H' | b'M' | b'R' | b'T' | b'L' | b'N' | b'B' | b'U' => {
                out.extend_from_slice(&[0, 0, 0, 1, b'c'])
            }
            b'E' => {
                let header = b"X-Bench\x001\x00";
                out.extend_from_slice(&(header.len() as u32 + 1).to_be_bytes());
                out.push(b'h');
                out.extend_from_slice(header);
                out.extend_from_slice(&[0, 0, 0, 1, b'c']);
            }
            b'Q' => return (at, true),
            _ => {} // MACRO, ABORT, QUIT_NC: no reply
        }
    }
    (at, false)
}
