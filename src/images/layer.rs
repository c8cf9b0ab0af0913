//! Unit images written on the host as one image layer and handed to the engine's image-load API
//! (`POST /images/load`), instead of a container filled through the archive API and committed.
//!
//! Why: committing a container makes the engine compute the container's filesystem diff, and
//! storage drivers without a native diff (fuse-overlayfs, vfs, and overlay2 in some setups)
//! walk every file of the image to do it. A one-file change of a 100k-file tree then costs as
//! much as the tree. The layer written here holds just the change, and the engine only unpacks
//! it into a new layer directory.
//!
//! The archive is the engine's own save format with one layer in it: `manifest.json`, the image
//! config, and the new layer. The parent's layers are named in the manifest but not shipped: the
//! engine already holds them, looks each one up by chain id and reads a layer file only when it
//! lacks that layer. An engine that works otherwise refuses the archive, and the caller falls
//! back to committing a container.
//!
//! May not: read anything from a container, or ship a file the snapshot's tree does not hold (only
//! it and the whiteouts of what it no longer holds).

use std::collections::{HashMap, HashSet};
use std::io::Write;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::git::Repo;
use crate::snapshot::{self, ExtraLink, Layout, TarStats, TreeDiff, TreeEntry};

/// The directory a unit image holds the snapshot in, relative to the image's root.
pub const ROOT: &str = "work";

/// What the new layer holds: entries of the snapshot, extra links, and paths to white out.
pub struct LayerContent {
    pub entries: Vec<TreeEntry>,
    pub links: Vec<ExtraLink>,
    pub whiteouts: Vec<Vec<u8>>,
}

/// The parts of the parent image the new image's config is built from.
#[derive(Debug, Clone)]
pub struct Parent {
    /// The parent's layers (uncompressed digests), bottom first.
    pub diff_ids: Vec<String>,
    /// The parent's runtime config (`Env`, `Cmd`, `WorkingDir`, `User`, `Labels`, …), in the
    /// engine's JSON form.
    pub config: serde_json::Value,
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    /// The parent's history entries in the image-config form, oldest first.
    pub history: Vec<serde_json::Value>,
}

/// The deleted paths of `diff` that need a whiteout: those the new tree does not put anything
/// at. A new entry at a deleted path, or under it, hides the old one by itself, and a
/// whiteout there would hide the new entry as well.
pub fn whiteouts(diff: &TreeDiff) -> Vec<Vec<u8>> {
    let mut taken: HashSet<&[u8]> = HashSet::new();
    for e in &diff.upserted {
        taken.insert(&e.path);
        for (i, b) in e.path.iter().enumerate() {
            if *b == b'/' {
                taken.insert(&e.path[..i]);
            }
        }
    }
    diff.deleted
        .iter()
        .filter(|p| !taken.contains(p.as_slice()))
        .cloned()
        .collect()
}

/// History entries in the image-config form from the engine's history listing (newest first).
/// A listed size of zero is taken for an empty layer; when that does not give one entry per
/// layer, each layer gets a plain entry instead (history is informative only).
pub fn history_from_listing(
    listing: &[(i64, String, String, i64)],
    layers: usize,
) -> Vec<serde_json::Value> {
    let entries: Vec<serde_json::Value> = listing
        .iter()
        .rev()
        .map(|(created, created_by, comment, size)| {
            let mut h = serde_json::json!({
                "created": rfc3339(*created),
                "created_by": created_by,
            });
            if !comment.is_empty() {
                h["comment"] = comment.clone().into();
            }
            if *size == 0 {
                h["empty_layer"] = true.into();
            }
            h
        })
        .collect();
    let non_empty = entries
        .iter()
        .filter(|h| h.get("empty_layer").is_none())
        .count();
    if non_empty == layers {
        entries
    } else {
        (0..layers)
            .map(|i| serde_json::json!({ "created_by": format!("layer {} of the parent image", i + 1) }))
            .collect()
    }
}

