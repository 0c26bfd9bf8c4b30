//! A minimal WebSocket client (RFC 6455) on tokio: the HTTP/1.1 upgrade,
//! masked client frames, and a zero-copy reader of server frames. No
//! extensions, no subprotocols; the server's `Sec-WebSocket-Accept` is not
//! verified (only the `101` status), which is enough on loopback.
//!
//! Also a tiny HTTP/1.1 GET for `/health`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Frame opcodes.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest server message accepted (a `joined` frame of a big room with
/// its member list and history can be large; chat frames are small).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Longest time a connect plus upgrade may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the server is: a loopback socket address and its `Host` header.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

impl Target {
    /// Parses `http://host:port[/...]` (or `ws://`), refusing anything but
    /// loopback: this tool generates enough load to hurt a real host.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| format!("URL {url:?} must start with http:// (or ws://)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("bad IPv6 address in {url:?}"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port: u16 = match port {
            Some(p) => p.parse().map_err(|_| format!("bad port in {url:?}"))?,
            None => 80,
        };
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::from([127, 0, 0, 1])
        } else {
            host.parse()
                .map_err(|_| format!("host {host:?} in {url:?} is not an IP address"))?
        };
        if !ip.is_loopback() {
            return Err(format!(
                "refusing non-loopback URL {url:?}: chat-bench only loads servers on this machine (127.0.0.0/8 or ::1)"
            ));
        }
        let addr = SocketAddr::new(ip, port);
        Ok(Target {
            addr,
            host: addr.to_string(),
        })
    }
}

/// Opens a TCP connection, optionally from a given local address (to use
/// several 127.0.0.x sources when one runs out of ephemeral ports).
pub async fn tcp_connect(target: &Target, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if target.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A base64 (standard alphabet, padded) encoding; only for the 16-byte
/// handshake key.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A small, fast, non-cryptographic generator (xorshift64*) for masking
/// keys and handshake nonces; masking only has to be unpredictable to
/// intermediaries, and there are none on loopback.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Connects and upgrades to a WebSocket at `path`. Bytes the server sent
/// after its `101` headers stay in the reader's buffer.
pub async fn connect(
    target: &Target,
    path: &str,
    source: Option<IpAddr>,
    seed: u64,
) -> io::Result<(WsReader, WsWriter)> {
    let fut = async {
        let mut stream = tcp_connect(target, source).await?;
        let mut rng = Rng::new(seed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.host,
            base64(&nonce)
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let header_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "upgrade response headers too long",
                ));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed during the WebSocket upgrade",
                ));
            }
        };
        let status_line = buf[..header_end]
            .split(|&b| b == b'\r')
            .next()
            .unwrap_or(&[]);
        if !status_line.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other(format!(
                "WebSocket upgrade refused: {}",
                String::from_utf8_lossy(status_line)
            )));
        }
        buf.advance(header_end);
        let (rd, wr) = stream.into_split();
        Ok((
            WsReader {
                rd,
                buf,
                pos: 0,
                fragments: None,
                assembled: Vec::new(),
            },
            WsWriter {
                wr,
                rng,
                out: Vec::with_capacity(256),
            },
        ))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "WebSocket connect timed out",
            ))
        })
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    find_from(hay, needle, 0)
}

