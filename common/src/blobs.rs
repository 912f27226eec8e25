//! The blob store: large values (arguments and results over `blob_threshold`) kept outside
//! RabbitMQ and Redis, in a directory (`file:///path`) or an S3 bucket (`s3://bucket/prefix`,
//! with the `s3` feature), through the `object_store` crate. Objects are content-addressed:
//! `{prefix}/{digest hex}` (BLAKE3; SHA-256 for references made before it), so the same bytes
//! are one object however many tasks name them, and a write is complete or absent (a local file
//! is written aside and renamed; an S3 `PUT` is atomic), so a writer killed mid-upload leaves no
//! object that a reference names. A local write is on disk (the file and its directory
//! fsynced) before it returns, so a machine crash loses no blob that a confirmed message or a
//! stored result names.
//!
//! Without the `blobs` feature a non-empty `blob_url` is refused at start
//! ([`Blobs::from_settings`]), and nothing else changes.
//!
//! Settings: `blob_url` (empty: no blob store), `s3_endpoint` (an S3-compatible server instead
//! of AWS; credentials and region from the usual `AWS_*` variables), `blob_threshold`.

pub use imp::Blobs;
#[cfg(feature = "blobs")]
pub(crate) use imp::{blob_error, s3};

#[cfg(feature = "blobs")]
mod imp {
    //! With the `blobs` feature: object_store behind [`Blobs`].

    use std::sync::Arc;