fn rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The config of the new image: the parent's, with `labels` laid over its labels, `Cmd` and
/// `WorkingDir` set as a commit would set them, and the new layer appended.
pub fn image_config(
    parent: &Parent,
    labels: &HashMap<String, String>,
    diff_id: &str,
    created: std::time::SystemTime,
    created_by: &str,
) -> Vec<u8> {
    let mut config = parent.config.clone();
    if !config.is_object() {
        config = serde_json::json!({});
    }
    let mut all_labels: serde_json::Map<String, serde_json::Value> = config
        .get("Labels")
        .and_then(|l| l.as_object())
        .cloned()
        .unwrap_or_default();
    for (k, v) in labels {
        all_labels.insert(k.clone(), v.clone().into());
    }
    config["Labels"] = all_labels.into();
    config["Cmd"] = serde_json::json!(["/bin/sh"]);
    config["WorkingDir"] = "/work".into();
    let created = humantime::format_rfc3339_seconds(created).to_string();
    let mut history = parent.history.clone();
    history.push(serde_json::json!({ "created": created, "created_by": created_by }));
    let mut diff_ids = parent.diff_ids.clone();
    diff_ids.push(diff_id.to_string());
    let mut image = serde_json::json!({
        "architecture": parent.architecture,
        "os": parent.os,
        "created": created,
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": history,
    });
    if let Some(v) = &parent.variant {
        image["variant"] = v.clone().into();
    }
    serde_json::to_vec(&image).expect("a JSON value serialises")
}

/// The archive's `manifest.json`: one image, tagged `tag`, whose last layer is `layer_file`.
pub fn manifest(tag: &str, parent: &Parent, layer_file: &str, config_file: &str) -> Vec<u8> {
    let mut layers: Vec<String> = parent
        .diff_ids
        .iter()
        .map(|d| format!("{}/layer.tar", d.trim_start_matches("sha256:")))
        .collect();
    layers.push(layer_file.to_string());
    serde_json::to_vec(&serde_json::json!([{
        "Config": config_file,
        "RepoTags": [tag],
        "Layers": layers,
    }]))
    .expect("a JSON value serialises")
}

