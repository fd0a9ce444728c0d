//! Crash-safe checkpoint generations on disk: every file checksummed in a manifest, a new
//! generation staged then swapped in, the previous one kept until the next save succeeds.

use crate::util::{atomic_write, fsync_dir};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

pub const LATEST: &str = "latest";
pub const PREVIOUS: &str = "previous";
/// The generators of the step that scored best in validation (`train --eval-every`).
pub const BEST: &str = "best";
const STAGING: &str = ".saving";
const TRASH: &str = ".trash";
pub const MANIFEST: &str = "manifest.toml";

/// The four networks of a CycleGAN checkpoint. Their names are this project's (G_AB translates
/// A→B and is judged by D_B) and name the checkpoint's files: `G_AB.safetensors`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Network {
    GAb,
    GBa,
    DA,
    DB,
    /// CUT's MLP heads (`netF`) that project encoder features for PatchNCE.
    F,
}

impl Network {
    pub const ALL: [Network; 4] = [Network::GAb, Network::GBa, Network::DA, Network::DB];
    pub const GENERATORS: [Network; 2] = [Network::GAb, Network::GBa];
    /// The networks of a CUT/FastCUT run: G_AB, its judge D_B and the PatchNCE heads.
    pub const ONE_SIDED: [Network; 3] = [Network::GAb, Network::DB, Network::F];

    pub const fn name(self) -> &'static str {
        match self {
            Network::GAb => "G_AB",
            Network::GBa => "G_BA",
            Network::DA => "D_A",
            Network::DB => "D_B",
            Network::F => "F",
        }
    }

    /// The file holding its weights in a generation folder.
    pub const fn file(self) -> &'static str {
        match self {
            Network::GAb => "G_AB.safetensors",
            Network::GBa => "G_BA.safetensors",
            Network::DA => "D_A.safetensors",
            Network::DB => "D_B.safetensors",
            Network::F => "F.safetensors",
        }
    }
}

/// What a generation folder holds, written last so that its presence means the files are complete.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Training steps completed when this generation was written.
    pub step: u64,
    /// File name → (CRC-32, length in bytes).
    pub files: BTreeMap<String, FileSum>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileSum {
    pub crc32: u32,
    pub bytes: u64,
}

/// A verified generation folder.
#[derive(Clone, Debug)]
pub struct Generation {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Set when the newest generation was unusable and an older one was chosen: says why.
    pub fallback_reason: Option<String>,
}

impl Generation {
    pub fn has(&self, file: &str) -> bool {
        self.manifest.files.contains_key(file)
    }

    /// Reads a file of this generation, checking its length and checksum against the manifest.
    pub fn read_verified(&self, file: &str) -> Result<Vec<u8>> {
        let path = self.dir.join(file);
        let sum = self
            .manifest
            .files
            .get(file)
            .with_context(|| format!("{} is not part of the checkpoint in {}", file, self.dir.display()))?;
        let bytes = fs::read(&path).with_context(|| format!("cannot read checkpoint file {}", path.display()))?;
        if bytes.len() as u64 != sum.bytes {
            bail!(
                "checkpoint file {} is truncated or altered: {} bytes, the manifest says {}",
                path.display(),
                bytes.len(),
                sum.bytes
            );
        }
        if crc32fast::hash(&bytes) != sum.crc32 {
            bail!("checkpoint file {} is corrupted: its checksum does not match the manifest", path.display());
        }
        Ok(bytes)
    }

    /// Loads the tensors of a safetensors file of this generation onto `device`.
    pub fn load_tensors(&self, file: &str, device: &Device) -> Result<HashMap<String, Tensor>> {
        let bytes = self.read_verified(file)?;
        candle_core::safetensors::load_buffer(&bytes, device)
            .with_context(|| format!("checkpoint file {} is not valid safetensors", self.dir.join(file).display()))
    }

