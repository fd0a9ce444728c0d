//! A dataset on disk (`trainA/`, `trainB/`, `testA/`, `testB/`, `dataset.toml`): opening, checking,
//! summarising.

use super::image_io::{decode_image, has_image_extension, image_dimensions};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use walkdir::WalkDir;

pub const SPEC_FILE: &str = "dataset.toml";

/// One domain's name and channel count as `dataset.toml` gives them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub name: String,
    #[serde(default = "default_channels")]
    pub channels: usize,
}

fn default_channels() -> usize {
    3
}

/// The optional `dataset.toml` of a dataset folder. Without it a folder in the reference layout
/// (`trainA/ trainB/ testA/ testB/`) has domains named `A` and `B`, both RGB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub a: DomainSpec,
    pub b: DomainSpec,
    /// Both domains hold the same file names, and same-named files show the same scene.
    #[serde(default)]
    pub paired: bool,
    /// Free text: where the images came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            a: DomainSpec { name: "A".into(), channels: 3 },
            b: DomainSpec { name: "B".into(), channels: 3 },
            paired: false,
            source: None,
        }
    }
}

impl DatasetSpec {
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let spec: Self = toml::from_str(text).with_context(|| format!("{}: invalid dataset manifest", path.display()))?;
        spec.validate().with_context(|| format!("{}: invalid dataset manifest", path.display()))?;
        Ok(spec)
    }

    pub fn validate(&self) -> Result<()> {
        for d in [&self.a, &self.b] {
            if d.name.trim().is_empty() || d.name.len() > 64 || d.name.chars().any(|c| c.is_control() || c == '/' || c == '\\') {
                bail!("domain name {:?} must be 1-64 characters without slashes", d.name);
            }
            if d.channels != 1 && d.channels != 3 {
                bail!("domain '{}' has {} channels; 1 (grey) or 3 (colour) are supported", d.name, d.channels);
            }
        }
        if self.a.name == self.b.name {
            bail!("both domains are named '{}'", self.a.name);
        }
        Ok(())
    }
}

/// How thoroughly to check files while scanning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Read only the header (fast; truncated data is found when the image is loaded).
    Header,
    /// Decode every image completely.
    Full,
}

/// The images found under one folder and the files that could not be used.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Usable images, sorted by path, with their (width, height).
    pub images: Vec<(PathBuf, (u32, u32))>,
    /// Files or folders that could not be read, with the reason.
    pub problems: Vec<(PathBuf, String)>,
    /// Files skipped because they are not images by extension (licence files, notes, …).
    pub ignored: usize,
}

impl ScanReport {
    pub fn paths(&self) -> Vec<PathBuf> {
        self.images.iter().map(|(p, _)| p.clone()).collect()
    }

    /// The median (width, height), or None without images.
    pub fn typical_size(&self) -> Option<(u32, u32)> {
        if self.images.is_empty() {
            return None;
        }
        let mut w: Vec<u32> = self.images.iter().map(|(_, s)| s.0).collect();
        let mut h: Vec<u32> = self.images.iter().map(|(_, s)| s.1).collect();
        w.sort_unstable();
        h.sort_unstable();
        Some((w[w.len() / 2], h[h.len() / 2]))
    }
}

/// Recursively lists the images under `dir` (following symbolic links, with loops reported,
/// not followed forever), checking each one.
pub fn scan_folder(dir: &Path, check: Check) -> ScanReport {
    let mut report = ScanReport::default();
    let mut candidates = Vec::new();
    for entry in WalkDir::new(dir).follow_links(true).sort_by_file_name() {
        match entry {
            Ok(e) if e.file_type().is_file() => {
                if has_image_extension(e.path()) {
                    candidates.push(e.into_path());
                } else {
                    report.ignored += 1;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| dir.to_path_buf());
                let why = if e.loop_ancestor().is_some() {
                    "symbolic link loop (not followed)".to_string()
                } else {
                    e.io_error().map(|io| io.to_string()).unwrap_or_else(|| e.to_string())
                };
                report.problems.push((path, why));
            }
        }
    }
    let checked: Vec<(PathBuf, Result<(u32, u32)>)> = candidates
        .into_par_iter()
        .map(|p| {
            let r = match check {
                Check::Header => image_dimensions(&p),
                Check::Full => decode_image(&p).map(|i| (i.width(), i.height())),
            };
            (p, r)
        })
        .collect();
    for (p, r) in checked {
        match r {
            Ok(size) => report.images.push((p, size)),
            Err(e) => {
                let msg = format!("{e:#}");
                // The decoder's message starts with the path; keep only the reason.
                let prefix = format!("{}: ", p.display());
                let reason = msg.strip_prefix(&prefix).unwrap_or(&msg).to_string();
                report.problems.push((p, reason));
            }
        }
    }
    report
}

