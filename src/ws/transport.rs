//! The socket under one WebSocket connection, driven from inside its actor.
//!
//! Why not actix-http's WebSocket stream: it keeps the HTTP/1 dispatcher
//! alive for the socket's whole life, with two fixed 8 KiB buffers, which
//! was 76% of an idle connection's memory. Here a connection holds no
//! buffer while idle: the read buffer exists only while a frame is
//! partly received, and outgoing frames are shared `Bytes` (a room encodes
//! a batch once for all its members) queued by reference and written with
//! one vectored write.
//!
//! Invariants, enforced here:
//! - **Bounded memory per connection.** Frames waiting beyond what the
//!   kernel's socket buffer holds are capped at `max_queued_bytes`; past
//!   that the client is a slow consumer, closed with 1008, and its queue is
//!   dropped (all but a frame already half written, so the close frame
//!   still lands on a frame boundary).
//! - **Frames leave in the order they were queued, whole.** One writer, one
//!   FIFO queue; `written` tracks how much of the front frame is out.
//! - **A close is delivered before the socket goes.** After a close frame is
//!   queued nothing else is accepted; the socket is shut for writing once
//!   the queue is flushed, and dropped when the client has closed too, or
//!   after the client timeout at the latest (a slow consumer's close waits
//!   behind what the kernel already buffers). Dropping it earlier with
//!   unread input would make the kernel reset the connection and lose the
//!   close.
//! - **A client's close is answered once the connection is released.** The
//!   answer waits (phase `Releasing`, nothing else accepted) until the
//!   actor's release future ends (the session: its leave recorded, bounded
//!   by 2 × `STORE_TIMEOUT_MS`), so a client that has read it finds its
//!   nickname free on every process.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::frame::{self, CloseCode, FrameError, InboundFrame, OpCode};

/// Reads done in one poll before yielding, so one chatty client cannot
/// starve the other connections of its thread.
const READS_PER_POLL: usize = 8;
/// Room made in the read buffer for each read: a typical client frame is a
/// few hundred bytes.
const READ_CHUNK: usize = 1024;
/// Frames handed to one vectored write.
const WRITE_BATCH: usize = 64;

/// An actor that owns a [`Transport`]: the pumps call back into it.
pub trait WsActor: Actor<Context = Context<Self>> {
    /// The connection's transport.
    fn transport(&mut self) -> &mut Transport;
    /// One whole text message from the client (fragments joined, UTF-8
    /// checked).
    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>);
    /// The connection is ending (the client closed it, broke the protocol,
    /// timed out or read too slowly): release what it holds. Called at most
    /// once, and not when the actor itself called [`Transport::close`].
    /// Returns, when releasing takes a while, a future that ends once it is
    /// done (the actor bounds it): a client's close is answered only then.
    fn on_closing(&mut self, ctx: &mut Context<Self>) -> Option<Released>;
}

/// Ends once what a closing connection held is released.
pub type Released = Pin<Box<dyn std::future::Future<Output = ()>>>;

/// How long a connection failed for a flood stays open for its close frame
/// to be read (it is not read from any more meanwhile).
const FAILED_LINGER: Duration = Duration::from_secs(2);

/// Limits and timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Largest frame, and largest message once fragments are joined.
    pub max_message_bytes: usize,
    /// Bytes that may wait for a client that is not reading.
    pub max_queued_bytes: usize,
    /// Silence after which the client is considered gone; also the longest
    /// a closing connection waits for its close frame to be read.
    pub client_timeout: Duration,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// The client sent its close; ours, the answer, waits until the actor
    /// has released what the connection held. Nothing more is accepted.
    Releasing,
    /// Our close frame is queued; nothing more is accepted.
    Closing,
    /// Our close frame is written and the socket shut for writing.
    WriteShut,
}

