//! Which repositories use an image: a content-addressed image (a dependency image, a unit
//! image) may serve several repositories on one engine, so each repository that uses one adds
//! a tag of its own to it (`boxdelegate/r-<repo id>:<kind>-<key>`). Pruning or cleaning in a
//! repository removes only its own tags, and an image goes only when no repository's tag is
//! left on it: one user's prune never deletes another's cache.
//!
//! May not: remove an image another repository's tag holds; remove an image that has no
//! repository tag at all (those only go with `--all-repositories`).

use crate::engine::Engine;
use crate::error::Result;

/// The tag repository `repo_id` puts on image `canonical` (`boxdelegate/deps:KEY` →
/// `boxdelegate/r-ID:deps-KEY`).
pub fn use_tag(repo_id: &str, canonical: &str) -> Option<(String, String)> {
    let rest = canonical.strip_prefix("boxdelegate/")?;
    let (kind, key) = rest.split_once(':')?;
    Some((format!("boxdelegate/r-{repo_id}"), format!("{kind}-{key}")))
}

/// Whether `tag` is some repository's use tag.
pub fn is_use_tag(tag: &str) -> bool {
    tag.starts_with("boxdelegate/r-")
}

/// Records that repository `repo_id` uses each of `images` (canonical names).
pub async fn claim(engine: &Engine, repo_id: &str, images: &[&str]) -> Result<()> {
    for image in images {
        if let Some((repo, tag)) = use_tag(repo_id, image) {
            engine.tag_image(image, &repo, &tag).await?;
        }
    }
    Ok(())
}

/// What [`release`] did with an image.
#[derive(Debug, PartialEq, Eq)]
pub enum Released {
    /// The last use: the image is gone.
    Removed,
    /// Another repository still uses it: only this repository's tag went.
    StillUsed,
    /// This repository did not use it: nothing was done.
    NotOurs,
}

/// Repository `repo_id` no longer uses image `canonical`: its tag goes, and the image with it
/// when no other repository's tag is left.
pub async fn release(engine: &Engine, repo_id: &str, canonical: &str) -> Result<Released> {
    let Some((repo, tag)) = use_tag(repo_id, canonical) else {
        return Ok(Released::NotOurs);
    };
    let ours = format!("{repo}:{tag}");
    let tags = engine.image_tags(canonical).await?;
    if !tags.contains(&ours) {
        return Ok(Released::NotOurs);
    }
    engine.remove_image(&ours).await?;
    if tags.iter().any(|t| *t != ours && is_use_tag(t)) {
        return Ok(Released::StillUsed);
    }
    engine.remove_image(canonical).await?;
    Ok(Released::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_tags_round_trip() {
        let (repo, tag) = use_tag("0123456789ab", "boxdelegate/snap:abc-def").unwrap();
        assert_eq!(repo, "boxdelegate/r-0123456789ab");
        assert_eq!(tag, "snap-abc-def");
        assert_eq!(use_tag("x", "alpine:3"), None);
        assert!(is_use_tag("boxdelegate/r-0123456789ab:deps-k"));
        assert!(!is_use_tag("boxdelegate/deps:k"));
    }
}
