//! `convert`: translating a folder tree into another, skipping and reporting broken files,
//! never overwriting an input, in shards for several processes.

use super::{translate_batch, Translator};
use crate::data::image_io::{has_image_extension, png_bytes};
use crate::data::decode_image;
use crate::util::atomic_write;
use anyhow::{bail, Context, Result};
use image::DynamicImage;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};
use walkdir::WalkDir;

#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Target domain name.
    pub to: String,
    /// Redo outputs that already exist (otherwise they are skipped, which makes re-runs resume).
    pub overwrite: bool,
    /// Images of one size translated together.
    pub batch: usize,
    /// Convert only this part of the tree.
    pub shard: Option<Shard>,
    /// Set (by a signal handler) to stop after the images in hand: their outputs are written,
    /// the rest left for a re-run, which skips what exists.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// Part K of N of a folder tree (K from 1 to N): the files whose path relative to the tree's
/// root hashes to K−1 modulo N. The split depends only on those paths, so N processes given
/// K = 1..N convert disjoint parts whose union is the whole tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Whether item `n` of a numbered list (a sweep's trials) belongs to this shard.
    pub fn owns(&self, n: u64) -> bool {
        n % self.count == self.index - 1
    }

    /// Whether the file at `rel` (relative to the tree's root) belongs to this shard.
    pub fn contains(&self, rel: &Path) -> bool {
        // FNV-1a over the path with '/' separators, so every platform splits a tree alike.
        let key = rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
        hash % self.count == self.index - 1
    }
}