/// One connection's socket and queues.
pub struct Transport {
    stream: TcpStream,
    limits: TransportLimits,
    /// Bytes of a frame not yet complete; empty (and unallocated) between
    /// frames.
    inbuf: BytesMut,
    /// A fragmented text message being joined.
    fragments: Option<BytesMut>,
    /// Frames to write, oldest first; `written` bytes of the front one are
    /// already out.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    written: usize,
    /// Set while the writer is parked on an empty queue.
    writer: Option<Waker>,
    phase: Phase,
    /// The client sent its close frame or shut its side.
    peer_closed: bool,
    /// The client's bytes stopped being valid frames: what follows is read
    /// (to notice the client going) but not parsed any more.
    input_broken: bool,
    /// The connection was failed for what the client did (`fail`): its
    /// input is not even read any more, so a flood costs nothing and is
    /// held back by TCP flow control until the connection is dropped.
    deaf: bool,
    last_heard: Instant,
}

impl Transport {
    /// Wraps an upgraded socket; `leftover` is input that arrived with the
    /// handshake.
    pub fn new(stream: TcpStream, leftover: &[u8], limits: TransportLimits) -> Self {
        Transport {
            stream,
            limits,
            inbuf: BytesMut::from(leftover),
            fragments: None,
            queue: VecDeque::new(),
            queued_bytes: 0,
            written: 0,
            writer: None,
            phase: Phase::Open,
            peer_closed: false,
            input_broken: false,
            deaf: false,
            last_heard: Instant::now(),
        }
    }

    /// Starts reading and writing; call from the actor's `started`.
    pub fn start<A: WsActor>(ctx: &mut Context<A>) {
        ctx.spawn(ReadPump);
        ctx.spawn(WritePump);
    }

    /// One heartbeat tick: a client silent for longer than the timeout is
    /// dropped, any other gets a ping. The ticks come from outside (one
    /// ticker per process, see `OpenSessions`), so an idle connection costs
    /// no timer of its own.
    pub fn heartbeat<A: WsActor>(act: &mut A, ctx: &mut Context<A>) {
        let t = act.transport();
        if t.phase != Phase::Open {
            return;
        }
        if t.last_heard.elapsed() > t.limits.client_timeout {
            log::debug!("heartbeat timeout");
            let _ = act.on_closing(ctx);
            ctx.stop();
        } else if !t.offer(frame::control(OpCode::Ping, b"")) {
            evicted(act, ctx);
        }
    }

    /// Whether the connection is open (not closing): frames a client sends
    /// after the server started the close are not acted on.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Queues wire bytes (one or more whole frames). Returns `false` when
    /// the client is too far behind: the connection is then closing with
    /// 1008, and the caller should release what the connection holds.
    pub fn send<A: Actor<Context = Context<A>>>(
        &mut self,
        wire: Bytes,
        ctx: &mut Context<A>,
    ) -> bool {
        if !self.offer(wire) {
            self.stop_after_linger(ctx);
            return false;
        }
        true
    }

    /// [`Transport::send`] for a message handler, on the hot path of
    /// fan-out: the writer is not woken, because actix polls an actor's
    /// spawned futures (the writer among them) right after it has drained
    /// the actor's mailbox, in the same pass. So a burst of batches in the
    /// mailbox goes out in one vectored write, with no extra wake-up. Call
    /// it only from a `Handler`: elsewhere the writer may already have been
    /// polled in this pass, and only [`Transport::send`] wakes it.
    pub fn send_from_handler<A: Actor<Context = Context<A>>>(
        &mut self,
        wire: Bytes,
        ctx: &mut Context<A>,
    ) -> bool {
        let parked = self.writer.take();
        let sent = self.send(wire, ctx);
        if self.writer.is_none() {
            self.writer = parked;
        }
        sent
    }

    /// [`Transport::send`] without the timer: `false` means the queue was
    /// full and the close frame has taken its place.
    fn offer(&mut self, wire: Bytes) -> bool {
        if self.phase != Phase::Open {
            return true;
        }
        // The bound is on what the kernel would not take: before judging,
        // offer the socket what is queued (batches queued in one pass over
        // the mailbox have not been written yet). One frame bigger than the
        // bound still goes to a client that keeps up (a `joined` with a long
        // history, say).
        let over = |t: &Self| t.queued_bytes + wire.len() > t.limits.max_queued_bytes;
        if over(self) {
            self.write_now();
        }
        if over(self) && !self.queue.is_empty() {
            self.drop_unsent();
            self.queue_close(CloseCode::Policy, "slow consumer: not reading fast enough");
            return false;
        }
        self.push(wire);
        true
    }

