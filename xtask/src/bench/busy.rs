//! The bench's "typical service": an HTTP/1.1 keep-alive server that spends about 100 µs of CPU
//! on every request before it answers, where nginx's `return 200` spends a few. The agent's cost
//! per request is the same for both, so this one shows the throughput a more typical service
//! loses.
//!
//! It is the xtask binary itself, started in the app's pod as `xtask bench --serve-busy <port>`
//! and pinned to the server core like nginx. One thread per connection (std only). A request's
//! head is read up to its blank line, a `Content-Length` body is read and discarded, then the
//! thread busy-loops for [`CPU_PER_REQUEST`] and answers `200 OK` with the same body as nginx.
//! The loop reads the thread's own CPU clock (`CLOCK_THREAD_CPUTIME_ID`, monotonic per thread),
//! not the wall clock: with 64 connection threads on one core a burning thread can be preempted,
//! and on a wall clock it would then count another thread's time as its own and burn less.

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use podmeter_tests::{ChildGuard, Pod};

use super::servers::{self, BODY};

/// The busy app listens here, on every address of its pod.
pub const PORT: u16 = 8081;
/// CPU time spent on each request before the answer.
pub const CPU_PER_REQUEST: Duration = Duration::from_micros(100);
/// A request head larger than this is refused (431) and the connection closed.
const MAX_HEAD: usize = 64 * 1024;

/// The running server (in its pod, on the server core); dropping it stops it.
#[derive(Debug)]
pub struct BusyServer {
    _process: ChildGuard,
}

impl BusyServer {
    pub fn start(pod: &Pod<'_>, cpu: usize) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the xtask binary")?;
        let mut command = pod.command("taskset")?;
        command.args(["-c", &cpu.to_string()]).arg(exe).args([
            "bench",
            "--serve-busy",
            &PORT.to_string(),
        ]);
        let label = format!("busy server {}/{}", pod.namespace(), pod.name());
        let mut process = ChildGuard::spawn_forwarding(command, label)?;
        servers::wait_listening(&mut process, SocketAddr::from((pod.ip(), PORT)))
            .context("the bench's busy server did not come up")?;
        Ok(Self { _process: process })
    }
}

/// Serves until killed: the process body of `xtask bench --serve-busy <port>`.
pub fn serve(port: u16, burn: Duration) -> Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
        .with_context(|| format!("binding port {port}"))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            // A peer that resets or closes mid-request ends only its own connection.
            let _ = connection(stream, burn);
        });
    }
    Ok(())
}

/// The complete head of one request.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    /// Bytes up to and including the blank line.
    len: usize,
    content_length: u64,
    /// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
    close: bool,
}

/// Why a head is refused: the status to answer before closing.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    BadRequest,
    /// `Transfer-Encoding` (chunked bodies): not needed by the bench's load.
    NotImplemented,
    HeadTooLarge,
}

/// The head at the start of `buf`, `None` while its blank line has not arrived.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Refusal> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(Refusal::HeadTooLarge)
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| Refusal::BadRequest)?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Refusal::BadRequest),
    };
    let mut content_length = 0;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or(Refusal::BadRequest)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| Refusal::BadRequest)?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::NotImplemented);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    Ok(Some(Head {
        len: end + 4,
        content_length,
        close,
    }))
}

fn response(close: bool) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{BODY}",
        BODY.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
}

fn refusal(refusal: &Refusal) -> &'static [u8] {
    match refusal {
        Refusal::BadRequest => {
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Refusal::NotImplemented => {
            b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Refusal::HeadTooLarge => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
    }
}

/// One keep-alive connection: request after request until the peer closes or asks to.
fn connection(mut stream: TcpStream, burn: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (keep_alive, close) = (response(false), response(true));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head = match parse_head(&buf) {
            Ok(Some(head)) => head,
            Ok(None) => {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(why) => {
                stream.write_all(refusal(&why))?;
                return Ok(());
            }
        };
        // The body, read and discarded; what follows it is the next request.
        let mut body_left = head.content_length;
        let buffered = (buf.len() - head.len).min(usize::try_from(body_left).unwrap_or(usize::MAX));
        buf.drain(..head.len + buffered);
        body_left -= buffered as u64;
        while body_left > 0 {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            let body = n.min(usize::try_from(body_left).unwrap_or(usize::MAX));
            body_left -= body as u64;
            buf.extend_from_slice(&chunk[body..n]);
        }
        burn_cpu(burn);
        stream.write_all(if head.close { &close } else { &keep_alive }.as_bytes())?;
        if head.close {
            return Ok(());
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Spins until this thread has spent `cpu` more CPU time.
fn burn_cpu(cpu: Duration) {
    let until = thread_cpu_time() + cpu;
    while thread_cpu_time() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed_with_their_body_length_and_connection() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next";
        assert_eq!(
            parse_head(get),
            Ok(Some(Head {
                len: 27,
                content_length: 0,
                close: false
            }))
        );
        let post = b"POST /a HTTP/1.1\r\ncontent-length: 5\r\nConnection: close\r\n\r\nhello";
        let head = parse_head(post).unwrap().unwrap();
        assert_eq!((head.content_length, head.close), (5, true));
        assert_eq!(&post[head.len..], b"hello");
        let old = parse_head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(old.close);
        let kept = parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(!kept.unwrap().unwrap().close);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Refusal::NotImplemented)
        );
        assert_eq!(parse_head(b"GET /\r\n\r\n"), Err(Refusal::BadRequest));
        assert_eq!(
            parse_head(&vec![b'a'; MAX_HEAD + 1]),
            Err(Refusal::HeadTooLarge)
        );
    }

    #[test]
    fn a_keep_alive_connection_answers_each_request_after_burning_cpu() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            connection(stream, Duration::from_micros(200)).unwrap();
        });
        let mut client = TcpStream::connect(addr).unwrap();
        // A body split across writes, then two requests in one write, the last one closing.
        client
            .write_all(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n01234")
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        client
            .write_all(b"56789GET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answers = String::new();
        client.read_to_string(&mut answers).unwrap();
        server.join().unwrap();
        assert_eq!(answers.matches("HTTP/1.1 200 OK\r\n").count(), 3);
        assert_eq!(answers.matches(BODY).count(), 3);
        assert!(answers.contains("Content-Length: 26\r\n"));
        assert!(answers.ends_with(&format!("Connection: close\r\n\r\n{BODY}")));
    }

    #[test]
    fn the_burn_spends_cpu_time() {
        let before = thread_cpu_time();
        burn_cpu(Duration::from_millis(2));
        assert!(thread_cpu_time() - before >= Duration::from_millis(2));
    }
}
