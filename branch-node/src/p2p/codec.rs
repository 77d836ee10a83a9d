//! The libp2p request-response codec for BankMate: one message per stream, encoded by
//! `wire`, at most `MESSAGE_BYTES_MAX` bytes read (an oversized one is an error, never
//! silently cut short).

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wire::limits::MESSAGE_BYTES_MAX;

/// The teller protocol: `TellerRequest` in, `TellerResponse` out.
pub const TELLER_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/teller/1");
/// The branch-to-branch protocol: `LinkRequest` in, `LinkResponse` out.
pub const LINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/link/1");
/// Requests one branch forwards to another for tellers (`LinkRequest::Forward`): their
/// own protocol, with their own stream budget and inbound queue, so that a teller flood
/// passed on by a branch can never hold up that link's 2PC messages.
pub const FORWARD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bankmate/forward/1");

/// A request-response codec for `Req` and `Resp`, in `wire`'s encoding.
#[derive(Debug)]
pub struct WireCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for WireCodec<Req, Resp> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<Req, Resp> Clone for WireCodec<Req, Resp> {
    fn clone(&self) -> Self {
        WireCodec(PhantomData)
    }
}

/// Reads the whole stream, refusing more than [`MESSAGE_BYTES_MAX`] bytes.
pub async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(MESSAGE_BYTES_MAX).unwrap_or(u64::MAX);
    io.take(limit + 1).read_to_end(&mut buf).await?;
    if buf.len() > MESSAGE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message exceeds the limit of {MESSAGE_BYTES_MAX} bytes"),
        ));
    }
    Ok(buf)
}

async fn read_value<T: DeserializeOwned + Serialize, R: AsyncRead + Unpin + Send>(
    io: &mut R,
) -> io::Result<T> {
    let bytes = read_limited(io).await?;
    wire::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn to_bytes<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    wire::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_bytes<W: AsyncWrite + Unpin + Send>(
    io: &mut W,
    bytes: io::Result<Vec<u8>>,
) -> io::Result<()> {
    io.write_all(&bytes?).await?;
    io.close().await
}

impl<Req, Resp> request_response::Codec for WireCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send,
    Resp: Serialize + DeserializeOwned + Send,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_value(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_value(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = to_bytes(&req);
        drop(req);
        write_bytes(io, bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = to_bytes(&resp);
        drop(resp);
        write_bytes(io, bytes).await
    }
}