    /// Fails the connection for what the client did (a flood): the close
    /// frame goes out, nothing the client sends from now on is read, and
    /// the connection is dropped `FAILED_LINGER` later (time enough to read
    /// the close frame), instead of waiting for the client's close.
    pub fn fail<A: Actor<Context = Context<A>>>(
        &mut self,
        code: CloseCode,
        reason: &str,
        ctx: &mut Context<A>,
    ) {
        self.deaf = true;
        self.inbuf.clear();
        if self.phase == Phase::Open {
            self.queue_close(code, reason);
        }
        ctx.run_later(FAILED_LINGER.min(self.limits.client_timeout), |_, ctx| {
            ctx.stop()
        });
    }

    /// Sends a close frame and ends the connection once it is delivered.
    pub fn close<A: Actor<Context = Context<A>>>(
        &mut self,
        code: CloseCode,
        reason: &str,
        ctx: &mut Context<A>,
    ) {
        if self.phase == Phase::Open {
            self.queue_close(code, reason);
        }
        self.stop_after_linger(ctx);
    }

    /// The deadline of a closing connection: stopped then even if its close
    /// frame is still unread.
    fn stop_after_linger<A: Actor<Context = Context<A>>>(&self, ctx: &mut Context<A>) {
        ctx.run_later(self.limits.client_timeout, |_, ctx| ctx.stop());
    }

    /// Answers the client's close once the connection is released.
    fn answer_close(&mut self, close: Bytes) {
        if self.phase == Phase::Releasing {
            self.push(close);
            self.phase = Phase::Closing;
        }
    }

    fn queue_close(&mut self, code: CloseCode, reason: &str) {
        self.push(frame::close(code, reason));
        self.phase = Phase::Closing;
    }

    fn push(&mut self, wire: Bytes) {
        self.queued_bytes += wire.len();
        self.queue.push_back(wire);
        if let Some(writer) = self.writer.take() {
            writer.wake();
        }
    }

    /// Forgets queued frames, keeping one already partly written.
    fn drop_unsent(&mut self) {
        let keep = usize::from(self.written > 0);
        while self.queue.len() > keep {
            if let Some(dropped) = self.queue.pop_back() {
                self.queued_bytes -= dropped.len();
            }
        }
    }

    /// Writes what the socket takes right now, without waiting. Errors are
    /// left for the writer, which meets them again on its next write.
    fn write_now(&mut self) {
        while !self.queue.is_empty() {
            match self.write_some() {
                Ok(0) | Err(_) => return,
                Ok(n) => self.advance(n),
            }
        }
    }

