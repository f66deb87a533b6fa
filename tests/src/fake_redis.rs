//! A stand-in for a Redis server of another version: it answers `INFO` with the
//! `redis_version` it was given, `PING` with `PONG` and every other command with `OK`. These
//! machines have no Redis older than 7 to test the start-up version check against.

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A fake Redis on a free port; stops accepting when dropped.
pub struct FakeRedis {
    pub port: u16,
    accept: JoinHandle<()>,
}

impl FakeRedis {
    /// Starts one that says it is Redis `version`.
    pub async fn start(version: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let info = format!("# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n");
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, info.clone()));
            }
        });
        Ok(Self { port, accept })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeRedis {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Answers the commands of one connection until the client closes it.
async fn serve(mut stream: TcpStream, info: String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((name, used)) = command(&buffer) {
            buffer.drain(..used);
            let reply = match name.to_ascii_uppercase().as_str() {
                "INFO" => format!("${}\r\n{info}\r\n", info.len()),
                "PING" => "+PONG\r\n".to_owned(),
                _ => "+OK\r\n".to_owned(),
            };
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The name of the first complete command (a RESP array of bulk strings) in `buffer`, and how
/// many bytes it takes; `None` until it is complete.
fn command(buffer: &[u8]) -> Option<(String, usize)> {
    let (count, mut at) = line(buffer, 0, b'*')?;
    let mut name = String::new();
    for i in 0..count {
        let (len, start) = line(buffer, at, b'$')?;
        let end = start + len;
        if buffer.len() < end + 2 {
            return None;
        }
        if i == 0 {
            name = String::from_utf8_lossy(&buffer[start..end]).into_owned();
        }
        at = end + 2;
    }
    Some((name, at))
}

/// A `<marker><number>\r\n` line at `at`: the number and where the next line starts.
fn line(buffer: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
    if *buffer.get(at)? != marker {
        return None;
    }
    let end = at + buffer[at..].windows(2).position(|w| w == b"\r\n")?;
    let number = std::str::from_utf8(&buffer[at + 1..end])
        .ok()?
        .parse()
        .ok()?;
    Some((number, end + 2))
}
