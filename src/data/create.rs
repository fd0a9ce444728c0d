//! `dataset create`: a dataset folder from colour photos (grey ↔ colour) or from two folders.

use super::dataset::{scan_folder, Check, DatasetSpec, DomainSpec, SPEC_FILE};
use super::image_io::{decode_image, Pixels};
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, DynamicImage};
use std::fs;
use std::path::{Path, PathBuf};

/// Options shared by the dataset builders.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Percentage of source images held out for testing (by a hash of the file's relative path,
    /// so the split does not change when other files are added).
    pub test_percent: u32,
    /// Downscale images whose longer side exceeds this (0 keeps the original size).
    pub max_side: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self { test_percent: 10, max_side: 0 }
    }
}

/// What a builder did, for the user.
#[derive(Debug, Default)]
pub struct CreateReport {
    pub root: PathBuf,
    pub counts: [usize; 4], // trainA, trainB, testA, testB
    pub skipped: Vec<(PathBuf, String)>,
}

impl CreateReport {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "created {}: trainA {}, trainB {}, testA {}, testB {}",
            self.root.display(),
            self.counts[0],
            self.counts[1],
            self.counts[2],
            self.counts[3]
        );
        for (p, why) in &self.skipped {
            s.push_str(&format!("\n  skipped {}: {}", p.display(), why));
        }
        s
    }
}

fn is_test(rel: &Path, percent: u32) -> bool {
    crc32fast::hash(rel.to_string_lossy().as_bytes()) % 100 < percent
}

/// A file name that is unique within the dataset and safe on every platform, from a path
/// relative to the source folder: `sub/dir/photo 1.jpg` → `sub_dir_photo 1`.
fn flat_stem(rel: &Path) -> String {
    let no_ext = rel.with_extension("");
    let s: String = no_ext
        .to_string_lossy()
        .chars()
        .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
        .collect();
    if s.is_empty() { "image".into() } else { s }
}

fn prepare_root(datasets_root: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("dataset name '{name}' must be a plain folder name");
    }
    let root = datasets_root.join(name);
    if root.exists() && fs::read_dir(&root)?.next().is_some() {
        bail!("{} already exists and is not empty; choose another name", root.display());
    }
    for sub in ["trainA", "trainB", "testA", "testB"] {
        fs::create_dir_all(root.join(sub)).with_context(|| format!("cannot create {}", root.join(sub).display()))?;
    }
    Ok(root)
}

fn limit_size(img: DynamicImage, max_side: u32) -> DynamicImage {
    if max_side == 0 || img.width().max(img.height()) <= max_side {
        return img;
    }
    img.resize(max_side, max_side, FilterType::CatmullRom)
}

fn write_image(path: &Path, img: &DynamicImage) -> Result<()> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let format = if path.extension().is_some_and(|e| e == "jpg") {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    img.write_to(&mut buf, format).with_context(|| format!("cannot encode {}", path.display()))?;
    atomic_write(path, &buf.into_inner())
}