/// A `Write` that counts and hashes what passes through it.
struct Digesting<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hash.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Digesting<W> {
    fn new(inner: W) -> Self {
        Digesting {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (String, u64) {
        (
            format!("sha256:{}", hex::encode(self.hash.finalize())),
            self.len,
        )
    }
}

fn layer_tar<W: Write>(repo: &Repo, content: &LayerContent, out: W) -> Result<TarStats> {
    snapshot::write_tar_in(
        repo,
        &content.entries,
        &content.links,
        Layout {
            root: Some(ROOT),
            whiteouts: &content.whiteouts,
        },
        out,
    )
}

/// Writes the load archive for `content` on `parent`, tagged `tag`, to `out`; `config` makes
/// the image config from the layer's digest.
///
/// The archive's header for the layer needs the layer's size before its bytes, and the config
/// needs its digest: the layer tar is written twice, first only counted and hashed, then
/// streamed. Both passes read the same git objects into a deterministic tar, and the second
/// is checked against the first.
pub fn write_archive<W: Write>(
    repo: &Repo,
    content: &LayerContent,
    parent: &Parent,
    tag: &str,
    config: impl FnOnce(&str) -> Vec<u8>,
    out: W,
) -> Result<TarStats> {
    let mut probe = Digesting::new(std::io::sink());
    layer_tar(repo, content, &mut probe)?;
    let (diff_id, size) = probe.finish();
    let hex_id = diff_id.trim_start_matches("sha256:");
    let layer_file = format!("{hex_id}/layer.tar");
    let werr = |e: std::io::Error| Error::io("writing the image layer archive", e);

    let mut out = Digesting::new(out);
    let mut h = archive_header(&layer_file, size);
    h.set_cksum();
    out.write_all(h.as_bytes()).map_err(werr)?;
    let mut layer = Digesting::new(&mut out);
    let stats = layer_tar(repo, content, &mut layer)?;
    let (again, again_len) = layer.finish();
    if again != diff_id || again_len != size {
        return Err(Error::Internal(format!(
            "the image layer came out differently on its second writing ({diff_id}, {size} bytes, then {again}, {again_len} bytes)"
        )));
    }
    let pad = (512 - size % 512) % 512;
    out.write_all(&vec![0; pad as usize]).map_err(werr)?;

    let config = config(&diff_id);
    let config_file = format!("{}.json", hex::encode(Sha256::digest(&config)));
    let manifest = manifest(tag, parent, &layer_file, &config_file);
    let mut rest = tar::Builder::new(&mut out);
    for (name, data) in [
        (config_file.as_str(), &config[..]),
        ("manifest.json", &manifest[..]),
    ] {
        let mut h = archive_header(name, data.len() as u64);
        rest.append_data(&mut h, name, data).map_err(werr)?;
    }
    rest.into_inner().map_err(werr)?;
    out.flush().map_err(werr)?;
    Ok(stats)
}

fn archive_header(name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)
        .expect("archive member names are short and relative");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(snapshot::FIXED_MTIME);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::EntryKind;

    fn entry(path: &str) -> TreeEntry {
        TreeEntry {
            kind: EntryKind::File { executable: false },
            oid: "0".repeat(40),
            path: path.into(),
        }
    }

    fn parent() -> Parent {
        Parent {
            diff_ids: vec!["sha256:aa".into(), "sha256:bb".into()],
            config: serde_json::json!({
                "User": "box",
                "Env": ["HOME=/home/box"],
                "Cmd": ["bash"],
                "WorkingDir": "/",
                "Labels": { "boxdelegate.kind": "deps", "keep": "1" },
            }),
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            history: vec![
                serde_json::json!({"created_by": "a"}),
                serde_json::json!({"created_by": "b"}),
            ],
        }
    }

    #[test]
    fn whiteouts_skip_paths_the_new_tree_fills() {
        let diff = TreeDiff {
            deleted: vec![
                b"gone.txt".to_vec(),
                b"dir-now-file".to_vec(),
                b"file-now-dir".to_vec(),
                b"link".to_vec(),
                b"sub/old.txt".to_vec(),
            ],
            upserted: vec![
                entry("dir-now-file"),
                entry("file-now-dir/inside.txt"),
                entry("link"),
                entry("sub/new.txt"),
            ],
        };
        assert_eq!(
            whiteouts(&diff),
            vec![b"gone.txt".to_vec(), b"sub/old.txt".to_vec()]
        );
    }

    #[test]
    fn the_config_keeps_the_parent_s_settings_and_appends_the_layer() {
        let labels = HashMap::from([
            ("boxdelegate.kind".to_string(), "snap".to_string()),
            ("boxdelegate.tree".to_string(), "t".to_string()),
        ]);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400);
        let config: serde_json::Value =
            serde_json::from_slice(&image_config(&parent(), &labels, "sha256:cc", t, "x")).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:aa", "sha256:bb", "sha256:cc"])
        );
        assert_eq!(config["config"]["User"], "box");
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!(["HOME=/home/box"])
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
        assert_eq!(config["config"]["WorkingDir"], "/work");
        assert_eq!(
            config["config"]["Labels"],
            serde_json::json!({"boxdelegate.kind": "snap", "boxdelegate.tree": "t", "keep": "1"})
        );
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        assert_eq!(config["created"], "1970-01-02T00:00:00Z");
        assert_eq!(config["os"], "linux");
    }

    #[test]
    fn the_manifest_names_every_layer_and_ships_the_last() {
        let m: serde_json::Value = serde_json::from_slice(&manifest(
            "boxdelegate/snap:x",
            &parent(),
            "cc/layer.tar",
            "c.json",
        ))
        .unwrap();
        assert_eq!(
            m,
            serde_json::json!([{
                "Config": "c.json",
                "RepoTags": ["boxdelegate/snap:x"],
                "Layers": ["aa/layer.tar", "bb/layer.tar", "cc/layer.tar"],
            }])
        );
    }

    #[test]
    fn history_marks_empty_layers_or_falls_back_to_one_entry_per_layer() {
        let listing = vec![
            (200, "CMD".to_string(), String::new(), 0),
            (100, "ADD".to_string(), "c".to_string(), 5),
        ];
        let h = history_from_listing(&listing, 1);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0]["created_by"], "ADD");
        assert_eq!(h[0]["comment"], "c");
        assert!(h[0].get("empty_layer").is_none());
        assert_eq!(h[1]["empty_layer"], true);
        let fallback = history_from_listing(&listing, 3);
        assert_eq!(fallback.len(), 3);
        assert!(fallback.iter().all(|e| e.get("empty_layer").is_none()));
    }
}
