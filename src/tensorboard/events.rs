//! Event files: TFRecord framing (length, masked CRC-32C, payload, masked CRC-32C) around
//! serialized `Event` messages, written buffered to one file per run and read back to trim a
//! resumed run's file.

use super::proto::{self, Event, Summary, SummaryValue, ValueKind};
use crate::util::atomic_write;
use anyhow::{Context, Result};
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The tag of a run's HParams settings.
pub const SESSION_START_TAG: &str = "_hparams_/session_start_info";
/// How event files' names begin (TensorBoard finds them by their "tfevents").
pub const EVENT_FILE_PREFIX: &str = "events.out.tfevents.";
const FILE_VERSION: &str = "brain.Event:2";

/// CRC-32C (Castagnoli), reflected polynomial 0x82F63B78, as TFRecord frames use.
fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *entry = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

/// TFRecord's masking, so that a CRC stored inside CRC'd data does not confuse readers.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One framed record around `payload`.
fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// The payloads of the intact records of `bytes`, in order, and whether the whole buffer was
/// intact (false: a record was cut short or damaged, e.g. by a killed writer; reading stops there).
pub fn read_records(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 12) else { return (out, false) };
        let len_bytes = &header[..8];
        if u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) != masked_crc(len_bytes) {
            return (out, false);
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let Some(end) = usize::try_from(len).ok().and_then(|l| (at + 12).checked_add(l)) else { return (out, false) };
        let (Some(payload), Some(crc)) = (bytes.get(at + 12..end), bytes.get(end..end + 4)) else { return (out, false) };
        if u32::from_le_bytes(crc.try_into().expect("4 bytes")) != masked_crc(payload) {
            return (out, false);
        }
        out.push(payload);
        at = end + 4;
    }
    (out, true)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The event files in `dir` (not below it), oldest name first.
pub fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(EVENT_FILE_PREFIX)))
        .collect();
    files.sort();
    files
}

/// A new event file's name: the creation time first, as TensorBoard's writers name theirs.
pub(super) fn new_file_name() -> String {
    format!("{EVENT_FILE_PREFIX}{:010}.cyclestudio", now_secs() as u64)
}

/// The bytes of a new event file: its version record, then `events`.
pub fn file_bytes(events: &[Event]) -> Vec<u8> {
    let mut out = record(&Event { wall_time: now_secs(), file_version: Some(FILE_VERSION.into()), ..Default::default() }.encode_to_vec());
    for e in events {
        out.extend(record(&e.encode_to_vec()));
    }
    out
}

/// Rewrites `path` without the events that a resumed run at `step` supersedes: those after
/// `step`, and the ones a run writes again when it starts (`rewritten_at_start`) at `step` itself;
/// a damaged tail is dropped too. Leaves an intact file with nothing to drop untouched.
fn trim(path: &Path, step: u64, rewritten_at_start: &[&str]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (records, intact) = read_records(&bytes);
    let mut kept = Vec::with_capacity(bytes.len());
    let mut dropped = false;
    for payload in &records {
        let keep = match Event::decode(*payload) {
            Ok(e) => {
                let restarted = e.summary.as_ref().is_some_and(|s| s.value.iter().any(|v| rewritten_at_start.contains(&v.tag.as_str())));
                let s = e.step.max(0) as u64;
                s < step || (s == step && !restarted)
            }
            Err(_) => false,
        };
        if keep {
            kept.extend(record(payload));
        } else {
            dropped = true;
        }
    }
    if dropped || !intact {
        atomic_write(path, &kept)?;
    }
    Ok(())
}