/// One domain of an opened dataset.
#[derive(Clone, Debug)]
pub struct Domain {
    pub spec: DomainSpec,
    pub train: ScanReport,
    pub test: ScanReport,
}

/// A two-domain dataset folder: `trainA/ trainB/ [testA/ testB/] [dataset.toml]`.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    pub spec: DatasetSpec,
    pub a: Domain,
    pub b: Domain,
}

impl Dataset {
    /// Reads only the spec (names, channels) without scanning images.
    pub fn read_spec(root: &Path) -> Result<DatasetSpec> {
        let spec_path = root.join(SPEC_FILE);
        if spec_path.exists() {
            let text = std::fs::read_to_string(&spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
            DatasetSpec::parse(&text, &spec_path)
        } else {
            Ok(DatasetSpec::default())
        }
    }

    pub fn open(root: &Path, check: Check) -> Result<Self> {
        if !root.is_dir() {
            bail!("dataset folder {} does not exist", root.display());
        }
        for sub in ["trainA", "trainB"] {
            if !root.join(sub).is_dir() {
                bail!(
                    "{} is not a dataset: it has no {sub}/ folder (expected trainA/ trainB/ [testA/ testB/] and an optional {SPEC_FILE})",
                    root.display()
                );
            }
        }
        let spec = Self::read_spec(root)?;
        let scan = |sub: &str| {
            let d = root.join(sub);
            if d.is_dir() {
                scan_folder(&d, check)
            } else {
                ScanReport::default()
            }
        };
        let a = Domain { spec: spec.a.clone(), train: scan("trainA"), test: scan("testA") };
        let b = Domain { spec: spec.b.clone(), train: scan("trainB"), test: scan("testB") };
        Ok(Self { root: root.to_path_buf(), spec, a, b })
    }

    /// The domain with this name, as (is_b, domain).
    pub fn domain(&self, name: &str) -> Option<(bool, &Domain)> {
        if self.a.spec.name == name {
            Some((false, &self.a))
        } else if self.b.spec.name == name {
            Some((true, &self.b))
        } else {
            None
        }
    }

    /// All unusable files across the four folders.
    pub fn problems(&self) -> Vec<&(PathBuf, String)> {
        [&self.a.train, &self.a.test, &self.b.train, &self.b.test]
            .into_iter()
            .flat_map(|r| r.problems.iter())
            .collect()
    }

    /// A human-readable summary (used by `dataset info` and the studio).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "dataset {}", self.root.display());
        if self.spec.paired {
            let _ = writeln!(s, "  paired: same file names in both domains show the same scene");
        }
        for (label, d) in [("A", &self.a), ("B", &self.b)] {
            let size = |r: &ScanReport| r.typical_size().map(|(w, h)| format!(", typically {w}x{h}")).unwrap_or_default();
            let _ = writeln!(
                s,
                "  domain {label} '{}' ({} channel{}): train {}{}, test {}{}",
                d.spec.name,
                d.spec.channels,
                if d.spec.channels == 1 { "" } else { "s" },
                d.train.images.len(),
                size(&d.train),
                d.test.images.len(),
                size(&d.test)
            );
        }
        let problems = self.problems();
        if problems.is_empty() {
            let _ = writeln!(s, "  no unreadable files");
        } else {
            let _ = writeln!(s, "  {} unreadable file(s), skipped:", problems.len());
            for (p, why) in problems {
                let _ = writeln!(s, "    {}: {}", p.display(), why);
            }
        }
        s
    }
}
