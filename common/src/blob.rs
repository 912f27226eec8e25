//! [`Blob`]: one object of a blob store named by its URL, for task code that reads or writes
//! large data itself (an image batch loaded on the worker from `s3://…` rather than sent from
//! the client), in whole ([`Blob::get`], [`Blob::put`]) or streaming ([`Blob::open`] reads
//! chunk by chunk, [`Blob::create`] uploads in parts).
//!
//! URLs: `file:///absolute/path` (a file of this machine) or `s3://bucket/key` (a build with
//! the `s3` feature), the latter on the deployment's S3 server: `s3_endpoint` (empty: AWS),
//! credentials and region from the usual `AWS_*` variables, as for `blob_url`
//! ([`crate::blobs`], which keeps rask's own values by digest under `blob_url`; a `Blob` may
//! name any object, under that prefix or not).
//!
//! A write is complete or absent: [`Blob::put`] is one `PUT` (a file: written aside, fsynced
//! and renamed); a [`BlobWriter`] uploads parts that become the object only when
//! [`BlobWriter::finish`] completes the upload, so a writer killed mid-upload leaves no object
//! (on S3, parts of an incomplete upload stay until a lifecycle rule aborts them; a file written
//! aside, `{path}#{n}`, may stay behind).
//!
//! Stores are made once per bucket and shared ([`BlobStores`]): a worker's tasks reach them with
//! [`crate::TaskContext::blob`].

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::StreamReader;

use crate::blobs::{blob_error, s3};
use crate::error::{Error, ErrorKind, Result};
use crate::settings::Settings;

/// Bytes a [`BlobWriter`] gathers before it sends them as one part of the upload (S3 wants
/// parts of at least 5 MiB).
const PART: usize = 8 << 20;

/// The stores [`Blob`]s are made on, one per bucket (and one for local files), made on first use
/// and shared: an S3 store holds an HTTP client and its connections. Cheap to clone.
#[derive(Clone)]
pub struct BlobStores {
    endpoint: String,
    made: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

impl BlobStores {
    /// Stores on the S3 server of `settings.s3_endpoint` (empty: AWS); none is made yet.
    pub fn new(settings: &Settings) -> Self {
        BlobStores {
            endpoint: settings.s3_endpoint.trim().to_owned(),
            made: Arc::default(),
        }
    }

    /// The object named by `url` (`file:///path` or `s3://bucket/key`).
    ///
    /// # Errors
    /// [`Error::Settings`] for a URL that is neither (or `s3://` in a build without the `s3`
    /// feature, or a URL that names no object); [`Error::Blob`] if its store cannot be set up.
    pub fn blob(&self, url: &str) -> Result<Blob> {
        let (store_key, path) = parse(url)?;
        let store = {
            let mut made = self.made.lock().expect("no panic while held");
            match made.get(&store_key) {
                Some(store) => store.clone(),
                None => {
                    let store = self.make(&store_key, url)?;
                    made.insert(store_key, store.clone());
                    store
                }
            }
        };
        Ok(Blob {
            store,
            path,
            url: url.to_owned(),
        })
    }

    /// The store of `key` ("file", or the bucket of an `s3://` URL).
    fn make(&self, key: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
        match key.strip_prefix("s3://") {
            Some(bucket) => s3(bucket, &self.endpoint, url),
            // As durable as rask's own blobs (`crate::blobs`): on disk when a write returns.
            None => Ok(Arc::new(
                object_store::local::LocalFileSystem::new().with_fsync(true),
            )),
        }
    }
}

impl fmt::Debug for BlobStores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let made = self.made.lock().map(|m| m.len()).unwrap_or_default();
        f.debug_struct("BlobStores")
            .field("endpoint", &self.endpoint)
            .field("stores", &made)
            .finish()
    }
}

/// The store key and object path of `url`.
fn parse(url: &str) -> Result<(String, Path)> {
    let bad = |why: &str| Error::Settings(format!("blob URL {url:?}: {why}"));
    if let Some(file) = url.strip_prefix("file://") {
        if !file.starts_with('/') || file.ends_with('/') {
            return Err(bad("a file URL names an absolute path: file:///dir/name"));
        }
        let path = Path::from_absolute_path(file).map_err(|e| bad(&e.to_string()))?;
        return Ok(("file".to_owned(), path));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(bad("an S3 URL names a bucket and a key: s3://bucket/key"));
        }
        let path = Path::parse(key).map_err(|e| bad(&e.to_string()))?;
        return Ok((format!("s3://{bucket}"), path));
    }
    Err(bad("a blob URL is file:///path or s3://bucket/key"))
}