/// Appends events to a run's event file; buffered, so call `flush` at checkpoints.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// The event file of the run in `dir`: for a new run (`resume_at` None) or a run without one,
    /// a new file; for a run resumed at step S, its newest file, after every file of the run is
    /// trimmed to what happened up to S (see `trim`).
    pub fn open(dir: &Path, resume_at: Option<u64>, rewritten_at_start: &[&str]) -> Result<Self> {
        let existing = event_files(dir);
        let reuse = match resume_at {
            Some(step) => {
                for f in &existing {
                    trim(f, step, rewritten_at_start)?;
                }
                existing.last().cloned()
            }
            None => None,
        };
        let path = match reuse {
            Some(p) => p,
            None => {
                let p = dir.join(new_file_name());
                // A second new file in the same second (a run restarted from scratch) gets the
                // next free name rather than appending to the first.
                let p = (0..).map(|i| if i == 0 { p.clone() } else { p.with_extension(format!("cyclestudio{i}")) }).find(|p| !p.exists()).expect("a free name");
                std::fs::write(&p, file_bytes(&[])).with_context(|| format!("cannot create {}", p.display()))?;
                p
            }
        };
        let file = OpenOptions::new().append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path, out: BufWriter::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event holding `values` at `step` (nothing when `values` is empty).
    pub fn write(&mut self, step: u64, values: Vec<SummaryValue>) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        self.out.write_all(&record(&event(step, values).encode_to_vec())).with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Pushes the buffered events to the file and the disk.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().and_then(|_| self.out.get_ref().sync_data()).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// An event built at `step` from `values` (for writing whole files at once).
pub fn event(step: u64, values: Vec<SummaryValue>) -> Event {
    Event { wall_time: now_secs(), step: step as i64, file_version: None, summary: Some(Summary { value: values }) }
}

pub fn scalar(tag: &str, value: f64) -> SummaryValue {
    SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::SimpleValue(value as f32)) }
}

/// An image as TensorBoard's image dashboard shows it (PNG, RGB).
pub fn image(tag: &str, img: &image::DynamicImage) -> Result<SummaryValue> {
    let png = crate::data::image_io::png_bytes(&image::DynamicImage::ImageRgb8(img.to_rgb8()))?;
    image_png(tag, png, img.width(), img.height())
}

/// An already-encoded RGB PNG of `width`×`height`.
pub fn image_png(tag: &str, png: Vec<u8>, width: u32, height: u32) -> Result<SummaryValue> {
    let image = proto::Image { height: i32::try_from(height)?, width: i32::try_from(width)?, colorspace: 3, encoded_image_string: png };
    Ok(SummaryValue { tag: tag.into(), metadata: None, value: Some(ValueKind::Image(image)) })
}

fn plugin_metadata(plugin: &str, content: Vec<u8>) -> Option<proto::SummaryMetadata> {
    Some(proto::SummaryMetadata { plugin_data: Some(proto::PluginData { plugin_name: plugin.into(), content }) })
}

/// Markdown text for the text dashboard.
pub fn text(tag: &str, markdown: &str) -> SummaryValue {
    let tensor = proto::TensorProto { dtype: proto::DT_STRING, tensor_shape: Some(proto::TensorShape::default()), string_val: vec![markdown.as_bytes().to_vec()] };
    SummaryValue { tag: tag.into(), metadata: plugin_metadata("text", Vec::new()), value: Some(ValueKind::Tensor(tensor)) }
}

/// The HParams plugin's summaries carry an empty float tensor (its `NULL_TENSOR`).
fn hparams_value(tag: &str, data: proto::HParamsData) -> SummaryValue {
    let content = proto::HParamsPluginData { version: 0, data: Some(data) }.encode_to_vec();
    let null = proto::TensorProto { dtype: proto::DT_FLOAT, tensor_shape: Some(proto::TensorShape { dim: vec![proto::TensorDim { size: 0 }] }), string_val: Vec::new() };
    SummaryValue { tag: tag.into(), metadata: plugin_metadata("hparams", content), value: Some(ValueKind::Tensor(null)) }
}

/// A run's settings for the HParams dashboard: each number, text and switch of `settings` (a
/// JSON object; nested objects' fields named `outer.inner`).
pub fn session_start(settings: &serde_json::Value) -> SummaryValue {
    let mut hparams = std::collections::BTreeMap::new();
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut std::collections::BTreeMap<String, proto::ProtoValue>) {
        use proto::ProtoKind as K;
        let kind = match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
                return;
            }
            serde_json::Value::Number(n) => K::Number(n.as_f64().unwrap_or(f64::NAN)),
            serde_json::Value::String(s) => K::Text(s.clone()),
            serde_json::Value::Bool(b) => K::Bool(*b),
            serde_json::Value::Array(a) => K::Text(serde_json::to_string(a).unwrap_or_default()),
            serde_json::Value::Null => return,
        };
        out.insert(prefix.to_string(), proto::ProtoValue { kind: Some(kind) });
    }
    walk("", settings, &mut hparams);
    let info = proto::SessionStartInfo { hparams, group_name: String::new(), start_time_secs: now_secs() };
    hparams_value(SESSION_START_TAG, proto::HParamsData::SessionStartInfo(info))
}