impl Shard {
    /// `auto` or `auto/N`: this process's shard from the job scheduler's environment (`env`
    /// looks a variable up). A Slurm job array gives K and N: K = (SLURM_ARRAY_TASK_ID −
    /// SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP + 1, N = SLURM_ARRAY_TASK_COUNT (or from
    /// _MAX), so arrays starting at 0 or 1 and stepped ranges all work. A Kubernetes Indexed Job
    /// gives K = JOB_COMPLETION_INDEX + 1 and needs N in `auto/N` (its completions).
    pub fn from_scheduler(spec: &str, env: impl Fn(&str) -> Option<String>) -> std::result::Result<Self, String> {
        let given_n = match spec.strip_prefix("auto") {
            Some("") => None,
            Some(rest) => Some(rest.strip_prefix('/').and_then(|n| n.trim().parse::<u64>().ok()).filter(|n| *n > 0).ok_or_else(|| format!("'{spec}': give auto or auto/N with N ≥ 1"))?),
            None => return Err(format!("'{spec}' is not auto or auto/N")),
        };
        let num = |name: &str| -> std::result::Result<Option<u64>, String> {
            env(name).map(|v| v.trim().parse::<u64>().map_err(|_| format!("{name}={v} is not a number"))).transpose()
        };
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = given_n.ok_or("--shard auto: Kubernetes' JOB_COMPLETION_INDEX is set but not the number of parts: give --shard auto/N with N the Job's completions")?;
            if index >= count {
                return Err(format!("JOB_COMPLETION_INDEX {index} is not below {count} (--shard auto/{count})"));
            }
            return Ok(Self { index: index + 1, count });
        }
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let count = match (num("SLURM_ARRAY_TASK_COUNT")?, num("SLURM_ARRAY_TASK_MAX")?) {
                (Some(c), _) => c,
                (None, Some(max)) => max.saturating_sub(min) / step + 1,
                (None, None) => return Err("--shard auto: SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT or _MAX".into()),
            };
            let count = given_n.unwrap_or(count);
            let offset = id.checked_sub(min).filter(|o| o % step == 0).map(|o| o / step);
            return match offset {
                Some(o) if o < count => Ok(Self { index: o + 1, count }),
                _ => Err(format!(
                    "--shard auto: Slurm array task {id} is not one of {count} tasks from {min} in steps of {step}; arrays must be ranges (--array=A-B or A-B:S)"
                )),
            };
        }
        Err("--shard auto: not in a Slurm job array (no SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (no JOB_COMPLETION_INDEX); give --shard K/N".into())
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.starts_with("auto") {
            let shard = Self::from_scheduler(s, |name| std::env::var(name).ok())?;
            eprintln!("--shard {s}: part {shard} from the scheduler's environment");
            return Ok(shard);
        }
        let bad = || format!("'{s}' is not a shard: give K/N with 1 ≤ K ≤ N, e.g. 2/8, or auto (a Slurm job array; auto/N for a Kubernetes Indexed Job)");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (k.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[derive(Debug, Default)]
pub struct ConvertSummary {
    pub converted: usize,
    /// Outputs that already existed.
    pub skipped_existing: usize,
    /// Files that are not images (by extension), left alone.
    pub not_images: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
    /// Images not converted because the conversion was stopped (`ConvertOptions::stop`).
    pub left: usize,
}

impl ConvertSummary {
    pub fn report(&self) -> String {
        let mut s = format!(
            "converted {}, skipped {} (already done), {} not images, failed {} in {:.1} s",
            self.converted,
            self.skipped_existing,
            self.not_images.len(),
            self.failed.len(),
            self.elapsed.as_secs_f64()
        );
        for (p, why) in &self.failed {
            s.push_str(&format!("\n  failed {}: {why}", p.display()));
        }
        if self.left > 0 {
            s.push_str(&format!("\nstopped with {} image(s) left: run the same command again to convert them", self.left));
        }
        s
    }
}

/// One planned conversion.
struct Job {
    input: PathBuf,
    output: PathBuf,
}

/// Lists the images under `in_dir` (never descending into `out_dir`) and where each output
/// goes: the same relative folder under `out_dir`, named `STEM.png` (`NAME.EXT.png` where two
/// inputs share a stem). With a `shard`, only that part of the tree (names are still chosen
/// looking at the whole tree, so every shard names its outputs as an unsharded run would).
fn plan(in_dir: &Path, out_dir: &Path, shard: Option<Shard>, summary: &mut ConvertSummary) -> Result<Vec<Job>> {
    let out_canon = out_dir.canonicalize()?;
    let mut found = Vec::new();
    let walker = WalkDir::new(in_dir).follow_links(true).sort_by_file_name().into_iter().filter_entry(|e| {
        e.path().canonicalize().map(|c| c != out_canon).unwrap_or(true)
    });
    for entry in walker {
        match entry {
            Ok(e) if e.file_type().is_file() => {
                if has_image_extension(e.path()) {
                    found.push(e.into_path());
                } else {
                    summary.not_images.push(e.into_path());
                }
            }
            Ok(_) => {}
            Err(e) => {
                let p = e.path().map(Path::to_path_buf).unwrap_or_else(|| in_dir.to_path_buf());
                let why = if e.loop_ancestor().is_some() { "symbolic link loop (not followed)".into() } else { e.to_string() };
                summary.failed.push((p, why));
            }
        }
    }
    let mut stems: HashMap<PathBuf, usize> = HashMap::new();
    for p in &found {
        *stems.entry(p.with_extension("")).or_default() += 1;
    }
    let inputs: HashSet<PathBuf> = found.iter().filter_map(|p| p.canonicalize().ok()).collect();
    if let Some(shard) = shard {
        let mine = |p: &PathBuf| shard.contains(p.strip_prefix(in_dir).unwrap_or(p));
        found.retain(mine);
        summary.not_images.retain(mine);
        summary.failed.retain(|(p, _)| mine(p));
    }
    let mut jobs = Vec::with_capacity(found.len());
    for input in found {
        let rel = input.strip_prefix(in_dir).context("walked outside the input folder")?;
        let name = if stems[&input.with_extension("")] > 1 {
            format!("{}.png", rel.file_name().unwrap_or_default().to_string_lossy())
        } else {
            format!("{}.png", rel.file_stem().unwrap_or_default().to_string_lossy())
        };
        let output = out_dir.join(rel.parent().unwrap_or(Path::new(""))).join(name);
        if output.canonicalize().map(|c| inputs.contains(&c)).unwrap_or(false) {
            summary.failed.push((input, format!("its output {} would overwrite an input file", output.display())));
            continue;
        }
        jobs.push(Job { input, output });
    }
    Ok(jobs)
}

/// Progress of a conversion: (images done, images to do, images per second).
pub type ConvertProgress<'a> = &'a mut dyn FnMut(usize, usize, f64);

/// The decoder thread: `todo` in chunks of `batch`, each decoded in parallel (a broken file
/// becomes its error, reported with the others), until the receiver is gone.
fn decode_in_batches(mut todo: Vec<Job>, batch: usize, tx: SyncSender<Vec<(Job, Result<DynamicImage>)>>) {
    while !todo.is_empty() {
        let chunk: Vec<Job> = todo.drain(..batch.min(todo.len())).collect();
        let decoded = chunk.into_par_iter().map(|j| {
            let img = decode_image(&j.input);
            (j, img)
        }).collect();
        if tx.send(decoded).is_err() {
            return;
        }
    }
}

/// The writer thread: each translation as a PNG, written atomically (folders created); returns
/// the files that could not be written, with why, and how many were.
fn write_outputs(rx: Receiver<(Job, DynamicImage)>) -> (Vec<(PathBuf, String)>, usize) {
    let mut failed = Vec::new();
    let mut converted = 0;
    for (job, img) in rx {
        let write = || -> Result<()> {
            if let Some(dir) = job.output.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            atomic_write(&job.output, &png_bytes(&img)?)
        };
        match write() {
            Ok(()) => converted += 1,
            Err(e) => failed.push((job.input, format!("{e:#}"))),
        }
    }
    (failed, converted)
}

/// Translates every image under `in_dir` into `out_dir`, mirroring the folder tree. Decoding
/// runs on worker threads ahead of the network, encoding and writing behind it. A broken file is
/// recorded and skipped; existing outputs are skipped unless `overwrite`; inputs are never
/// written.
pub fn convert_folder(tr: &Translator, in_dir: &Path, out_dir: &Path, opts: &ConvertOptions, progress: ConvertProgress) -> Result<ConvertSummary> {
    if !in_dir.is_dir() {
        bail!("{} is not a folder", in_dir.display());
    }
    let (g, cin, _) = tr.generator_to(&opts.to)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    if out_dir.canonicalize()? == in_dir.canonicalize()? {
        bail!("the output folder must differ from the input folder (inputs are never overwritten)");
    }
    let started = Instant::now();
    let mut summary = ConvertSummary::default();
    let jobs = plan(in_dir, out_dir, opts.shard, &mut summary)?;
    let (todo, done): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| opts.overwrite || !j.output.exists());
    summary.skipped_existing = done.len();
    let total = todo.len();
    let batch = opts.batch.max(1);

    let (dec_tx, dec_rx) = sync_channel::<Vec<(Job, Result<DynamicImage>)>>(2);
    let (enc_tx, enc_rx) = sync_channel::<(Job, DynamicImage)>(2 * batch);
    let multiple = tr.size_multiple();
    let device = tr.device.clone();
    // (failed files with why, outputs written, images processed).
    type Outcome = (Vec<(PathBuf, String)>, usize, usize);
    let (failed, converted, processed) = std::thread::scope(|s| -> Result<Outcome> {
        s.spawn(move || decode_in_batches(todo, batch, dec_tx));
        let writer = s.spawn(move || write_outputs(enc_rx));
        let mut failed = Vec::new();
        let mut n = 0usize;
        for chunk in dec_rx {
            if opts.stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
                // Dropping the receiver ends the decoder; what was translated is still written.
                break;
            }
            let mut ok: Vec<(Job, DynamicImage)> = Vec::new();
            for (job, img) in chunk {
                match img {
                    Ok(i) => ok.push((job, i)),
                    Err(e) => {
                        let msg = format!("{e:#}");
                        let prefix = format!("{}: ", job.input.display());
                        failed.push((job.input.clone(), msg.strip_prefix(&prefix).unwrap_or(&msg).to_string()));
                        n += 1;
                    }
                }
            }
            // Batch images of equal size together; the rest one by one.
            while !ok.is_empty() {
                let (w, h) = (ok[0].1.width(), ok[0].1.height());
                let (same, rest): (Vec<_>, Vec<_>) = ok.into_iter().partition(|(_, i)| (i.width(), i.height()) == (w, h));
                ok = rest;
                let imgs: Vec<DynamicImage> = same.iter().map(|(_, i)| i.clone()).collect();
                match tr.keeping_filters(|| translate_batch(g, cin, multiple, &device, &imgs, &tr.options)) {
                    Ok(outs) => {
                        for ((job, _), out) in same.into_iter().zip(outs) {
                            n += 1;
                            if enc_tx.send((job, out)).is_err() {
                                bail!("the output writer stopped");
                            }
                        }
                    }
                    Err(e) => {
                        for (job, _) in same {
                            n += 1;
                            failed.push((job.input, format!("translation failed: {e:#}")));
                        }
                    }
                }
                progress(n, total, n as f64 / started.elapsed().as_secs_f64().max(1e-9));
            }
        }
        drop(enc_tx);
        let (wfailed, converted) = writer.join().map_err(|_| anyhow::anyhow!("the output writer panicked"))?;
        failed.extend(wfailed);
        Ok((failed, converted, n))
    })?;
    summary.failed.extend(failed);
    summary.converted = converted;
    summary.left = total - processed;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    /// Slurm arrays from 0, from 1 and stepped, Kubernetes' index with its N, and the errors.
    #[test]
    fn auto_shards_come_from_slurm_or_kubernetes() {
        let at = |vars: &[(&str, &str)], spec: &str| Shard::from_scheduler(spec, env(vars));
        let s = |index, count| Ok(Shard { index, count });
        // --array=0-3
        let from0 = [("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_MIN", "0"), ("SLURM_ARRAY_TASK_MAX", "3"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        assert_eq!(at(&from0, "auto"), s(1, 4));
        // --array=1-4, task 4, no _COUNT (older Slurm): N from _MAX.
        assert_eq!(at(&[("SLURM_ARRAY_TASK_ID", "4"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4")], "auto"), s(4, 4));
        // --array=10-30:10, task 20.
        let stepped = [("SLURM_ARRAY_TASK_ID", "20"), ("SLURM_ARRAY_TASK_MIN", "10"), ("SLURM_ARRAY_TASK_MAX", "30"), ("SLURM_ARRAY_TASK_STEP", "10"), ("SLURM_ARRAY_TASK_COUNT", "3")];
        assert_eq!(at(&stepped, "auto"), s(2, 3));
        // A list that is not a range is refused, not mis-split.
        let list = [("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "7"), ("SLURM_ARRAY_TASK_COUNT", "3")];
        assert!(at(&list, "auto").unwrap_err().contains("ranges"));
        assert_eq!(at(&[("JOB_COMPLETION_INDEX", "2")], "auto/5"), s(3, 5));
        assert!(at(&[("JOB_COMPLETION_INDEX", "2")], "auto").unwrap_err().contains("auto/N"));
        assert!(at(&[("JOB_COMPLETION_INDEX", "5")], "auto/5").is_err());
        assert!(at(&[], "auto").unwrap_err().contains("not in a Slurm job array"));
        assert!(at(&[], "auto/x").is_err());
    }
}
