//! Backup of a running node and restore onto a new one.
//!
//! A backup is every stored document, each read through its writer (so each is exactly what
//! was acknowledged when it was read, however busy the node is), as lines of JSON: a header,
//! one line per document (`{"doc", "heads", "bytes"}`: its id, its heads as a resume token, and
//! its automerge save in base64), and a trailer with the count and the SHA-256 of every byte
//! before it. Documents are independent CRDTs, so a backup taken while the node serves is
//! consistent document by document; anything written after a document was read reaches the
//! restored node from its peers (the mesh syncs it) or is lost with the old node if it had
//! none.
//!
//! Restore verifies the checksum and every document (it must load, with the heads recorded),
//! then writes them into an empty data directory: the node started on it gets a new identity
//! (node id), so its peers sync with it afresh. Job queues and sync states are not in a backup:
//! a restored node starts with none.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use lectern_hub::Hub;
use lectern_model::{DocId, Replica};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The first line of every backup.
const MAGIC: &str = "lectern-backup/1";

/// Documents written to the store per batch during a restore.
const RESTORE_BATCH_DOCS: usize = 256;

/// The backup of `hub`'s documents, line by line, to `send` (a line is one document); stops
/// early if `send` says the reader has gone. The number of documents.
pub async fn write(hub: &Hub, mut send: impl AsyncLine) -> anyhow::Result<usize> {
    let mut sha = Sha256::new();
    let emit = |line: String, sha: &mut Sha256| {
        let line = line + "\n";
        sha.update(line.as_bytes());
        line
    };
    let ids = hub.store().doc_ids().context("list the stored documents")?;
    let header =
        json!({"backup": MAGIC, "node": hub.identity().node_id.to_string(), "docs": ids.len()});
    if !send.line(emit(header.to_string(), &mut sha)).await {
        return Ok(0);
    }
    let mut written = 0;
    for id in ids {
        let Ok(doc) = DocId::parse(&id) else {
            continue;
        };
        // Through the writer: what was acknowledged, never half a batch.
        let read = hub.read(doc, |r| (r.save(), r.token().to_string())).await;
        let Ok((bytes, heads)) = read else {
            // Gone since the listing (evicted documents load again; a deleted one is skipped).
            continue;
        };
        let line = json!({"doc": id, "heads": heads, "bytes": STANDARD.encode(bytes)});
        if !send.line(emit(line.to_string(), &mut sha)).await {
            return Ok(written);
        }
        written += 1;
    }
    let digest: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let trailer = json!({"end": true, "docs": written, "sha256": digest});
    send.line(format!("{trailer}\n")).await;
    Ok(written)
}

/// Where [`write`] sends its lines.
pub trait AsyncLine: Send {
    /// Sends one line; false when the reader has gone.
    fn line(&mut self, line: String) -> impl Future<Output = bool> + Send;
}

impl AsyncLine for tokio::sync::mpsc::Sender<String> {
    async fn line(&mut self, line: String) -> bool {
        self.send(line).await.is_ok()
    }
}

/// What a backup file holds, once verified.
#[derive(Debug)]
pub struct Verified {
    /// The node it was taken from.
    pub node: String,
    /// Its documents: id, heads (a resume token), automerge bytes.
    pub docs: Vec<(DocId, String, Vec<u8>)>,
}

/// Reads and verifies a backup: the checksum, the count, and every document (it loads, and its
/// heads are the ones recorded).
pub fn verify(path: &Path) -> anyhow::Result<Verified> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut sha = Sha256::new();
    let mut node = None;
    let mut docs = Vec::new();
    let mut trailer = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("read {}", path.display()))?;
        if trailer.is_some() {
            bail!("line {}: data after the end of the backup", n + 1);
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON: the backup is damaged", n + 1))?;
        if n == 0 {
            if v["backup"] != MAGIC {
                bail!("{} is not a Lectern backup ({MAGIC})", path.display());
            }
            node = v["node"].as_str().map(str::to_owned);
        } else if v["end"] == true {
            trailer = Some(v);
            continue;
        } else {
            let id = v["doc"]
                .as_str()
                .context("a document line without its id")?;
            let doc = DocId::parse(id).map_err(|e| anyhow::anyhow!("document {id:?}: {e}"))?;
            let heads = v["heads"].as_str().unwrap_or_default().to_owned();
            let bytes = STANDARD
                .decode(v["bytes"].as_str().unwrap_or_default())
                .with_context(|| format!("{id}: its bytes are not base64"))?;
            docs.push((doc, heads, bytes));
        }
        sha.update(line.as_bytes());
        sha.update(b"\n");
    }
    let trailer = trailer.context("the backup has no end: it was cut short")?;
    let digest: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if trailer["sha256"].as_str() != Some(digest.as_str()) {
        bail!("the backup's checksum does not match: it is damaged");
    }
    if trailer["docs"].as_u64() != Some(docs.len() as u64) {
        bail!("the backup's count does not match its documents");
    }
    for (doc, heads, bytes) in &docs {
        let replica = Replica::load(doc.clone(), bytes, &[0u8; 16])
            .map_err(|e| anyhow::anyhow!("{doc}: does not load: {e}"))?;
        if replica.token().to_string() != *heads {
            bail!("{doc}: its heads are not the ones recorded");
        }
    }
    Ok(Verified {
        node: node.unwrap_or_default(),
        docs,
    })
}

/// Restores a verified backup into `data_dir`, which must hold no documents yet (a node that
/// starts on it has a new identity). The number of documents written.
pub fn restore(backup: &Verified, data_dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let store = lectern_store::Store::open(data_dir)
        .with_context(|| format!("open a store in {}", data_dir.display()))?;
    if !store.doc_ids().context("list the store")?.is_empty() {
        bail!(
            "{} already holds documents: restore into a new data directory",
            data_dir.display()
        );
    }
    for chunk in backup.docs.chunks(RESTORE_BATCH_DOCS) {
        let mut batch = lectern_store::Batch::new();
        for (doc, _, bytes) in chunk {
            let replica = Replica::load(doc.clone(), bytes, &[0u8; 16])
                .map_err(|e| anyhow::anyhow!("{doc}: does not load: {e}"))?;
            let key = doc.to_string();
            batch.put_heads(&key, lectern_hub::heads_digest(&replica.doc().get_heads()));
            batch.put_snapshot(&key, bytes.clone(), 0);
        }
        store
            .commit(batch)
            .context("write the restored documents")?;
    }
    Ok(backup.docs.len())
}