/// An HParams experiment: the settings (`(name, display name, values)`; numbers where every
/// value is one) and the metric tags the dashboard compares across the runs below it.
pub fn experiment(description: &str, hparams: &[(String, String, Vec<String>)], metrics: &[&str]) -> SummaryValue {
    use proto::ProtoKind as K;
    let hparam_infos = hparams
        .iter()
        .map(|(name, display, values)| {
            let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
            let (r#type, kinds): (i32, Vec<K>) = match numbers {
                Some(n) => (proto::HPARAM_FLOAT64, n.into_iter().map(K::Number).collect()),
                None => (proto::HPARAM_STRING, values.iter().cloned().map(K::Text).collect()),
            };
            let values = kinds.into_iter().map(|k| proto::ProtoValue { kind: Some(k) }).collect();
            proto::HParamInfo { name: name.clone(), display_name: display.clone(), r#type, domain_discrete: Some(proto::ListValue { values }) }
        })
        .collect();
    let metric_infos = metrics
        .iter()
        .map(|m| proto::MetricInfo { name: Some(proto::MetricName { group: String::new(), tag: m.to_string() }), display_name: m.to_string() })
        .collect();
    let e = proto::Experiment { description: description.into(), time_created_secs: now_secs(), hparam_infos, metric_infos };
    hparams_value("_hparams_/experiment", proto::HParamsData::Experiment(e))
}

/// The end of a run that finished its schedule.
pub fn session_end_success() -> SummaryValue {
    let info = proto::SessionEndInfo { status: proto::STATUS_SUCCESS, end_time_secs: now_secs() };
    hparams_value("_hparams_/session_end_info", proto::HParamsData::SessionEndInfo(info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn records_read_back_and_a_cut_tail_is_reported() {
        let mut bytes = record(b"first");
        bytes.extend(record(b""));
        bytes.extend(record(b"third one"));
        let (r, intact) = read_records(&bytes);
        assert!(intact);
        assert_eq!(r, [&b"first"[..], b"", b"third one"]);
        let (r, intact) = read_records(&bytes[..bytes.len() - 3]);
        assert!(!intact);
        assert_eq!(r.len(), 2);
        let mut damaged = bytes.clone();
        damaged[14] ^= 1;
        assert_eq!(read_records(&damaged), (vec![], false));
    }

    #[test]
    fn a_resumed_file_keeps_what_happened_up_to_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::open(dir.path(), None, &["config"]).unwrap();
        w.write(0, vec![text("config", "a")]).unwrap();
        for s in 1..=6 {
            w.write(s, vec![scalar("loss/x", s as f64)]).unwrap();
        }
        w.flush().unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        // A killed writer's half record.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&record(b"xxxx")[..7]).unwrap();
        drop(f);

        let mut w = EventWriter::open(dir.path(), Some(4), &["config"]).unwrap();
        assert_eq!(w.path(), path, "a resumed run appends to its file");
        w.write(4, vec![text("config", "b")]).unwrap();
        w.write(5, vec![scalar("loss/x", 50.0)]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (records, intact) = read_records(&bytes);
        assert!(intact);
        let events: Vec<Event> = records.iter().map(|r| Event::decode(*r).unwrap()).collect();
        let steps: Vec<i64> = events.iter().skip(1).map(|e| e.step).collect();
        assert_eq!(steps, [0, 1, 2, 3, 4, 4, 5]);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        // Resumed at 4 again: the config written at 4 is superseded, the loss of step 4 is not.
        drop(w);
        let w = EventWriter::open(dir.path(), Some(4), &["config"]).unwrap();
        drop(w);
        let bytes = std::fs::read(&path).unwrap();
        let steps: Vec<i64> = read_records(&bytes).0.iter().skip(1).map(|r| Event::decode(*r).unwrap().step).collect();
        assert_eq!(steps, [0, 1, 2, 3, 4]);
        assert_eq!(event_files(dir.path()).len(), 1);
    }
}