/// Where `needle` first occurs in `hay` at or after `from`. A first-byte
/// scan plus compare: plenty for frames of a few hundred bytes.
pub fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let off = hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)?;
        i += off;
        // A plain loop: short needles do not pay for a memcmp call.
        if hay[i + 1..i + needle.len()]
            .iter()
            .zip(rest)
            .all(|(a, b)| a == b)
        {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A protocol violation by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError(pub String);

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` when more bytes are
/// needed for the header itself. Server frames must not be masked and must
/// not use reserved bits (no extension was negotiated).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError("reserved bits set in a server frame".into()));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError("masked server frame".into()));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len > MAX_MESSAGE as u64 {
                return Err(WsError(format!("server frame of {len} bytes is too large")));
            }
            (10, len as usize)
        }
        n => (2, usize::from(n)),
    };
    if payload_len > MAX_MESSAGE {
        return Err(WsError(format!(
            "server frame of {payload_len} bytes is too large"
        )));
    }
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || payload_len > 125 {
                return Err(WsError("bad control frame".into()));
            }
        }
        other => return Err(WsError(format!("unknown opcode {other}"))),
    }
    Ok(Some(FrameHeader {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

/// XORs `data` with the 4-byte `key`, as client frames require.
pub fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        c[0] ^= key[0];
        c[1] ^= key[1];
        c[2] ^= key[2];
        c[3] ^= key[3];
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// Appends one final, masked client frame to `out`.
pub fn encode_frame(opcode: u8, payload: &[u8], key: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key);
}

/// One complete message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A text message; read it with [`WsReader::text`].
    Text(Payload),
    /// A binary message (the contract never sends one).
    Binary,
    /// A ping whose payload must be echoed in a pong.
    Ping(Payload),
    Pong,
    /// The server closed, with its close code if any.
    Close(Option<u16>),
}

/// Where a message's bytes are: in the read buffer, or reassembled from
/// fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Buffer { start: usize, end: usize },
    Assembled,
}

/// The reading half: a buffer of received bytes parsed in place.
pub struct WsReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    /// Bytes of `buf` already handed out as messages.
    pos: usize,
    /// A fragmented message being reassembled (opcode, bytes).
    fragments: Option<(u8, Vec<u8>)>,
    assembled: Vec<u8>,
}

impl WsReader {
    /// Reads more bytes from the socket (dropping what was consumed);
    /// `Ok(0)` at end of stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.advance(self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    /// The next complete message in the buffer, if any.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, WsError> {
        loop {
            let avail = &self.buf[self.pos..];
            let Some(h) = parse_header(avail)? else {
                return Ok(None);
            };
            let total = h.header_len + h.payload_len;
            if avail.len() < total {
                return Ok(None);
            }
            let start = self.pos + h.header_len;
            let end = start + h.payload_len;
            self.pos += total;
            let payload = Payload::Buffer { start, end };
            match h.opcode {
                OP_PING => return Ok(Some(Msg::Ping(payload))),
                OP_PONG => return Ok(Some(Msg::Pong)),
                OP_CLOSE => {
                    let code = (end - start >= 2)
                        .then(|| u16::from_be_bytes([self.buf[start], self.buf[start + 1]]));
                    return Ok(Some(Msg::Close(code)));
                }
                OP_TEXT | OP_BINARY if h.fin => {
                    if self.fragments.is_some() {
                        return Err(WsError("new message inside a fragmented one".into()));
                    }
                    return Ok(Some(if h.opcode == OP_TEXT {
                        Msg::Text(payload)
                    } else {
                        Msg::Binary
                    }));
                }
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(WsError("new message inside a fragmented one".into()));
                    }
                    self.fragments = Some((h.opcode, self.buf[start..end].to_vec()));
                }
                _ => {
                    // Continuation.
                    let Some((opcode, mut bytes)) = self.fragments.take() else {
                        return Err(WsError("continuation without a first frame".into()));
                    };
                    if bytes.len() + (end - start) > MAX_MESSAGE {
                        return Err(WsError("fragmented message too large".into()));
                    }
                    bytes.extend_from_slice(&self.buf[start..end]);
                    if !h.fin {
                        self.fragments = Some((opcode, bytes));
                        continue;
                    }
                    if opcode == OP_BINARY {
                        return Ok(Some(Msg::Binary));
                    }
                    self.assembled = bytes;
                    return Ok(Some(Msg::Text(Payload::Assembled)));
                }
            }
        }
    }

    /// The bytes of a message returned by [`next_msg`](Self::next_msg)
    /// (valid until the next `fill`).
    pub fn bytes(&self, p: Payload) -> &[u8] {
        match p {
            Payload::Buffer { start, end } => &self.buf[start..end],
            Payload::Assembled => &self.assembled,
        }
    }
}

/// The writing half: encodes masked frames into a buffer written with one
/// `write_all`, so a batch of chats costs one syscall.
pub struct WsWriter {
    wr: OwnedWriteHalf,
    rng: Rng,
    out: Vec<u8>,
}

impl WsWriter {
    fn key(&mut self) -> [u8; 4] {
        (self.rng.next_u64() as u32).to_ne_bytes()
    }

    /// Queues a text frame (sent by [`flush`](Self::flush)).
    pub fn queue_text(&mut self, payload: &[u8]) {
        let key = self.key();
        encode_frame(OP_TEXT, payload, key, &mut self.out);
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.wr.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Sends one text frame now.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.queue_text(payload);
        self.flush().await
    }

    /// Answers a ping.
    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        let key = self.key();
        encode_frame(OP_PONG, payload, key, &mut self.out);
        self.flush().await
    }

    /// Sends a close frame with `code`.
    pub async fn send_close(&mut self, code: u16) -> io::Result<()> {
        let key = self.key();
        encode_frame(OP_CLOSE, &code.to_be_bytes(), key, &mut self.out);
        self.flush().await
    }
}

/// `GET path` over a fresh connection: status and body.
pub async fn http_get(target: &Target, path: &str) -> io::Result<(u16, Vec<u8>)> {
    let fut = async {
        let mut stream = tcp_connect(target, None).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            target.host
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).await?;
        let header_end = find(&response, b"\r\n\r\n")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP headers"))?;
        let status = std::str::from_utf8(&response[..header_end])
            .ok()
            .and_then(|h| h.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad HTTP status line"))?;
        let headers = String::from_utf8_lossy(&response[..header_end]).to_ascii_lowercase();
        let mut body = response[header_end + 4..].to_vec();
        if headers.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Ok((status, body))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP GET timed out",
            ))
        })
}

/// Decodes a chunked body (best effort: stops at the first malformed chunk).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|&s| s > 0) else {
            break;
        };
        let start = line_end + 2;
        let Some(chunk) = body.get(start..start + size) else {
            break;
        };
        out.extend_from_slice(chunk);
        body = body.get(start + size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unmasks a client frame the way a server would.
    fn decode_client(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[0] & 0x80, 0x80, "FIN");
        assert_eq!(frame[1] & 0x80, 0x80, "masked");
        let (len, mut i) = match frame[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        let key = [frame[i], frame[i + 1], frame[i + 2], frame[i + 3]];
        i += 4;
        assert_eq!(frame.len(), i + len);
        let mut payload = frame[i..].to_vec();
        apply_mask(&mut payload, key);
        (frame[0] & 0x0F, payload)
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        for len in [0usize, 1, 5, 125, 126, 127, 1000, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(OP_TEXT, &payload, [0xA1, 0x02, 0xF3, 0x44], &mut out);
            let (op, got) = decode_client(&out);
            assert_eq!(op, OP_TEXT);
            assert_eq!(got, payload, "len {len}");
            if len > 4 {
                assert_ne!(&out[out.len() - len..], &payload[..], "payload is masked");
            }
        }
    }

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 65_535 {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn server_headers_parse_all_length_forms() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let f = server_frame(true, OP_TEXT, &vec![b'x'; len]);
            let h = parse_header(&f).unwrap().unwrap();
            assert_eq!(h.payload_len, len);
            assert_eq!(h.header_len + len, f.len());
            assert!(h.fin);
            // Any strict prefix of the header asks for more bytes.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn bad_server_frames_are_rejected() {
        assert!(parse_header(&[0x81, 0x85, 0, 0, 0, 0]).is_err(), "masked");
        assert!(parse_header(&[0xC1, 0x00]).is_err(), "rsv1");
        assert!(parse_header(&[0x83, 0x00]).is_err(), "opcode 3");
        assert!(parse_header(&[0x09, 0x00]).is_err(), "fragmented ping");
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(parse_header(&big).is_err(), "huge");
    }

    #[test]
    fn find_locates_needles() {
        let hay = br#"{"type":"message","message":{"id":42,"roomId":7}}"#;
        assert_eq!(find(hay, b"\"type\":\""), Some(1));
        assert_eq!(find(hay, b"\"id\":"), Some(29));
        assert_eq!(find_from(hay, b"\"id\":", 30), None);
        assert_eq!(find(hay, b"}}"), Some(hay.len() - 2));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaab", b"aab"), Some(1));
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0u8; 16]).len(), 24);
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        let t = Target::parse("http://127.0.0.1:3000").unwrap();
        assert_eq!(t.addr.port(), 3000);
        assert_eq!(t.host, "127.0.0.1:3000");
        assert!(Target::parse("http://localhost:8080/").is_ok());
        assert!(Target::parse("ws://127.0.0.5:1/ws").is_ok());
        assert!(Target::parse("http://[::1]:3000").is_ok());
        assert!(Target::parse("http://10.0.0.1:3000").is_err());
        assert!(Target::parse("http://example.com:3000").is_err());
        assert!(Target::parse("https://127.0.0.1:3000").is_err());
        assert!(Target::parse("http://127.0.0.1:port").is_err());
    }

    /// Frames over a real socket pair: fragments are reassembled, control
    /// frames interleave, and partial frames wait for more bytes.
    #[tokio::test]
    async fn reader_reassembles_and_splits() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).await.unwrap();
                req.extend_from_slice(&b[..n]);
            }
            let mut out =
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
            out.extend(server_frame(true, OP_TEXT, b"hello"));
            out.extend(server_frame(false, OP_TEXT, b"ab"));
            out.extend(server_frame(true, OP_PING, b"p"));
            out.extend(server_frame(true, OP_CONTINUATION, b"cd"));
            let tail = server_frame(true, OP_CLOSE, &1000u16.to_be_bytes());
            out.extend_from_slice(&tail[..1]);
            s.write_all(&out).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.write_all(&tail[1..]).await.unwrap();
            // The client's text frame arrives masked.
            let mut got = Vec::new();
            while got.len() < 2 + 4 + 3 {
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
            }
            decode_client(&got)
        });
        let target = Target::parse(&format!("http://{addr}")).unwrap();
        let (mut rd, mut wr) = connect(&target, "/ws", None, 7).await.unwrap();
        wr.send_text(b"hey").await.unwrap();
        let mut seen = Vec::new();
        while seen.last() != Some(&"close".to_string()) {
            if rd.fill().await.unwrap() == 0 {
                break;
            }
            while let Some(m) = rd.next_msg().unwrap() {
                seen.push(match m {
                    Msg::Text(p) => String::from_utf8(rd.bytes(p).to_vec()).unwrap(),
                    Msg::Ping(p) => format!("ping:{}", String::from_utf8_lossy(rd.bytes(p))),
                    Msg::Close(code) => {
                        assert_eq!(code, Some(1000));
                        "close".into()
                    }
                    other => format!("{other:?}"),
                });
            }
        }
        assert_eq!(seen, ["hello", "ping:p", "abcd", "close"]);
        assert_eq!(server.await.unwrap(), (OP_TEXT, b"hey".to_vec()));
    }
}