/// One object of a blob store, by URL (see the module docs). Cheap to clone.
///
/// ```no_run
/// # async fn example(ctx: &rask_common::TaskContext) -> rask_common::Result<()> {
/// use futures::TryStreamExt as _;
/// // Read an input chunk by chunk, as it arrives.
/// let input = ctx.blob("s3://images/batch-7.raw")?;
/// let mut chunks = input.chunks().await?;
/// let mut total = 0;
/// while let Some(chunk) = chunks.try_next().await? {
///     total += chunk.len();
/// }
/// // Write an output in parts; it exists once `finish` returns.
/// let mut output = ctx.blob("s3://images/batch-7.stats")?.create();
/// output.write(total.to_string().into_bytes()).await?;
/// output.finish().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Blob {
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: String,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Blob").field(&self.url).finish()
    }
}

impl Blob {
    /// The object named by `url`, on a store made for it alone from `settings` (task code takes
    /// [`crate::TaskContext::blob`] instead, whose stores its worker shares).
    ///
    /// # Errors
    /// As [`BlobStores::blob`].
    pub fn at(url: &str, settings: &Settings) -> Result<Blob> {
        BlobStores::new(settings).blob(url)
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, doing: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::BlobMissing {
                url: self.url.clone(),
            },
            e => blob_error(format!("{doing} {}", self.url), e),
        }
    }

    /// Its whole content.
    ///
    /// # Errors
    /// [`Error::BlobMissing`] if there is no such object; [`Error::Blob`] if the store refuses
    /// or cannot be reached.
    pub async fn get(&self) -> Result<Bytes> {
        let got = self
            .store
            .get_opts(&self.path, GetOptions::default())
            .await
            .map_err(|e| self.error("reading", e))?;
        got.bytes().await.map_err(|e| self.error("reading", e))
    }

    /// Writes `bytes` as its whole content (replacing any), in one request.
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses or cannot be reached.
    pub async fn put(&self, bytes: impl Into<Bytes>) -> Result<()> {
        self.store
            .put_opts(
                &self.path,
                PutPayload::from_bytes(bytes.into()),
                PutOptions::default(),
            )
            .await
            .map_err(|e| self.error("writing", e))?;
        Ok(())
    }

    /// Its content as a stream of chunks, read as they arrive (never whole in memory).
    ///
    /// # Errors
    /// [`Error::BlobMissing`] if there is no such object; [`Error::Blob`] if the store refuses
    /// or cannot be reached (then, or as an item of the stream).
    pub async fn chunks(&self) -> Result<BoxStream<'static, Result<Bytes>>> {
        let got = self
            .store
            .get_opts(&self.path, GetOptions::default())
            .await
            .map_err(|e| self.error("reading", e))?;
        let this = self.clone();
        Ok(got
            .into_stream()
            .map_err(move |e| this.error("reading", e))
            .boxed())
    }

    /// Its content as an [`AsyncRead`] (see [`Blob::chunks`]).
    ///
    /// # Errors
    /// As [`Blob::chunks`]; errors while reading are `std::io::Error`s wrapping an [`Error`].
    pub async fn open(&self) -> Result<BlobReader> {
        let chunks = self.chunks().await?.map_err(std::io::Error::other).boxed();
        Ok(BlobReader {
            inner: StreamReader::new(chunks),
        })
    }

    /// A writer of its content, uploaded in parts as it is written (8 MiB each; a content
    /// shorter than that is one `PUT`). The object exists, whole, once [`BlobWriter::finish`]
    /// returns; a writer dropped or killed before leaves none (see the module docs).
    pub fn create(&self) -> BlobWriter {
        BlobWriter {
            inner: BufWriter::with_capacity(self.store.clone(), self.path.clone(), PART),
            url: self.url.clone(),
            finished: false,
        }
    }

    /// Deletes it (nothing happens if there is none).
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses or cannot be reached.
    pub async fn delete(&self) -> Result<()> {
        let path: object_store::Result<Path> = Ok(self.path.clone());
        let mut deleted = self
            .store
            .delete_stream(futures::stream::once(async { path }).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error("deleting", e)),
            }
        }
        Ok(())
    }

    /// Its length in bytes, or `None` if there is no such object.
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses or cannot be reached.
    pub async fn size(&self) -> Result<Option<u64>> {
        let head = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.path, head).await {
            Ok(got) => Ok(Some(got.meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("looking up", e)),
        }
    }
}

/// The content of a [`Blob`] as it is read ([`Blob::open`]): an [`AsyncRead`] (and
/// `AsyncBufRead`).
pub struct BlobReader {
    inner: StreamReader<BoxStream<'static, std::io::Result<Bytes>>, Bytes>,
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader").finish_non_exhaustive()
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncBufRead for BlobReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.inner).consume(amt)
    }
}

