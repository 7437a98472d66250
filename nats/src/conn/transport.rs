//! The socket under a connection, plain or TLS, and the two reads and
//! writes of the handshake.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::super::proto::{Frame, Parser};
use super::ConnectError;

/// A plain or TLS socket.
pub(super) enum Transport {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Reads until the parser has one whole frame; during the handshake,
/// where the server must answer within seconds.
pub(super) async fn read_frame(
    transport: &mut Transport,
    parser: &mut Parser,
    buf: &mut BytesMut,
) -> Result<Frame, ConnectError> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(frame) = parser
            .next(buf)
            .map_err(|e| ConnectError::Protocol(e.to_string()))?
        {
            return Ok(frame);
        }
        let n = tokio::time::timeout(Duration::from_secs(5), transport.read_buf(buf))
            .await
            .map_err(|_| ConnectError::Protocol("no answer from the server".into()))??;
        if n == 0 {
            return Err(ConnectError::Protocol(
                "the server closed the connection".into(),
            ));
        }
    }
}

/// Writes and flushes `bytes`.
pub(super) async fn write_all(transport: &mut Transport, bytes: &[u8]) -> Result<(), ConnectError> {
    use tokio::io::AsyncWriteExt;
    transport.write_all(bytes).await?;
    transport.flush().await?;
    Ok(())
}