    /// Checks every file of the generation.
    pub fn verify_all(&self) -> Result<()> {
        for f in self.manifest.files.keys() {
            self.read_verified(f)?;
        }
        Ok(())
    }
}

/// Serialises named tensors to safetensors bytes (moved to the CPU first).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::tensor::serialize(cpu.iter().map(|(n, t)| (n.as_str(), t)), None)?)
}

/// Writes a new generation into `run_dir`: stage every file, write the manifest, then swap
/// `latest` → `previous` and the staged folder → `latest`. A crash at any point leaves a
/// complete generation that [`load_generation`] finds.
pub fn save_generation(run_dir: &Path, step: u64, files: &[(String, Vec<u8>)]) -> Result<()> {
    fs::create_dir_all(run_dir).with_context(|| format!("cannot create checkpoint folder {}", run_dir.display()))?;
    let staging = run_dir.join(STAGING);
    let staged = stage(&staging, step, files);
    if staged.is_err() {
        // A half-staged folder has no manifest and is never trusted; remove it to free the space.
        let _ = fs::remove_dir_all(&staging);
        return staged;
    }

    let latest = run_dir.join(LATEST);
    let previous = run_dir.join(PREVIOUS);
    let trash = run_dir.join(TRASH);
    if latest.exists() {
        if previous.exists() {
            if trash.exists() {
                fs::remove_dir_all(&trash)?;
            }
            fs::rename(&previous, &trash).with_context(|| format!("cannot retire {}", previous.display()))?;
        }
        fs::rename(&latest, &previous).with_context(|| format!("cannot keep {} as previous", latest.display()))?;
    }
    fs::rename(&staging, &latest).with_context(|| format!("cannot publish {}", latest.display()))?;
    fsync_dir(run_dir)?;
    if trash.exists() {
        let _ = fs::remove_dir_all(&trash);
    }
    Ok(())
}

/// Writes every file and then the manifest into a fresh staging folder.
fn stage(staging: &Path, step: u64, files: &[(String, Vec<u8>)]) -> Result<()> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("cannot clear {}", staging.display()))?;
    }
    fs::create_dir(staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let mut manifest = Manifest { step, files: BTreeMap::new() };
    for (name, bytes) in files {
        atomic_write(&staging.join(name), bytes)?;
        manifest.files.insert(name.clone(), FileSum { crc32: crc32fast::hash(bytes), bytes: bytes.len() as u64 });
    }
    atomic_write(&staging.join(MANIFEST), toml::to_string(&manifest)?.as_bytes())
}

fn read_generation(dir: &Path) -> Result<Generation> {
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read_to_string(&manifest_path)
        .with_context(|| format!("no complete checkpoint in {} (missing {})", dir.display(), MANIFEST))?;
    let manifest: Manifest =
        toml::from_str(&text).with_context(|| format!("{} is corrupted", manifest_path.display()))?;
    let generation = Generation { dir: dir.to_path_buf(), manifest, fallback_reason: None };
    generation.verify_all()?;
    Ok(generation)
}