    /// One vectored write of the front of the queue.
    fn write_some(&self) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
        let mut count = 0;
        for (i, wire) in self.queue.iter().take(WRITE_BATCH).enumerate() {
            let from = if i == 0 { self.written } else { 0 };
            slices[i] = IoSlice::new(&wire[from..]);
            count += 1;
        }
        self.stream.try_write_vectored(&slices[..count])
    }

    /// Writes as much of the queue as the socket takes.
    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            match self.stream.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match self.write_some() {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.queue.capacity() > 16 {
            self.queue = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Drops `n` written bytes off the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued_bytes -= n;
        while n > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            let left = front.len() - self.written;
            if n >= left {
                n -= left;
                self.written = 0;
                self.queue.pop_front();
            } else {
                self.written += n;
                n = 0;
            }
        }
    }

    /// Reads what the socket has. `Ready(Ok(false))` is end of input.
    fn poll_fill(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<bool>> {
        loop {
            match self.stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
                self.inbuf.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.inbuf) {
                Ok(0) => return Poll::Ready(Ok(false)),
                Ok(_) => return Poll::Ready(Ok(true)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The readiness was stale: give back the room made for
                    // this read, or every idle connection would keep it.
                    release_empty(&mut self.inbuf);
                    continue;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// What a decoded frame asks of the connection.
enum Inbound {
    Nothing,
    Text(BytesMut),
    Close(CloseCode, &'static str),
    /// The answer did not fit the queue: the close (1008) is queued.
    Evicted,
}

impl Transport {
    /// Applies one client frame: control frames are answered here, data
    /// frames are joined into messages.
    fn on_frame(&mut self, f: InboundFrame) -> Inbound {
        let max = self.limits.max_message_bytes;
        match f.opcode {
            // Pongs count against the queue bound like any frame: a client
            // that pings without reading is a slow consumer too.
            OpCode::Ping if self.offer(frame::control(OpCode::Pong, &f.payload)) => {
                Inbound::Nothing
            }
            OpCode::Ping => Inbound::Evicted,
            OpCode::Pong => Inbound::Nothing,
            OpCode::Close => {
                self.peer_closed = true;
                match frame::check_close_payload(&f.payload) {
                    Ok(()) => Inbound::Close(CloseCode::Normal, ""),
                    Err(FrameError::Invalid(why)) => Inbound::Close(CloseCode::Invalid, why),
                    Err(_) => Inbound::Close(CloseCode::Protocol, "malformed close frame"),
                }
            }
            OpCode::Binary => {
                Inbound::Close(CloseCode::Unsupported, "binary frames are not supported")
            }
            OpCode::Text if self.fragments.is_some() => {
                Inbound::Close(CloseCode::Protocol, "new message inside a fragmented one")
            }
            OpCode::Text if f.fin => Inbound::Text(f.payload),
            OpCode::Text => {
                self.fragments = Some(f.payload);
                Inbound::Nothing
            }
            OpCode::Continuation => {
                let Some(joined) = self.fragments.as_mut() else {
                    return Inbound::Close(CloseCode::Protocol, "continuation without a start");
                };
                if joined.len() + f.payload.len() > max {
                    return Inbound::Close(CloseCode::Size, "message too big");
                }
                joined.extend_from_slice(&f.payload);
                if f.fin {
                    Inbound::Text(self.fragments.take().unwrap_or_default())
                } else {
                    Inbound::Nothing
                }
            }
        }
    }
}

/// Ends the connection from the transport's side: the actor is told first.
fn end<A: WsActor>(act: &mut A, code: Option<(CloseCode, &str)>, ctx: &mut Context<A>) {
    let t = act.transport();
    if t.phase != Phase::Open {
        return;
    }
    match code {
        // The client asked to close: the close is acknowledged only once
        // what the connection held is released (its leave recorded), so a
        // client that has read our close finds its nickname free on every
        // process. Bounded by the actor, and by the linger at the latest.
        Some((code, reason)) if t.peer_closed => {
            t.phase = Phase::Releasing;
            t.stop_after_linger(ctx);
            let close = frame::close(code, reason);
            match act.on_closing(ctx) {
                Some(released) => {
                    ctx.spawn(
                        released
                            .into_actor(act)
                            .map(move |(), act, _| act.transport().answer_close(close)),
                    );
                }
                None => act.transport().answer_close(close),
            }
            return;
        }
        Some((code, reason)) => {
            t.queue_close(code, reason);
            t.stop_after_linger(ctx);
        }
        None => ctx.stop(),
    }
    let _ = act.on_closing(ctx);
}

/// The queue bound refused a frame the transport itself had to send (a
/// pong or a ping) and queued the 1008 close instead: finish as for any
/// close.
fn evicted<A: WsActor>(act: &mut A, ctx: &mut Context<A>) {
    log::info!("closing a slow consumer");
    act.transport().stop_after_linger(ctx);
    let _ = act.on_closing(ctx);
}

/// Reads and decodes the client's frames for as long as the actor lives.
struct ReadPump;

impl<A: WsActor> ActorFuture<A> for ReadPump {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        // Input that came with the handshake is handled before any read.
        if !decode_all(act, ctx) {
            return Poll::Ready(());
        }
        for _ in 0..READS_PER_POLL {
            match act.transport().poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(true)) => {
                    if !decode_all(act, ctx) {
                        return Poll::Ready(());
                    }
                }
                Poll::Ready(Ok(false)) => {
                    let t = act.transport();
                    t.peer_closed = true;
                    match t.phase {
                        Phase::Open => end(act, None, ctx),
                        // The writer stops the actor once the close is out.
                        Phase::Releasing | Phase::Closing => {}
                        Phase::WriteShut => ctx.stop(),
                    }
                    return Poll::Ready(());
                }
                Poll::Ready(Err(e)) => {
                    log::debug!("socket read failed: {e}");
                    end(act, None, ctx);
                    ctx.stop();
                    return Poll::Ready(());
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Handles every whole frame in the read buffer; `false` once the
/// connection stopped reading.
fn decode_all<A: WsActor>(act: &mut A, ctx: &mut Context<A>) -> bool {
    loop {
        let t = act.transport();
        if t.deaf {
            t.inbuf.clear();
            release_empty(&mut t.inbuf);
            return false;
        }
        if t.phase != Phase::Open {
            // Closing: input is read only to find the client's close, unless
            // the framing itself was broken, after which nothing in the
            // input can be trusted to be a frame.
            if t.input_broken {
                t.inbuf.clear();
                release_empty(&mut t.inbuf);
                return true;
            }
            let closed = loop {
                match frame::decode(&mut t.inbuf, t.limits.max_message_bytes) {
                    Ok(Some(f)) if f.opcode == OpCode::Close => break true,
                    Ok(Some(_)) => continue,
                    Ok(None) => break false,
                    Err(_) => {
                        t.inbuf.clear();
                        break false;
                    }
                }
            };
            if closed {
                t.peer_closed = true;
                if t.phase == Phase::WriteShut {
                    ctx.stop();
                    return false;
                }
            }
            release_empty(&mut t.inbuf);
            return true;
        }
        let inbound = match frame::decode(&mut t.inbuf, t.limits.max_message_bytes) {
            Ok(None) => {
                release_empty(&mut t.inbuf);
                return true;
            }
            Ok(Some(f)) => {
                t.last_heard = Instant::now();
                t.on_frame(f)
            }
            Err(e) => {
                log::debug!("client broke the framing: {e}");
                t.input_broken = true;
                match e {
                    FrameError::TooLarge(_) => Inbound::Close(CloseCode::Size, "frame too large"),
                    FrameError::Invalid(why) => Inbound::Close(CloseCode::Invalid, why),
                    FrameError::Protocol(why) => Inbound::Close(CloseCode::Protocol, why),
                }
            }
        };
        match inbound {
            Inbound::Nothing => {}
            Inbound::Text(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => act.on_text(text, ctx),
                Err(_) => end(act, Some((CloseCode::Invalid, "text is not UTF-8")), ctx),
            },
            Inbound::Close(code, reason) => end(act, Some((code, reason)), ctx),
            Inbound::Evicted => evicted(act, ctx),
        }
    }
}

/// Frees the read buffer between frames, so an idle connection holds none.
fn release_empty(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 0 {
        *buf = BytesMut::new();
    }
}

/// Writes queued frames; after a close, shuts the socket for writing.
struct WritePump;

impl<A: WsActor> ActorFuture<A> for WritePump {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<()> {
        let t = act.transport();
        match t.poll_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => {
                log::debug!("socket write failed: {e}");
                end(act, None, ctx);
                ctx.stop();
                return Poll::Ready(());
            }
            Poll::Ready(Ok(())) => {}
        }
        match t.phase {
            Phase::Open | Phase::Releasing => {
                if !t.writer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    t.writer = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Phase::Closing => {
                let _ = Pin::new(&mut t.stream).poll_shutdown(cx);
                t.phase = Phase::WriteShut;
                if t.peer_closed {
                    ctx.stop();
                }
                Poll::Ready(())
            }
            Phase::WriteShut => Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TransportLimits {
        TransportLimits {
            max_message_bytes: 100,
            max_queued_bytes: 10,
            client_timeout: Duration::from_secs(30),
        }
    }

    async fn pair() -> (Transport, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Transport::new(server, b"", limits()), client)
    }

    #[actix_rt::test]
    async fn advancing_keeps_a_half_written_frame_in_front() {
        let (mut t, _client) = pair().await;
        t.push(Bytes::from_static(b"abcd"));
        t.push(Bytes::from_static(b"ef"));
        t.advance(5);
        assert_eq!(t.queue.len(), 1);
        assert_eq!(t.written, 1);
        assert_eq!(t.queued_bytes, 1);
    }

    /// Fills the kernel's buffers of a socket nobody reads.
    fn fill_kernel_buffers(t: &Transport) {
        let chunk = vec![0u8; 64 * 1024];
        while t.stream.try_write(&chunk).is_ok() {}
    }

    #[actix_rt::test]
    async fn a_queue_the_socket_takes_at_once_is_not_a_slow_consumer() {
        let (mut t, _client) = pair().await;
        for _ in 0..100 {
            assert!(t.offer(Bytes::from_static(b"0123456")));
        }
        assert!(t.is_open());
        assert!(t.queued_bytes <= 10, "{} bytes left queued", t.queued_bytes);
    }

    #[actix_rt::test]
    async fn a_full_queue_closes_with_policy_and_keeps_a_partial_frame() {
        let (mut t, _client) = pair().await;
        fill_kernel_buffers(&t);
        assert!(t.offer(Bytes::from_static(b"0123456")));
        t.advance(2);
        assert!(!t.offer(Bytes::from_static(b"0123456789")));
        assert!(!t.is_open());
        // The half-written frame, then the close frame.
        assert_eq!(t.queue.len(), 2);
        assert_eq!(&t.queue[0][..], b"0123456");
        assert_eq!(frame::close_code_of(&t.queue[1][2..]), Some(1008));
        // Nothing is queued after the close.
        assert!(t.offer(Bytes::from_static(b"x")));
        assert_eq!(t.queue.len(), 2);
    }

    #[actix_rt::test]
    async fn a_connection_with_nothing_to_read_holds_no_read_buffer() {
        use tokio::io::AsyncWriteExt;
        let (mut t, mut client) = pair().await;
        client.write_all(b"\x89\x80\x01\x02\x03\x04").await.unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = TaskContext::from_waker(waker);
        // Wait for the bytes, then read them.
        let mut got = false;
        for _ in 0..100 {
            if let Poll::Ready(r) = t.poll_fill(&mut cx) {
                got = r.unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(got, "the ping never arrived");
        let ping = frame::decode(&mut t.inbuf, 100).unwrap().unwrap();
        assert_eq!(ping.opcode, OpCode::Ping);
        release_empty(&mut t.inbuf);
        // Nothing more to read: the read buffer made for the next read is
        // given back.
        assert!(t.poll_fill(&mut cx).is_pending());
        assert_eq!(t.inbuf.capacity(), 0);
    }

    #[actix_rt::test]
    async fn a_held_close_answer_is_queued_only_when_released() {
        let (mut t, _client) = pair().await;
        t.phase = Phase::Releasing;
        assert!(!t.is_open());
        // Nothing is queued while the answer is held.
        assert!(t.offer(Bytes::from_static(b"late")));
        assert!(t.queue.is_empty());
        t.answer_close(frame::close(CloseCode::Normal, ""));
        assert_eq!(t.phase, Phase::Closing);
        assert_eq!(t.queue.len(), 1);
        assert_eq!(frame::close_code_of(&t.queue[0][2..]), Some(1000));
        // Answered once only.
        t.answer_close(frame::close(CloseCode::Normal, ""));
        assert_eq!(t.queue.len(), 1);
    }

    #[actix_rt::test]
    async fn one_frame_larger_than_the_bound_is_still_sent_to_a_reader() {
        let (mut t, _client) = pair().await;
        assert!(t.offer(Bytes::from(vec![b'x'; 50])));
        assert!(t.is_open());
    }
}
