//! Where the cluster and the AWS deployment keep the bytes of files: an S3-compatible bucket
//! (AWS S3, MinIO, an emulator). The embedded default keeps them in its data directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use parlor_core::NodeId;
use parlor_s3::{S3BlobStore, S3Options};

/// Flags or environment only; credentials come from the environment as the AWS SDK finds
/// them (`AWS_ACCESS_KEY_ID`…, the ECS task role, the instance profile).
#[derive(Args, Clone, Debug, Default)]
pub struct BlobSettings {
    #[arg(long, env = "PARLOR_S3_BUCKET", default_value = "parlor-files")]
    pub s3_bucket: String,
    /// `None`: AWS S3. MinIO's or an emulator's URL otherwise.
    #[arg(long, env = "PARLOR_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, env = "PARLOR_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Path-style URLs (`endpoint/bucket/key`): MinIO and the emulators want them.
    #[arg(long, env = "PARLOR_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Put before every blob's key, to share a bucket.
    #[arg(long, env = "PARLOR_S3_PREFIX", default_value = "blobs")]
    pub s3_prefix: String,
    /// Creates the bucket if it is missing (an emulator, a developer's MinIO).
    #[arg(long, env = "PARLOR_S3_CREATE_BUCKET")]
    pub s3_create_bucket: bool,
    /// Where uploads are staged while they arrive (by default a directory of this process's
    /// own under the system's temporary directory).
    #[arg(long, env = "PARLOR_UPLOAD_DIR")]
    pub upload_dir: Option<PathBuf>,
}

impl BlobSettings {
    pub async fn open(&self) -> anyhow::Result<Arc<S3BlobStore>> {
        let mut options = S3Options::new(&self.s3_region, &self.s3_bucket);
        options.endpoint = self.s3_endpoint.clone();
        options.path_style = self.s3_path_style;
        options.key_prefix = self.s3_prefix.clone();
        options.create_bucket = self.s3_create_bucket;
        let store = S3BlobStore::open(&options)
            .await
            .with_context(|| format!("cannot use the S3 bucket {}", self.s3_bucket))?;
        Ok(Arc::new(store))
    }

    /// The staging directory of the process `node`, created empty.
    pub fn staging_dir(&self, node: NodeId) -> anyhow::Result<PathBuf> {
        let dir = match &self.upload_dir {
            Some(dir) => dir.join(format!("node-{node}")),
            None => std::env::temp_dir().join(format!("parlor-uploads-{node}")),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the upload directory {}", dir.display()))?;
        Ok(dir)
    }
}