/// Finds the newest complete, verified generation of a run: `latest`, else a fully staged one
/// left by a crash during the swap, else `previous`.
pub fn load_generation(run_dir: &Path) -> Result<Generation> {
    let mut errors = Vec::new();
    let mut found: Vec<Generation> = Vec::new();
    for name in [LATEST, STAGING, PREVIOUS] {
        let dir = run_dir.join(name);
        if !dir.exists() {
            continue;
        }
        match read_generation(&dir) {
            Ok(g) => found.push(g),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // Among the valid ones, the furthest-trained wins (a staged folder can be newer than `previous`).
    let Some(mut best) = found.into_iter().max_by_key(|g| g.manifest.step) else {
        if errors.is_empty() {
            bail!("no checkpoint in {}", run_dir.display());
        }
        bail!("no usable checkpoint in {}: {}", run_dir.display(), errors.join("; "));
    };
    if best.dir.file_name().map(|n| n != LATEST).unwrap_or(true) || !errors.is_empty() {
        let why = if errors.is_empty() { "the latest one was incomplete".to_string() } else { errors.join("; ") };
        best.fallback_reason = Some(format!("using {} (step {}): {}", best.dir.display(), best.manifest.step, why));
    }
    Ok(best)
}

/// Replaces the run's `name` generation (e.g. [`BEST`]) with `files`: staged in `.NAME.saving`,
/// then swapped in. A crash leaves either the old or the new one complete (or, during the swap,
/// the staged one, which [`load_generation_named`] also accepts).
pub fn save_named_generation(run_dir: &Path, name: &str, step: u64, files: &[(String, Vec<u8>)]) -> Result<()> {
    fs::create_dir_all(run_dir).with_context(|| format!("cannot create checkpoint folder {}", run_dir.display()))?;
    let staging = run_dir.join(format!(".{name}.saving"));
    if let Err(e) = stage(&staging, step, files) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let target = run_dir.join(name);
    let trash = run_dir.join(format!(".{name}.trash"));
    if target.exists() {
        if trash.exists() {
            fs::remove_dir_all(&trash)?;
        }
        fs::rename(&target, &trash).with_context(|| format!("cannot retire {}", target.display()))?;
    }
    fs::rename(&staging, &target).with_context(|| format!("cannot publish {}", target.display()))?;
    fsync_dir(run_dir)?;
    let _ = fs::remove_dir_all(&trash);
    Ok(())
}

/// The generation a user asks for by name: `latest` (the newest verified one, as
/// [`load_generation`]) or `best` (kept by validation during training).
pub fn load_generation_named(run_dir: &Path, which: &str) -> Result<Generation> {
    match which {
        LATEST => load_generation(run_dir),
        BEST => {
            let dir = run_dir.join(BEST);
            if !dir.exists() {
                let staged = run_dir.join(format!(".{BEST}.saving"));
                if staged.join(MANIFEST).exists() {
                    return read_generation(&staged);
                }
                bail!("{} has no best generation (it is kept by training with --eval-every and --fid-weights)", run_dir.display());
            }
            read_generation(&dir)
        }
        other => bail!("unknown generation '{other}': use latest or best"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_rotate_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        save_generation(run, 1, &[("a.bin".into(), vec![1, 2, 3])]).unwrap();
        save_generation(run, 2, &[("a.bin".into(), vec![4, 5, 6, 7])]).unwrap();
        let g = load_generation(run).unwrap();
        assert_eq!(g.manifest.step, 2);
        assert!(g.fallback_reason.is_none());
        assert_eq!(g.read_verified("a.bin").unwrap(), vec![4, 5, 6, 7]);
        // Corrupt the latest: the previous generation is used, and the reason names the file.
        fs::write(run.join(LATEST).join("a.bin"), [9, 9, 9, 9]).unwrap();
        let g = load_generation(run).unwrap();
        assert_eq!(g.manifest.step, 1);
        assert!(g.fallback_reason.unwrap().contains("a.bin"));
        // Truncate the previous too: a clear error.
        fs::write(run.join(PREVIOUS).join("a.bin"), [1]).unwrap();
        let e = format!("{:#}", load_generation(run).unwrap_err());
        assert!(e.contains("truncated") && e.contains("corrupted"), "{e}");
    }

    #[test]
    fn crash_between_renames_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        save_generation(run, 1, &[("a.bin".into(), vec![1])]).unwrap();
        save_generation(run, 2, &[("a.bin".into(), vec![2])]).unwrap();
        // Simulate a kill after latest → previous but before staging → latest.
        fs::rename(run.join(PREVIOUS), run.join(TRASH)).unwrap();
        fs::rename(run.join(LATEST), run.join(PREVIOUS)).unwrap();
        let g = load_generation(run).unwrap();
        assert_eq!(g.manifest.step, 2);
        assert!(g.fallback_reason.is_some());
    }
}