    use bytes::Bytes;
    use futures::{StreamExt, TryStreamExt};
    use object_store::path::Path;
    use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};

    use crate::error::{Error, ErrorKind, Result};
    use crate::reference::Digest;
    use crate::settings::Settings;

    /// A connection to the blob store of `blob_url`. Cheap to clone.
    #[derive(Clone, Debug)]
    pub struct Blobs {
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        url: String,
    }

    impl Blobs {
        /// The blob store of `settings.blob_url`, or `None` when it is empty.
        ///
        /// # Errors
        /// [`Error::Settings`] for a URL that is not `file:///…` or `s3://…` (or `s3://` in a build
        /// without the `s3` feature); [`Error::Blob`] if the store cannot be set up (a directory
        /// that cannot be created).
        pub fn from_settings(settings: &Settings) -> Result<Option<Self>> {
            let url = settings.blob_url.trim();
            if url.is_empty() {
                return Ok(None);
            }
            let (store, prefix): (Arc<dyn ObjectStore>, &str) =
                if let Some(path) = url.strip_prefix("file://") {
                    if !path.starts_with('/') {
                        return Err(bad_url(
                            url,
                            "a file URL names an absolute path: file:///dir",
                        ));
                    }
                    std::fs::create_dir_all(path).map_err(|e| Error::Blob {
                        kind: ErrorKind::Configuration,
                        what: format!("creating the blob directory {path}"),
                        source: Box::new(e),
                    })?;
                    // Written with fsync (file and directory) before a reference to it is
                    // published or stored: as durable as the confirmed message that names it.
                    let local = object_store::local::LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| blob_error(format!("opening {url}"), e))?
                        .with_fsync(true);
                    (Arc::new(local), "")
                } else if let Some(rest) = url.strip_prefix("s3://") {
                    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                    if bucket.is_empty() {
                        return Err(bad_url(url, "an S3 URL names a bucket: s3://bucket/prefix"));
                    }
                    (s3(bucket, &settings.s3_endpoint, url)?, prefix)
                } else {
                    return Err(bad_url(
                        url,
                        "blob_url is file:///path or s3://bucket/prefix",
                    ));
                };
            Ok(Some(Blobs {
                store,
                prefix: Path::from(prefix.trim_matches('/')),
                url: url.to_owned(),
            }))
        }

        /// The URL the store was made from.
        pub fn url(&self) -> &str {
            &self.url
        }

        /// Where the bytes of `digest` are kept.
        fn path(&self, digest: &Digest) -> Path {
            self.prefix.clone().join(digest.hex())
        }

        /// Writes `bytes` as the object of `digest` (their digest; an object of the same digest
        /// is the same bytes, so writing it again changes nothing).
        ///
        /// # Errors
        /// [`Error::Blob`] if the store refuses or cannot be reached.
        pub async fn put(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
            self.store
                .put_opts(
                    &self.path(digest),
                    PutPayload::from_bytes(bytes),
                    PutOptions::default(),
                )
                .await
                .map_err(|e| blob_error(format!("writing blob {digest} to {}", self.url), e))?;
            Ok(())
        }

        /// Reads the object of `digest`: `None` if there is none (deleted, expired, never written).
        ///
        /// # Errors
        /// [`Error::Blob`] if the store refuses or cannot be reached.
        pub async fn get(&self, digest: &Digest) -> Result<Option<Bytes>> {
            let what = || format!("reading blob {digest} from {}", self.url);
            let got = match self
                .store
                .get_opts(&self.path(digest), GetOptions::default())
                .await
            {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(blob_error(what(), e)),
            };
            Ok(Some(got.bytes().await.map_err(|e| blob_error(what(), e))?))
        }

        /// Whether the object of `digest` exists (without reading it).
        ///
        /// # Errors
        /// [`Error::Blob`] if the store refuses or cannot be reached.
        pub async fn contains(&self, digest: &Digest) -> Result<bool> {
            let head = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            match self.store.get_opts(&self.path(digest), head).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(blob_error(
                    format!("looking up blob {digest} in {}", self.url),
                    e,
                )),
            }
        }

        /// Deletes the objects of `digests` (those already gone are skipped).
        ///
        /// # Errors
        /// [`Error::Blob`] if the store refuses or cannot be reached.
        pub async fn delete(&self, digests: &[Digest]) -> Result<()> {
            let paths: Vec<object_store::Result<Path>> =
                digests.iter().map(|d| Ok(self.path(d))).collect();
            let mut deleted = self
                .store
                .delete_stream(futures::stream::iter(paths).boxed());
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(blob_error(format!("deleting blobs of {}", self.url), e)),
                }
            }
            Ok(())
        }

        /// Deletes every object under the store's prefix; returns how many.
        ///
        /// # Errors
        /// [`Error::Blob`] if the store refuses or cannot be reached.
        pub async fn purge(&self) -> Result<u64> {
            let what = || format!("purging blobs of {}", self.url);
            let listed = self
                .store
                .list(Some(&self.prefix))
                .map_ok(|meta| meta.location)
                .boxed();
            let deleted = self
                .store
                .delete_stream(listed)
                .try_fold(0u64, |n, _| async move { Ok(n + 1) })
                .await
                .map_err(|e| blob_error(what(), e))?;
            Ok(deleted)
        }
    }

    fn bad_url(url: &str, why: &str) -> Error {
        Error::Settings(format!("blob_url = {url:?}: {why}"))
    }

    /// An error of the store while doing `what`: credentials and permissions are
    /// [`ErrorKind::Configuration`], the rest [`ErrorKind::Transient`].
    pub(crate) fn blob_error(what: String, e: object_store::Error) -> Error {
        let kind = match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. }
            | object_store::Error::NotSupported { .. } => ErrorKind::Configuration,
            _ => ErrorKind::Transient,
        };
        Error::Blob {
            kind,
            what,
            source: Box::new(e),
        }
    }

    /// An S3 store of `bucket` (credentials and region from the `AWS_*` variables; `endpoint`, when
    /// not empty, an S3-compatible server, over plain HTTP if it says so).
    #[cfg(feature = "s3")]
    pub(crate) fn s3(bucket: &str, endpoint: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !endpoint.is_empty() {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| {
            let mut error = blob_error(format!("setting up {url}"), e);
            if let Error::Blob { kind, .. } = &mut error {
                *kind = ErrorKind::Configuration;
            }
            error
        })?;
        Ok(Arc::new(store))
    }

    #[cfg(not(feature = "s3"))]
    pub(crate) fn s3(_bucket: &str, _endpoint: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
        Err(bad_url(
            url,
            "this build has no S3 support (build with the `s3` feature)",
        ))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn settings(url: &str) -> Settings {
            Settings {
                blob_url: url.to_owned(),
                ..Settings::default()
            }
        }

        #[test]
        fn no_url_no_store_and_bad_urls_are_refused() {
            assert!(Blobs::from_settings(&settings("")).unwrap().is_none());
            for url in ["http://x/y", "file://relative", "s3:///prefix"] {
                let error = Blobs::from_settings(&settings(url)).unwrap_err();
                assert!(matches!(error, Error::Settings(_)), "{url}: {error}");
            }
        }

        #[tokio::test]
        async fn a_directory_holds_blobs_by_digest() {
            let dir = std::env::temp_dir().join(format!("rask-blobs-{}", uuid::Uuid::new_v4()));
            let url = format!("file://{}", dir.display());
            let blobs = Blobs::from_settings(&settings(&url)).unwrap().unwrap();
            // A power loss cannot be staged here; the store's own record of the setting can.
            assert!(
                format!("{blobs:?}").contains("fsync: true"),
                "local blobs are fsynced before a reference names them: {blobs:?}"
            );
            let bytes = Bytes::from_static(b"a large value");
            let digest = Digest::of(&bytes);
            assert_eq!(blobs.get(&digest).await.unwrap(), None);
            assert!(!blobs.contains(&digest).await.unwrap());
            blobs.put(&digest, bytes.clone()).await.unwrap();
            assert!(blobs.contains(&digest).await.unwrap());
            assert!(dir.join(digest.hex()).exists());
            assert_eq!(blobs.get(&digest).await.unwrap(), Some(bytes));
            blobs.delete(&[digest]).await.unwrap();
            assert_eq!(blobs.get(&digest).await.unwrap(), None);
            blobs.delete(&[digest]).await.unwrap();
            blobs.put(&digest, Bytes::from_static(b"x")).await.unwrap();
            assert_eq!(blobs.purge().await.unwrap(), 1);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

#[cfg(not(feature = "blobs"))]
mod imp {
    //! Without the `blobs` feature: no store can be made, so none of its methods can run.

    use bytes::Bytes;

    use crate::error::{Error, Result};
    use crate::reference::Digest;
    use crate::settings::Settings;

    /// A connection to the blob store of `blob_url` (none in this build: see the module docs).
    #[derive(Clone, Debug)]
    pub struct Blobs {
        never: std::convert::Infallible,
    }

    impl Blobs {
        /// `None` when `settings.blob_url` is empty.
        ///
        /// # Errors
        /// [`Error::Settings`] when it is not: this build has no blob store.
        pub fn from_settings(settings: &Settings) -> Result<Option<Self>> {
            if settings.blob_url.trim().is_empty() {
                return Ok(None);
            }
            Err(Error::Settings(format!(
                "blob_url = {:?}: this build has no blob store (build with the `blobs` feature)",
                settings.blob_url
            )))
        }

        /// The URL the store was made from.
        pub fn url(&self) -> &str {
            match self.never {}
        }

        /// Writes `bytes` as the object of `digest`.
        ///
        /// # Errors
        /// None: no store exists in this build.
        pub async fn put(&self, _digest: &Digest, _bytes: Bytes) -> Result<()> {
            match self.never {}
        }

        /// Reads the object of `digest`.
        ///
        /// # Errors
        /// None: no store exists in this build.
        pub async fn get(&self, _digest: &Digest) -> Result<Option<Bytes>> {
            match self.never {}
        }

        /// Whether the object of `digest` exists.
        ///
        /// # Errors
        /// None: no store exists in this build.
        pub async fn contains(&self, _digest: &Digest) -> Result<bool> {
            match self.never {}
        }

        /// Deletes the objects of `digests`.
        ///
        /// # Errors
        /// None: no store exists in this build.
        pub async fn delete(&self, _digests: &[Digest]) -> Result<()> {
            match self.never {}
        }

        /// Deletes every object under the store's prefix.
        ///
        /// # Errors
        /// None: no store exists in this build.
        pub async fn purge(&self) -> Result<u64> {
            match self.never {}
        }
    }
}