/// The content of a [`Blob`] as it is written ([`Blob::create`]): [`BlobWriter::write`]
/// chunks (or use it as an [`AsyncWrite`]), then [`BlobWriter::finish`].
pub struct BlobWriter {
    inner: BufWriter,
    url: String,
    finished: bool,
}

impl fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobWriter")
            .field("url", &self.url)
            .field("finished", &self.finished)
            .finish()
    }
}

impl BlobWriter {
    fn error(&self, e: object_store::Error) -> Error {
        blob_error(format!("writing {}", self.url), e)
    }

    fn check_open(&self) -> Result<()> {
        if self.finished {
            return Err(Error::Blob {
                kind: ErrorKind::Rejected,
                what: format!("writing {}", self.url),
                source: "the writer was finished or aborted".into(),
            });
        }
        Ok(())
    }

    /// Appends `bytes` (without copying them); waits while too many parts are in flight.
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses a part or cannot be reached, or the writer is
    /// finished.
    pub async fn write(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.check_open()?;
        let bytes = bytes.into();
        match self.inner.put(bytes).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Completes the upload: the object exists, whole, once this returns.
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses or cannot be reached (no object is made), or the
    /// writer is finished.
    pub async fn finish(mut self) -> Result<()> {
        use tokio::io::AsyncWriteExt as _;
        self.check_open()?;
        self.finished = true;
        self.inner.shutdown().await.map_err(|e| Error::Blob {
            kind: ErrorKind::Transient,
            what: format!("completing {}", self.url),
            source: Box::new(e),
        })
    }

    /// Abandons the upload and deletes the parts sent so far: no object is made.
    ///
    /// # Errors
    /// [`Error::Blob`] if the store refuses or cannot be reached.
    pub async fn abort(mut self) -> Result<()> {
        self.check_open()?;
        self.finished = true;
        let aborted = self.inner.abort().await;
        aborted.map_err(|e| self.error(e))
    }
}

impl AsyncWrite for BlobWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.finished {
            return Poll::Ready(Err(std::io::Error::other("the blob writer is finished")));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Completes the upload, as [`BlobWriter::finish`].
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        let done = Pin::new(&mut self.inner).poll_shutdown(cx);
        if done.is_ready() {
            self.finished = true;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_file_or_a_bucket_and_key() {
        let (store, path) = parse("file:///tmp/a/b.raw").unwrap();
        assert_eq!((store.as_str(), path.as_ref()), ("file", "tmp/a/b.raw"));
        let (store, path) = parse("s3://images/in/b.raw").unwrap();
        assert_eq!((store.as_str(), path.as_ref()), ("s3://images", "in/b.raw"));
        for url in [
            "file://relative",
            "file:///dir/",
            "s3://bucket",
            "s3:///key",
            "http://x/y",
        ] {
            assert!(matches!(parse(url), Err(Error::Settings(_))), "{url}");
        }
    }

    #[tokio::test]
    async fn a_file_is_written_in_parts_and_read_as_a_stream() {
        use tokio::io::AsyncReadExt as _;
        let dir = std::env::temp_dir().join(format!("rask-blob-{}", uuid::Uuid::new_v4()));
        let url = format!("file://{}/sub/value.bin", dir.display());
        let stores = BlobStores::new(&Settings::default());
        let blob = stores.blob(&url).unwrap();
        assert!(matches!(blob.get().await, Err(Error::BlobMissing { .. })));
        assert_eq!(blob.size().await.unwrap(), None);
        let content: Vec<u8> = (0..(PART * 2 + 123)).map(|i| (i % 251) as u8).collect();
        let mut writer = blob.create();
        for chunk in content.chunks(1 << 20) {
            writer.write(chunk.to_vec()).await.unwrap();
        }
        assert_eq!(blob.size().await.unwrap(), None, "nothing before finish");
        writer.finish().await.unwrap();
        assert_eq!(blob.size().await.unwrap(), Some(content.len() as u64));
        let mut read = Vec::new();
        blob.open()
            .await
            .unwrap()
            .read_to_end(&mut read)
            .await
            .unwrap();
        assert!(read == content);
        let again = stores.blob(&url).unwrap();
        assert_eq!(again.get().await.unwrap(), Bytes::from(content));
        again.put(&b"small"[..]).await.unwrap();
        assert_eq!(blob.get().await.unwrap(), Bytes::from_static(b"small"));
        blob.delete().await.unwrap();
        blob.delete().await.unwrap();
        assert_eq!(blob.size().await.unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