/// Grey↔colour dataset from a folder of colour photos. Domain A `gray` (1 channel), B `color`.
/// Unpaired (default): alternate training photos go to A (as grey) or B (as colour), so no scene
/// appears in both. Paired: every training photo appears in both, under the same name. The test
/// split always holds each test photo in both domains, so translations can be scored.
pub fn gray2color(datasets_root: &Path, name: &str, photos: &Path, paired: bool, opts: &CreateOptions) -> Result<CreateReport> {
    if !photos.is_dir() {
        bail!("{} is not a folder", photos.display());
    }
    let scan = scan_folder(photos, Check::Header);
    if scan.images.is_empty() {
        bail!("no readable images in {}", photos.display());
    }
    let root = prepare_root(datasets_root, name)?;
    let mut report = CreateReport { root: root.clone(), skipped: scan.problems.clone(), ..Default::default() };
    let mut train_index = 0usize;
    for (path, _) in &scan.images {
        let rel = path.strip_prefix(photos).unwrap_or(path);
        let img = match decode_image(path) {
            Ok(i) => limit_size(i, opts.max_side),
            Err(e) => {
                report.skipped.push((path.clone(), format!("{e:#}")));
                continue;
            }
        };
        let stem = flat_stem(rel);
        let (grey, _) = Pixels::from_image(&img, 1)?;
        let grey = grey.to_image(None);
        let colour = DynamicImage::ImageRgb8(img.to_rgb8());
        let test = is_test(rel, opts.test_percent);
        let (to_a, to_b) = if test || paired {
            (true, true)
        } else {
            train_index += 1;
            (!train_index.is_multiple_of(2), train_index.is_multiple_of(2))
        };
        let split = if test { "test" } else { "train" };
        if to_a {
            write_image(&root.join(format!("{split}A")).join(format!("{stem}.png")), &grey)?;
            report.counts[if test { 2 } else { 0 }] += 1;
        }
        if to_b {
            write_image(&root.join(format!("{split}B")).join(format!("{stem}.jpg")), &colour)?;
            report.counts[if test { 3 } else { 1 }] += 1;
        }
    }
    let spec = DatasetSpec {
        a: DomainSpec { name: "gray".into(), channels: 1 },
        b: DomainSpec { name: "color".into(), channels: 3 },
        paired,
        source: Some(format!("grey/colour versions of {}", photos.display())),
    };
    atomic_write(&root.join(SPEC_FILE), toml::to_string(&spec)?.as_bytes())?;
    Ok(report)
}

/// Two folders as two domains, each split into train/test by the same hash rule. Files are hard
/// linked where possible (no extra disk), copied otherwise; the sources are never modified.
pub fn from_domains(
    datasets_root: &Path,
    name: &str,
    dirs: [&Path; 2],
    names: [&str; 2],
    channels: [usize; 2],
    opts: &CreateOptions,
) -> Result<CreateReport> {
    let spec = DatasetSpec {
        a: DomainSpec { name: names[0].into(), channels: channels[0] },
        b: DomainSpec { name: names[1].into(), channels: channels[1] },
        paired: false,
        source: Some(format!("{} and {}", dirs[0].display(), dirs[1].display())),
    };
    spec.validate()?;
    let scans: Vec<_> = dirs
        .iter()
        .map(|d| {
            if !d.is_dir() {
                bail!("{} is not a folder", d.display());
            }
            let s = scan_folder(d, Check::Header);
            if s.images.is_empty() {
                bail!("no readable images in {}", d.display());
            }
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let root = prepare_root(datasets_root, name)?;
    let mut report = CreateReport { root: root.clone(), ..Default::default() };
    for (side, (dir, scan)) in dirs.iter().zip(&scans).enumerate() {
        report.skipped.extend(scan.problems.iter().cloned());
        let letter = if side == 0 { "A" } else { "B" };
        for (path, (w, h)) in &scan.images {
            let rel = path.strip_prefix(dir).unwrap_or(path);
            let test = is_test(rel, opts.test_percent);
            let split = if test { "test" } else { "train" };
            let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
            let dst_dir = root.join(format!("{split}{letter}"));
            let too_big = opts.max_side > 0 && (*w).max(*h) > opts.max_side;
            if too_big {
                let dst = dst_dir.join(format!("{}.png", flat_stem(rel)));
                match decode_image(path) {
                    Ok(img) => write_image(&dst, &limit_size(img, opts.max_side))?,
                    Err(e) => {
                        report.skipped.push((path.clone(), format!("{e:#}")));
                        continue;
                    }
                }
            } else {
                let dst = dst_dir.join(format!("{}.{ext}", flat_stem(rel)));
                if fs::hard_link(path, &dst).is_err() {
                    fs::copy(path, &dst).with_context(|| format!("cannot copy {} to {}", path.display(), dst.display()))?;
                }
            }
            report.counts[side + if test { 2 } else { 0 }] += 1;
        }
    }
    atomic_write(&root.join(SPEC_FILE), toml::to_string(&spec)?.as_bytes())?;
    Ok(report)
}
