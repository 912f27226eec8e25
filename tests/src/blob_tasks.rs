//! Test tasks that read and write blobs by URL ([`rask::Blob`], `ctx.blob(url)`), and the
//! values they use: [`pattern`] makes bytes unique to a seed, so a test compares what a task
//! wrote or read with what it expects.

/// `len` bytes unique to `seed` (eight at a time, so that 200 MiB is quick in a debug build).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Chunks [`stream_blob`] writes at a time.
const CHUNK: usize = 1 << 20;

rask::task! {
    /// Streams [`pattern`]`(seed, len)` to the blob `url` in 1 MiB chunks (a writer that uploads
    /// in parts). Once half is written it counts its run in the Redis counter `counter`; on the
    /// first run it then waits for ever, holding an upload half done: a known point where a
    /// test kills its worker. Later runs write the rest, complete the upload and return `url`.
    pub async fn stream_blob(
        ctx: &rask::TaskContext,
        url: String,
        seed: u64,
        len: u64,
        redis_url: String,
        counter: String
    ) -> Result<String, rask_common::Error> {
        let bytes = pattern(seed, len as usize);
        let half = bytes.len() / 2;
        let mut writer = ctx.blob(&url)?.create();
        for chunk in bytes[..half].chunks(CHUNK) {
            writer.write(chunk.to_vec()).await?;
        }
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let run = redis::cmd("INCR")
            .arg(counter)
            .query_async::<i64>(&mut conn)
            .await
            .expect("INCR succeeds");
        if run == 1 {
            std::future::pending::<()>().await;
        }
        for chunk in bytes[half..].chunks(CHUNK) {
            writer.write(chunk.to_vec()).await?;
        }
        writer.finish().await?;
        Ok(url)
    }
}

rask::task! {
    /// Reads the blob `url` as a stream (`Blob::open`) and returns its length and the digest
    /// of its bytes in hex (`Digest::of`): an input loaded on the worker rather than sent in
    /// the message.
    pub async fn digest_blob(ctx: &rask::TaskContext, url: String) -> Result<(u64, String), rask_common::Error> {
        use tokio::io::AsyncReadExt as _;
        let mut reader = ctx.blob(&url)?.open().await?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| rask_common::Error::Blob {
                kind: rask_common::ErrorKind::Transient,
                what: format!("reading {url}"),
                source: Box::new(e),
            })?;
        let digest = rask_common::reference::Digest::of(&bytes);
        Ok((bytes.len() as u64, digest.hex()))
    }
}

rask::task! {
    /// The length and digest (hex, `Digest::of`) of the bytes `value` holds (a MessagePack bin;
    /// an error for any other value): a dependent of a graph task whose large result is kept in
    /// the blob store.
    pub fn digest_value(value: rmpv::Value) -> Result<(u64, String), String> {
        match value {
            rmpv::Value::Binary(bytes) => {
                Ok((bytes.len() as u64, rask_common::reference::Digest::of(&bytes).hex()))
            }
            other => Err(format!("expected bytes, got {other}")),
        }
    }
}
